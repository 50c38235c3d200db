from qrag_cli.cli import main

main()
