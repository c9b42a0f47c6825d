"""Reading `params.yaml`: one schema for every key, validated at load time, with errors that name the key.

params.yaml holds every default; the code holds only the schema (types, ranges, choices), never a value. A key
the schema does not know is an error naming the closest valid key; a missing key is an error; a number must be
finite and in its range.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmdistill.core.storage import PipelineError

PARAMS_FILE = Path("params.yaml")
_MISSING = object()


@dataclass(frozen=True)
class Spec:
    """What one params.yaml value may be. Numbers are finite; `low`/`high` bound them inclusively, `above` exclusively."""
    kind: type | tuple
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    items: Spec | None = None        # the spec of each list element
    min_items: int = 0
    empty: bool = True               # strings: may be ""
    free: bool = False               # dicts: any keys (plugin kwargs)

    def check(self, key: str, value) -> None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and number:
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise PipelineError(f"param '{key}' must be {names}, got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise PipelineError(f"param '{key}' = {value!r} is not one of: {', '.join(map(str, self.choices))}")
        if number:
            if not math.isfinite(value):
                raise PipelineError(f"param '{key}' must be a finite number, got {value!r}")
            if self.above is not None and not value > self.above:
                raise PipelineError(f"param '{key}' must be > {self.above}, got {value!r}")
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                raise PipelineError(f"param '{key}' must be in [{self.low}, {self.high}], got {value!r}")
        if isinstance(value, str) and not self.empty and not value:
            raise PipelineError(f"param '{key}' must not be empty")
        if isinstance(value, list):
            if len(value) < self.min_items:
                raise PipelineError(f"param '{key}' needs at least {self.min_items} item(s), got {value!r}")
            for i, item in enumerate(value):
                if self.items is not None:
                    self.items.check(f"{key}[{i}]", item)


def Int(low=None, high=None, above=None, choices=None) -> Spec:
    return Spec(int, low=low, high=high, above=above, choices=choices)


def Float(low=None, high=None, above=None) -> Spec:
    return Spec(float, low=low, high=high, above=above)


def Str(*choices, empty=True) -> Spec:
    return Spec(str, choices=choices or None, empty=empty)


BOOL = Spec(bool)
FREE = Spec(dict, free=True)


def List(items: Spec, min_items: int = 0) -> Spec:
    return Spec(list, items=items, min_items=min_items)


def validate(params: dict, schema: dict, prefix: str = "") -> None:
    """Check `params` against `schema` (nested dicts whose leaves are Spec): no unknown, missing or bad key."""
    if not isinstance(params, dict):
        raise PipelineError(f"param '{prefix.rstrip('.')}' must be a mapping of keys, got {params!r}")
    for key in params:
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys here: {', '.join(map(str, schema))}"
            raise PipelineError(f"unknown param '{prefix}{key}' in params.yaml{hint}")
    for key, spec in schema.items():
        if key not in params:
            raise PipelineError(f"missing param '{prefix}{key}' in params.yaml")
        if isinstance(spec, dict):
            validate(params[key], spec, f"{prefix}{key}.")
        elif not spec.free:
            spec.check(f"{prefix}{key}", params[key])
        elif not isinstance(params[key], dict):
            raise PipelineError(f"param '{prefix}{key}' must be a mapping, got {params[key]!r}")


def read_yaml(path) -> dict:
    """A YAML mapping from `path`; a syntax error names the file and line."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run from the repository root")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise PipelineError(f"{path}:{mark.line + 1}: invalid YAML ({exc.problem})") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must hold a mapping of params, got {type(data).__name__}")
    return data


def load_params(path=PARAMS_FILE) -> dict:
    """params.yaml, validated against the whole schema (mmdistill.core.schema)."""
    from mmdistill.core.schema import schema
    params = read_yaml(path)
    validate(params, schema())
    return params


def param(params: dict, key: str, kind=None, default=_MISSING, choices=None):
    """Look up a dotted key such as 'distill.dm.iterations', checking its type and value."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise PipelineError(f"missing param '{key}' in params.yaml")
        node = node[part]
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(node, kinds) and not (isinstance(node, bool) and bool not in kinds)
        if float in kinds and isinstance(node, int) and not isinstance(node, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise PipelineError(f"param '{key}' must be {names}, got {type(node).__name__} {node!r}")
    if choices is not None and node not in choices:
        raise PipelineError(f"param '{key}' = {node!r} is not one of: {', '.join(map(str, choices))}")
    return node


def positive(params: dict, key: str, kind=int, default=_MISSING):
    value = param(params, key, kind, default)
    if value <= 0:
        raise PipelineError(f"param '{key}' must be > 0, got {value!r}")
    return value


def int_list(params: dict, key: str) -> list[int]:
    values = param(params, key, list)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise PipelineError(f"param '{key}' must be a non-empty list of positive integers, got {values!r}")
    return values
