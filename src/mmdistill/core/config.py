"""Reading `params.yaml`: one schema for every key, validated at load time, with errors that name the key.

params.yaml holds every default; the code holds only the schema (types, ranges, choices), never a value. A key
the schema does not know is an error naming the closest valid key; a missing key is an error; a number must be
finite and in its range; a name must be one the code registers; a duplicate YAML key is an error naming its line.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmdistill.core.storage import PipelineError, read_utf8

PARAMS_FILE = Path("params.yaml")
_MISSING = object()


@dataclass(frozen=True)
class Spec:
    """What one params.yaml value may be. Numbers are finite; `low`/`high` bound them inclusively, `above`/`below`
    exclusively. `choices` are the valid values (`hint` describes them where listing them all would not help)."""
    kind: type | tuple
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple | None = None
    hint: str | None = None
    items: Spec | None = None        # the spec of each list element
    min_items: int = 0
    unique: bool = False             # lists: no repeated element
    empty: bool = True               # strings: may be "" (or blank)
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
        if number and not math.isfinite(value):
            raise PipelineError(f"param '{key}' must be a finite number, got {value!r}")
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PipelineError(f"param '{key}' = {value!r} is not one of: "
                                f"{self.hint or ', '.join(map(str, self.choices))}{hint}")
        if number:
            bounds = [(self.low, ">=", value >= self.low if self.low is not None else True),
                      (self.above, ">", value > self.above if self.above is not None else True),
                      (self.high, "<=", value <= self.high if self.high is not None else True),
                      (self.below, "<", value < self.below if self.below is not None else True)]
            if not all(ok for _, _, ok in bounds):
                rule = " and ".join(f"{op} {bound}" for bound, op, _ in bounds if bound is not None)
                raise PipelineError(f"param '{key}' must be {rule}, got {value!r}")
        if isinstance(value, str) and not self.empty and not value.strip():
            raise PipelineError(f"param '{key}' must not be empty")
        if isinstance(value, list):
            if len(value) < self.min_items:
                raise PipelineError(f"param '{key}' needs at least {self.min_items} item(s), got {value!r}")
            for i, item in enumerate(value):
                if self.items is not None:
                    self.items.check(f"{key}[{i}]", item)
            if self.unique and len({repr(v) for v in value}) != len(value):
                raise PipelineError(f"param '{key}' has a repeated item: {value!r}")


def Int(low=None, high=None, above=None, below=None, choices=None) -> Spec:
    return Spec(int, low=low, high=high, above=above, below=below, choices=choices)


def Float(low=None, high=None, above=None, below=None) -> Spec:
    return Spec(float, low=low, high=high, above=above, below=below)


def Str(*choices, empty=True, hint=None) -> Spec:
    return Spec(str, choices=choices or None, empty=empty, hint=hint)


BOOL = Spec(bool)
AUTO_BOOL = Spec((bool, str), choices=("auto", True, False), hint="auto, true or false")  # auto: decided by the data
FREE = Spec(dict, free=True)


def List(items: Spec, min_items: int = 0, unique: bool = False) -> Spec:
    return Spec(list, items=items, min_items=min_items, unique=unique)


def validate(params: dict, schema: dict, prefix: str = "", where: str = "params.yaml") -> None:
    """Check `params` against `schema` (nested dicts whose leaves are Spec): no unknown, missing or bad key."""
    if not isinstance(params, dict):
        raise PipelineError(f"param '{prefix.rstrip('.')}' must be a mapping of keys, got {params!r}")
    for key in params:
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
            hint = (f"; did you mean '{prefix}{close[0]}'?" if close
                    else f"; valid keys here: {', '.join(map(str, schema))}")
            raise PipelineError(f"unknown param '{prefix}{key}' in {where}{hint}")
    for key, spec in schema.items():
        if key not in params:
            raise PipelineError(f"missing param '{prefix}{key}' in {where} (every setting is written there; "
                                "the code has no defaults)")
        if isinstance(spec, dict):
            validate(params[key], spec, f"{prefix}{key}.", where)
        elif not spec.free:
            spec.check(f"{prefix}{key}", params[key])
        elif not isinstance(params[key], dict):
            raise PipelineError(f"param '{prefix}{key}' must be a mapping, got {params[key]!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key written twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path) -> dict:
    """A YAML mapping from `path`; a syntax error or a duplicate key names the file and line."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run from the repository root")
    text = read_utf8(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}{line}: invalid YAML ({exc.problem or exc.context})") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must hold a mapping of params, got {type(data).__name__}")
    return data


def load_params(path=PARAMS_FILE) -> dict:
    """params.yaml, validated against the whole schema (mmdistill.core.schema)."""
    from mmdistill.core.schema import schema
    params = read_yaml(path)
    validate(params, schema(), where=str(path))
    return params


def param(params: dict, key: str, kind=None, default=_MISSING, choices=None):
    """Look up a dotted key such as 'distill.dm.iterations', checking its type (and choices) as a Spec does.

    `default` is only for callers not yet moved to params.yaml-only defaults (see the distill package)."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise PipelineError(f"missing param '{key}' in params.yaml")
        node = node[part]
    if kind is not None:
        Spec(kind, choices=tuple(choices) if choices is not None else None).check(key, node)
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
