from qrag_cli.launch import main

main()
