"""Shared machinery of the annotation stages (tag, ground, caption, describe).

Each annotation stage picks a backend by name from its params section
(`<stage>.backend`) out of a registry; every output row carries the backend
name, and the file's metadata records the backend and all of its settings.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from stages.data import ANNOTATIONS, PREPARED
from stages.io import PipelineError, read_parquet, read_parquet_metadata, write_parquet
from stages.params import param

ANNOTATED_SPLITS = ("train", "val")  # the test split is never annotated: only evaluate reads it


def load_annotation_input(columns=("uid", "label", "class_name", "image")) -> pa.Table:
    tables = [read_parquet(PREPARED / split, list(columns)) for split in ANNOTATED_SPLITS]
    return pa.concat_tables(tables)


def build_backend(params: dict, stage: str, registry: dict):
    """Instantiate `registry[params[stage].backend]` with the section's settings."""
    name = param(params, f"{stage}.backend", str)
    if name not in registry:
        raise PipelineError(f"unknown {stage} backend {name!r} (param '{stage}.backend'); "
                            f"valid: {', '.join(sorted(registry))}")
    return name, registry[name](params)


def settings(params: dict, stage: str) -> dict:
    return dict(param(params, stage, dict))


def write_annotations(columns: dict, schema: pa.Schema, name: str, backend: str, stage_settings: dict) -> Path:
    n = len(next(iter(columns.values()))) if columns else 0
    columns = dict(columns, backend=[backend] * n)
    schema = schema.append(pa.field("backend", pa.string()))
    table = pa.table(columns, schema=schema)
    return write_parquet(table, ANNOTATIONS / f"{name}.parquet",
                         {"annotation": {"name": name, "backend": backend, "settings": stage_settings}})


def read_annotations(name: str, columns=None) -> pa.Table:
    return read_parquet(ANNOTATIONS / f"{name}.parquet", columns)


def annotation_backend(name: str) -> dict:
    return read_parquet_metadata(ANNOTATIONS / f"{name}.parquet").get("annotation", {})


def group_by_uid(table: pa.Table, column: str) -> dict:
    out: dict = {}
    for uid, value in zip(table["uid"].to_pylist(), table[column].to_pylist()):
        out.setdefault(uid, []).append(value)
    return out
