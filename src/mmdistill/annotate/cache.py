"""Shared machinery of the annotation stages (tag, ground, caption, describe).

Each annotation stage picks a backend by name from its params section
(`<stage>.backend`) out of a registry; every output row carries the backend
name, and the file's metadata records the backend and all of its settings.

A backend is a class built from the params: `__init__` only reads settings
(`self.settings`, everything that decides its output), `load()` loads the
model, and `annotate(records)` maps a batch of records (dicts with `uid`,
`image` as a decoded uint8 array in `self.image_mode`, and the stage's context
such as the image's tags) to a list of output rows per record.

Incremental cache (`annotate.cache_dir`, a persistent DVC output of each stage):
an image's key is the SHA-256 of its PNG bytes, its context and the backend's
settings. Finished work is stored in shards of `annotate.shard_size` images,

    <cache_dir>/<stage>/<backend>-<settings hash>/shard-<hash of the shard's keys>.parquet
    columns: key string, uid string (first uid seen), rows list<struct<stage schema without uid>>

so a re-run annotates only images whose key is in no shard (new images, or a
run that was killed after some shards), and a colleague who `dvc pull`s the
cache recomputes nothing. The model is loaded only when some image is new.
`annotate.engine: ray` runs the same shards on Ray Data actors.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from mmdistill.core.config import param, positive
from mmdistill.core.hub import import_object
from mmdistill.core.paths import ANNOTATIONS, PREPARED
from mmdistill.core.ray_actors import run_on_actors
from mmdistill.core.storage import (
    PipelineError,
    check_writable,
    decode_image,
    read_parquet,
    read_parquet_metadata,
    write_parquet,
)

ANNOTATED_SPLITS = ("train", "val")  # the pipeline's annotations; the test split only by stage annotate_test
CACHE_VERSION = 1
ENGINES = ("local", "ray")    # annotate.engine
ON_ERROR = ("fail", "skip")  # annotate.on_error


@dataclass(frozen=True)
class AnnotationTarget:
    """What the annotation stages read and write: the `splits` they annotate, the folder of their Parquet
    files, the cache root (None: param `annotate.cache_dir`). With `hide_labels` the stages never see a
    label: `label` reads as -1 and `class_name` as "" (templates that name the class get an empty string)."""
    splits: tuple = ANNOTATED_SPLITS
    annotations: Path = ANNOTATIONS
    cache_root: Path | None = None
    hide_labels: bool = False


PIPELINE = AnnotationTarget()  # the pipeline's train/val annotations; stage annotate_test has its own


def load_annotation_input(columns=("uid", "label", "class_name", "image"), target: AnnotationTarget = PIPELINE
                          ) -> pa.Table:
    table = pa.concat_tables([read_parquet(PREPARED / split, list(columns), {"image": "binary"})
                              for split in target.splits])
    if target.hide_labels:
        for name, value in (("label", -1), ("class_name", "")):
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name,
                                         pa.array([value] * table.num_rows, table.schema.field(name).type))
    return table


def build_backend(params: dict, stage: str, registry: dict):
    """Instantiate `registry[params[stage].backend]` with the section's settings."""
    name = param(params, f"{stage}.backend", str)
    if name not in registry:
        raise PipelineError(f"unknown {stage} backend {name!r} (param '{stage}.backend'); "
                            f"valid: {', '.join(sorted(registry))}")
    return name, registry[name](params)


def settings(params: dict, stage: str) -> dict:
    return dict(param(params, stage, dict))


def write_annotations(columns: dict, schema: pa.Schema, name: str, backend: str, stage_settings: dict,
                      extra_metadata: dict | None = None, target: AnnotationTarget = PIPELINE) -> Path:
    n = len(next(iter(columns.values()))) if columns else 0
    columns = dict(columns, backend=[backend] * n)
    schema = schema.append(pa.field("backend", pa.string()))
    table = pa.table(columns, schema=schema)
    meta = {"name": name, "backend": backend, "settings": stage_settings, **(extra_metadata or {})}
    return write_parquet(table, target.annotations / f"{name}.parquet", {"annotation": meta})


def read_annotations(name: str, columns=None, target: AnnotationTarget = PIPELINE) -> pa.Table:
    return read_parquet(target.annotations / f"{name}.parquet", columns)


def annotation_backend(name: str, target: AnnotationTarget = PIPELINE) -> dict:
    return read_parquet_metadata(target.annotations / f"{name}.parquet").get("annotation", {})


def group_by_uid(table: pa.Table, column: str) -> dict:
    out: dict = {}
    for uid, value in zip(table["uid"].to_pylist(), table[column].to_pylist()):
        out.setdefault(uid, []).append(value)
    return out


# ---- the incremental, content-addressed engine ---------------------------------------------------------

def digest(obj) -> str:
    """SHA-256 of a JSON-like object (bytes inside are hashed first), stable across runs and machines."""
    def default(value):
        if isinstance(value, bytes):
            return hashlib.sha256(value).hexdigest()
        raise TypeError(f"cannot hash {type(value).__name__}")
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()


def cache_dir(params: dict, stage: str, backend: str, backend_settings: dict,
              target: AnnotationTarget = PIPELINE) -> Path:
    root = target.cache_root or Path(param(params, "annotate.cache_dir", str))
    return root / stage / f"{backend}-{digest([CACHE_VERSION, backend_settings])[:16]}"


