"""Locate the repository root from the working directory, so that papermill, nbval, pytest and
`dvc exp run --temp` / `--queue` (which run stages in another copy of the repository) all read the params
and write the outputs of the copy they run in — never of the checkout the package was installed from."""

from pathlib import Path


def repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding dvc.yaml and params.yaml."""
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file() and (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"No repository above {here} (a folder holding params.yaml and dvc.yaml): run from inside the repository "
        "(DVC runs stages from its root; notebooks run from notebooks/)."
    )
