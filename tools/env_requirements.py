"""Print the `pip:` list of environment.yml, one requirement per line.

`make lock` (tools/lock.py) resolves this list into requirements.lock, so environment.yml stays the only
place where the Python dependencies are written down.
"""

import sys
from pathlib import Path

import yaml


def pip_requirements(env_file: Path) -> list[str]:
    spec = yaml.safe_load(env_file.read_text())
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            return [str(r) for r in dep["pip"]]
    sys.exit(f"{env_file}: no 'pip:' list under 'dependencies:'; add one (see the conda docs).")


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "environment.yml")
    print("\n".join(pip_requirements(path)))
