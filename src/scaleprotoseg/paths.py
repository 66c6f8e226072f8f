"""Locate the repository root from the package, so papermill, nbval and pytest agree on paths."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The repository that holds params.yaml (the package is installed editable from src/)."""
    for candidate in PACKAGE_DIR.parents:
        if (candidate / "params.yaml").is_file() and (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "Could not find the repository root (a folder with params.yaml and dvc.yaml) above "
        f"{PACKAGE_DIR.name}; install the package editable from the repository (`make setup`)."
    )
