"""The project modules a stage command runs: the import closure of `python -m mmdistill.stages.NAME`.

Static: every `import mmdistill...` / `from mmdistill... import ...` at any depth of a module (also inside
functions), and every string constant naming a project module (`"mmdistill.annotate.tags:TAGGERS"`, the way
registries name what they import lazily). A package's `__init__.py` counts when any of its modules is imported.

The params schema (core/schema.py) is left out of every closure, and so are its imports: it only accepts or refuses
params.yaml (`config.load_params` validates and returns the params unchanged; it reads the registries' names to
reject bad ones), which cannot change what a stage computes from valid params. Counting it would make every stage
re-run whenever any stage gains a param.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

PACKAGE = "mmdistill"
VALIDATION_ONLY = {f"{PACKAGE}.core.schema"}  # modules left out of every closure (see above)
_MODULE_STRING = re.compile(rf"^({PACKAGE}(?:\.\w+)+)(?::\w+)?$")


def module_path(src: Path, name: str) -> Path | None:
    """`mmdistill.a.b` -> src/mmdistill/a/b.py or src/mmdistill/a/b/__init__.py (None if neither exists)."""
    base = src.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _MODULE_STRING.match(node.value)
            if match:
                names.add(match.group(1))
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


@lru_cache(maxsize=None)
def _closure(src: Path, module: str) -> frozenset[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            path = module_path(src, ".".join(parts[:i]))
            if path is None or path in seen or ".".join(parts[:i]) in VALIDATION_ONLY:
                continue
            seen.add(path)
            todo.extend(_imported_names(path))
    return frozenset(seen)


def closure(module: str, src: Path = Path("src")) -> list[str]:
    """Sorted paths (`src/mmdistill/...py`, relative to src's parent) of every project module that running `module`
    imports; empty `__init__.py` files are left out (they cannot change what a stage computes)."""
    src = src.resolve()
    if module_path(src, module) is None:
        raise ValueError(f"no module {module} under {src}")
    return sorted(str(p.relative_to(src.parent)) for p in _closure(src, module) if p.stat().st_size)


def command_module(cmd: str) -> str | None:
    """The module of a stage command `python -m mmdistill.stages.NAME ...` (None for other commands)."""
    match = re.search(rf"python -m ({PACKAGE}(?:\.\w+)+)", cmd)
    return match.group(1) if match else None