def read_cache(directory: Path) -> dict:
    """key -> list of rows (without uid) from every finished shard; leftovers of killed writes are removed.

    A shard that does not read back whole (truncated, 0 bytes, missing columns, a key that is no SHA-256) is
    removed with a warning naming it, so its images are annotated again."""
    out = {}
    if not directory.exists():
        return out
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink()
    for shard in sorted(directory.glob("shard-*.parquet")):
        try:
            table = read_parquet(shard, ["key", "rows"])
            keys, rows = table["key"].to_pylist(), table["rows"].to_pylist()
            if not all(isinstance(k, str) and len(k) == 64 for k in keys) or any(r is None for r in rows):
                raise PipelineError("a null or malformed key or row")
        except (pa.ArrowException, OSError, PipelineError) as exc:
            print(f"warning: {shard}: corrupt annotation-cache shard removed, its images are annotated again "
                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", file=sys.stderr)
            shard.unlink()
            continue
        out.update(zip(keys, rows))
    return out


class ShardWorker:
    """Annotates one shard of records and writes it to the cache; the same code under the local and Ray engines."""

    def __init__(self, params: dict, stage: str, registry_path: str, schema: pa.Schema, directory: str):
        _, self.backend = build_backend(params, stage, import_object(registry_path, "annotate.registry"))
        self.backend.load()
        self.stage, self.directory = stage, Path(directory)
        self.batch_size = positive(params, f"{stage}.batch_size")
        self.on_error = param(params, "annotate.on_error", str, choices=ON_ERROR)
        self.row_type = pa.list_(pa.struct([f for f in schema if f.name != "uid"]))

    def run(self, records: list[dict]) -> list[str]:
        """Annotate and write the shard; returns the uids skipped as corrupt."""
        good, skipped = [], []
        for rec in records:
            try:
                image = decode_image(rec["image"], f"image {rec['uid']}", self.backend.image_mode).copy()
                good.append(dict(rec, image=image))
            except PipelineError as exc:
                if self.on_error == "fail":
                    raise PipelineError(f"{self.stage}: {exc} (set annotate.on_error: skip to leave it out)") from exc
                print(f"{self.stage}: skipping uid {rec['uid']}: {exc}")
                skipped.append(rec["uid"])
        rows = []
        for start in range(0, len(good), self.batch_size):
            batch = good[start:start + self.batch_size]
            result = self.backend.annotate(batch)
            if len(result) != len(batch):
                raise PipelineError(f"{self.stage} backend returned {len(result)} results for {len(batch)} images")
            rows += result
        rows = [[{k: v for k, v in r.items() if k != "uid"} for r in per_image] for per_image in rows]
        if good:
            keys = [rec["key"] for rec in good]
            table = pa.table({"key": keys, "uid": [rec["uid"] for rec in good],
                              "rows": pa.array(rows, type=self.row_type)})
            write_parquet(table, self.directory / f"shard-{digest(keys)[:16]}.parquet")
        return skipped


def annotate_incrementally(params: dict, stage: str, registry_path: str, schema: pa.Schema,
                           records: list[dict], target: AnnotationTarget = PIPELINE
                           ) -> tuple[str, dict, list[dict], dict]:
    """Annotate the records (uid, image PNG bytes, context) that are in no cache shard yet.

    Returns (backend name, backend settings, output rows in record order, run info for the metadata).
    """
    registry = import_object(registry_path, "annotate.registry")
    name, backend = build_backend(params, stage, registry)
    directory = cache_dir(params, stage, name, backend.settings, target)
    check_writable(directory / "shard.parquet", target.annotations / "annotations.parquet")
    engine = param(params, "annotate.engine", str, choices=ENGINES)
    param(params, "annotate.on_error", str, choices=ON_ERROR)
    shard_size = positive(params, "annotate.shard_size")
    settings_hash = digest([CACHE_VERSION, stage, name, backend.settings])
    for rec in records:
        context = {k: v for k, v in rec.items() if k not in ("uid", "image")}
        rec["key"] = digest([hashlib.sha256(rec["image"]).hexdigest(), context, settings_hash])
    cache = read_cache(directory)
    pending, seen = [], set()
    for rec in records:
        if rec["key"] not in cache and rec["key"] not in seen:
            seen.add(rec["key"])
            pending.append(rec)
    shards = [pending[i:i + shard_size] for i in range(0, len(pending), shard_size)]
    skipped = []
    if shards:
        worker_args = (params, stage, registry_path, schema, str(directory.resolve()))
        if engine == "ray":
            skipped = [uid for shard in run_on_actors(params, "annotate.ray", ShardWorker, worker_args, shards)
                       for uid in shard]
        else:
            worker = ShardWorker(*worker_args)
            for shard in tqdm(shards, desc=f"{stage} ({name})", mininterval=2):
                skipped += worker.run(shard)
        cache = read_cache(directory)
    rows = []
    for rec in records:
        for row in cache.get(rec["key"], []):
            rows.append({"uid": rec["uid"], **row})
    info = {"annotated": len(pending) - len(skipped), "cached": len(records) - len(pending),
            "skipped_uids": sorted(skipped)}
    print(f"{stage} ({engine}): {info['annotated']} images annotated, {info['cached']} from the cache "
          f"{directory}, {len(skipped)} skipped as corrupt")
    return name, backend.settings, rows, info


def run_annotation_stage(params: dict, stage: str, registry_path: str, schema: pa.Schema, records: list[dict],
                         output: str, target: AnnotationTarget = PIPELINE) -> Path:
    """Annotate incrementally and write `<target.annotations>/<output>.parquet` (stage schema + backend).

    The file's bytes depend only on the records and settings, not on what came from the cache or the engine."""
    name, backend_settings, rows, info = annotate_incrementally(params, stage, registry_path, schema, records,
                                                                target)
    columns = {f.name: [r[f.name] for r in rows] for f in schema}
    return write_annotations(columns, schema, output, name, settings(params, stage),
                             {"backend_settings": backend_settings, "skipped_uids": info["skipped_uids"]}, target)
