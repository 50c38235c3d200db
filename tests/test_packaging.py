"""The default model travels with the package: a wheel carries models/qrag-default, and a
qrag without it says so instead of answering with the untrained base."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import HOP_FILES, QRAG, REPO, run_qrag

DEFAULT = REPO / "models" / "qrag-default"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def _source_tree(dest: Path, with_default_model: bool = True) -> Path:
    """What a build reads (pyproject.toml, README.md, the packages), copied: building in
    the checkout would leave build/ and *.egg-info in it."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, dest / name)
    shutil.copytree(REPO / "qrag_cli", dest / "qrag_cli", ignore=IGNORE)
    models_ignore = (
        IGNORE if with_default_model else shutil.ignore_patterns("__pycache__", "qrag-default")
    )
    shutil.copytree(REPO / "models", dest / "models", ignore=models_ignore)
    for research in ("experiments", "training"):  # beside the packages, as in the checkout
        shutil.copytree(REPO / research, dest / research, ignore=IGNORE)
    return dest


def test_wheel_carries_the_default_model_and_every_package(tmp_path: Path) -> None:
    src = _source_tree(tmp_path / "src")
    # Offline and without build isolation: the venv's own setuptools builds it.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("qrag-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    model_files = [f.relative_to(DEFAULT).as_posix() for f in DEFAULT.rglob("*") if f.is_file()]
    assert "config.json" in model_files and "model.safetensors" in model_files
    missing = [f for f in model_files if f"qrag_models/qrag-default/{f}" not in names]
    assert not missing, missing
    assert "qrag_models/__init__.py" in names
    # pyproject.toml lists the packages by name: a new one must not be left out.
    packages = [
        p.parent.relative_to(REPO).as_posix() for p in (REPO / "qrag_cli").rglob("__init__.py")
    ]
    assert all(f"{p}/__init__.py" in names for p in packages), packages
    assert "qrag_cli/sample/cities.md" in names
    # The product and the default model only: no studies, no recipe, no stray modules.
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"qrag_cli", "qrag_models"}, tops
    model_code = [n for n in names if n.startswith("qrag_models/") and n.endswith(".py")]
    assert model_code == ["qrag_models/__init__.py"], model_code
    assert not [n for n in names if "probe_" in n or "measure_" in n or "experiments" in n]


def test_missing_default_model_is_an_error_not_the_base(tmp_path: Path) -> None:
    corpus = tmp_path / "hop"
    corpus.mkdir()
    for name, text in HOP_FILES.items():
        (corpus / name).write_text(text)
    # A qrag whose models/ lacks qrag-default (run in place from that tree).
    tree = _source_tree(tmp_path / "src", with_default_model=False)

    def qrag(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*QRAG, *args], capture_output=True, text=True, cwd=tree, timeout=300)

    proc = qrag("index", str(corpus), "--index", str(tmp_path / "idx"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: the default model {tree / 'models' / 'qrag-default'} is missing; reinstall "
        "qrag (make install) or name one with --model (base: untrained)"
    ]
    assert not (tmp_path / "idx").exists()
    # Only asking for the base gives the base.
    proc = qrag("index", str(corpus), "--index", str(tmp_path / "idx"), "--model", "base")
    assert proc.returncode == 0, proc.stderr

    nowhere = tmp_path / "nowhere"
    proc = run_qrag(
        "index", str(corpus), "--index", str(tmp_path / "idx2"), env={"QRAG_MODEL": str(nowhere)}
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: QRAG_MODEL={nowhere} is not a model folder (no config.json)"
    ]
