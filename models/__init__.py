"""qrag's trained models, installed with qrag as the package `qrag_models` (see
pyproject.toml): qrag-default/ is the model qrag uses when none is named."""
