"""Write the README's DAG section from `dvc dag --md`.

    python -m mmdistill.devtools.readme_dag

The DAG is drawn on a copy of the project whose params list one IPC and the first method of each non-empty group
of `distill.methods`, so the figure shows every stage kind once instead of one node per (method, IPC).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

README = Path("README.md")
START, END = "<!-- dag:start -->", "<!-- dag:end -->"


def dag_markdown(root: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "project"
        copy.mkdir()
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(root / name, copy / name)
        params = yaml.safe_load((copy / "params.yaml").read_text())
        params["distill"]["ipcs"] = params["distill"]["ipcs"][:1]
        params["distill"]["methods"] = {group: methods[:1] for group, methods in params["distill"]["methods"].items()}
        (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dvc = Path(sys.executable).parent / "dvc"
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=copy, check=True)
        return subprocess.run([str(dvc), "dag", "--md"], cwd=copy, check=True, capture_output=True,
                              text=True).stdout.strip()


def main() -> None:
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"{README}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{dag_markdown(Path.cwd())}\n{END}{tail}")
    print(f"{README}: DAG section written")


if __name__ == "__main__":
    main()
