"""DVC's own view of a project's pipeline, for the tests and the benchmarks."""
from __future__ import annotations

from pathlib import Path


def resolved_stages(root: Path) -> list:
    """The stages of the pipeline in `root` (matrix and foreach expanded, ${...} interpolated)."""
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        return list(repo.index.stages)


def committed_outputs(root: Path) -> list[str]:
    """The `cache: false` outputs of the pipeline in `root`: they reach a clone through git, not the DVC cache."""
    return sorted({str(o.def_path) for stage in resolved_stages(root) for o in stage.outs if not o.use_cache})
