"""Keep the code deps of dvc.yaml equal to each stage's import closure.

    python -m mmdistill.devtools.code_deps          # rewrite dvc.yaml's `src/...` deps in place
    python -m mmdistill.devtools.code_deps --check  # exit 1 and name the stages whose code deps differ

Every dep under `src/` is code and is replaced by the closure of the stage's `python -m mmdistill.stages.NAME`
command (mmdistill.devtools.closure); data deps, params, outs and comments are kept as written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ruamel.yaml import YAML

from mmdistill.devtools.closure import closure, command_module

DVC_YAML = Path("dvc.yaml")


def stage_bodies(document) -> dict:
    """Stage name -> the mapping holding its cmd and deps (a foreach stage's `do` block)."""
    return {name: stage.get("do", stage) for name, stage in document["stages"].items()}


def updated(document, src: Path) -> list[str]:
    """Set every stage's code deps to its closure; return the names of the stages that changed."""
    changed = []
    for name, body in stage_bodies(document).items():
        module = command_module(str(body["cmd"]))
        if module is None:
            continue
        deps = list(body.get("deps", []))
        code = closure(module, src)
        if [d for d in deps if str(d).startswith("src/")] != code:
            changed.append(name)
            body["deps"] = code + [d for d in deps if not str(d).startswith("src/")]
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stages whose code deps are out of date")
    args = parser.parse_args()
    yaml = YAML()
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(DVC_YAML)
    changed = updated(document, Path("src"))
    if args.check:
        if changed:
            sys.exit(f"dvc.yaml: code deps out of date for {', '.join(changed)}; run `python -m {__spec__.name}`")
        return
    if changed:
        yaml.dump(document, DVC_YAML)
    print(f"dvc.yaml: updated the code deps of {len(changed)} stage(s)")


if __name__ == "__main__":
    main()
