"""The one reader and writer of pipeline artifacts.

Every write goes to a temporary sibling path that is renamed into place, so a
killed stage never leaves a half-written Parquet file, tensor file or figure; a write
refused by the file system (read-only, full disk) is a PipelineError naming the path.

Every read checks what it returns: a corrupt file, a column of the wrong type (COLUMN_TYPES) and a NaN or
infinite number (in a Parquet float column, a tensor, a float in a tensor file) are PipelineErrors naming
the file and the column, key or row, so bad input never flows on silently.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class PipelineError(RuntimeError):
    """A user-facing error: bad input, bad params or a missing artifact."""


@contextlib.contextmanager
def write_errors(path):
    """OS errors of writing `path` (read-only, full disk, no permission, a file where a folder should be) as a
    PipelineError naming it."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)) and exc.errno not in _WRITE_ERRNOS:
            raise
        where = exc.filename or path
        raise PipelineError(f"cannot write {path}: {exc.strerror or exc} ({where})") from exc


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                 errno.EFBIG}


def check_writable(*paths) -> None:
    """Before long compute: each of `paths` (files or folders a stage will write, atomically, so into their parent
    folder) can be written. Probes the nearest existing folder on the way with a test file; creates nothing that
    stays. A PipelineError names the path (read-only or full file system, no permission, a file in the way)."""
    for path in paths:
        path = Path(path)
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        with write_errors(path):
            if not folder.is_dir():
                raise OSError(errno.ENOTDIR, "not a directory", str(folder))
            fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    tmp = Path(tmp)
    try:
        with write_errors(path):
            yield tmp
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_parquet(table, path, metadata: dict | None = None) -> Path:
    """Write a pyarrow Table (or dict of columns) with JSON metadata in the schema."""
    if not isinstance(table, pa.Table):
        table = pa.table(table)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def write_parquet_shards(table: pa.Table, directory, prefix: str, rows_per_shard: int,
                         metadata: dict | None = None) -> list[Path]:
    """Split a table into `prefix-00000.parquet`, `prefix-00001.parquet`, ... under `directory`."""
    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        shard = table.slice(start, rows_per_shard)
        paths.append(write_parquet(shard, Path(directory) / f"{prefix}-{i:05d}.parquet", metadata))
    return paths


def _parquet_files(path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
    elif path.exists():
        files = [path]
    else:
        files = sorted(path.parent.glob(f"{path.name}-*.parquet")) if path.parent.exists() else []
    if not files:
        raise PipelineError(f"no Parquet data at {path}: run the stage that produces it first (`dvc repro`)")
    return files


KINDS = {  # a column kind -> (what a message calls it, the test of a pyarrow type)
    "integer": ("an integer", pa.types.is_integer),
    "string": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "binary": ("binary (encoded image bytes)", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    "boolean": ("a boolean", pa.types.is_boolean),
    "floats": ("a list of floats", lambda t: pa.types.is_list(t) and pa.types.is_floating(t.value_type)),
}
COLUMN_TYPES = {  # the columns the pipeline reads by name with one meaning wherever they occur, and their kind
    "uid": "string", "split": "string", "class_name": "string", "key": "string",
    "label": "integer", "instance_id": "integer", "cluster": "integer", "rank": "integer", "width": "integer",
    "height": "integer", "forgetting_events": "integer", "misclassified": "integer",
    "mask": "binary", "outlier": "boolean", "learned": "boolean", "center": "floats",
}  # `image` is PNG bytes in data/prepared but an embedding in PDS prototypes: its readers pass `types`


def _check_columns(table: pa.Table, file, types: dict | None) -> None:
    """Known columns have their kind (`types`, else COLUMN_TYPES); float columns (and lists of floats) hold finite
    numbers."""
    for name, column in zip(table.column_names, table.columns):
        kind = KINDS.get((types or {}).get(name) or COLUMN_TYPES.get(name))
        if kind is not None and not kind[1](column.type):
            raise PipelineError(f"{file}: column '{name}' has type {column.type}, expected {kind[0]}")
        if not len(column) or not column.num_chunks:
            continue
        typ, values, parents = column.type, column, None
        if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
            typ = typ.value_type
            if pa.types.is_floating(typ):
                values = pa.chunked_array([pc.list_flatten(c) for c in column.chunks], typ)
                parents = np.concatenate([pc.list_parent_indices(c).to_numpy() + offset for c, offset in
                                          zip(column.chunks, np.cumsum([0] + [len(c) for c in column.chunks]))])
        if not pa.types.is_floating(typ) or not len(values):
            continue
        bad = pc.fill_null(pc.invert(pc.is_finite(values)), False)
        if pc.any(bad).as_py():
            first = pc.index(bad, True).as_py()
            row = int(parents[first]) if parents is not None else first
            raise PipelineError(f"{file}: column '{name}' holds NaN or inf (row {row}); the file is corrupt or was "
                                "made from bad input: re-run the stage that writes it")


def read_parquet(path, columns: list[str] | None = None, types: dict | None = None) -> pa.Table:
    """Read a Parquet file, a directory of them, or the shards `path-*.parquet`.

    Missing columns, a column of the wrong kind (`types`: column -> a kind of KINDS, over COLUMN_TYPES) and NaN or
    inf in a float column raise a PipelineError naming the file and the column; an unreadable file one naming the
    file.
    """
    tables = []
    for file in _parquet_files(path):
        schema = _parquet_schema(file)
        missing = [c for c in columns or [] if c not in schema.names]
        if missing:
            raise PipelineError(f"{file}: missing column(s) {missing}; it has {schema.names}")
        try:
            table = pq.read_table(file, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise PipelineError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from exc
        _check_columns(table, file, types)
        tables.append(table)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _parquet_schema(file) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"{file}: not a readable Parquet file ({_first_line(exc)})") from exc


def read_parquet_metadata(path) -> dict:
    """The JSON metadata written by write_parquet (from the first file)."""
    meta = _parquet_schema(_parquet_files(path)[0]).metadata or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k.decode()] = json.loads(v)
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def save_tensors(obj: dict, path) -> Path:
    import torch
    buffer = io.BytesIO()  # torch.save names its archive after the file; a buffer keeps bytes name-independent
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def load_tensors(path) -> dict:
    """A tensor file written by save_tensors (loaded with weights_only); an unreadable file, or a NaN or infinite
    number in any tensor or float of it, is a PipelineError naming the file and the key."""
    import pickle
    import zipfile

    import torch
    if not Path(path).exists():
        raise PipelineError(f"no tensor file at {path}: run the stage that produces it first")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable tensor file ({_first_line(exc)}); re-run the stage that "
                            "writes it") from exc
    bad = _non_finite(obj, "")
    if bad is not None:
        key, row = bad
        raise PipelineError(f"{path}: '{key}' holds NaN or inf{f' (row {row})' if row is not None else ''}; the "
                            "file is corrupt or was made from bad input: re-run the stage that writes it")
    return obj


def _non_finite(obj, key: str):
    """(dotted key, first row or None) of the first NaN/inf in a nested dict/list of tensors and numbers."""
    import torch
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and obj.numel() and not bool(torch.isfinite(obj).all()):
            rows = (~torch.isfinite(obj)).reshape(len(obj), -1).any(1) if obj.dim() else None
            return key, int(rows.nonzero()[0, 0]) if rows is not None else None
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (key, None)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def check_finite(array, what: str) -> None:
    """A PipelineError naming `what` (a file, a feature kind) and the first row of `array` holding NaN or inf."""
    bad = ~np.isfinite(np.asarray(array))
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(bad), -1).any(1))[0]) if bad.ndim else None
        raise PipelineError(f"{what} holds NaN or inf{f' (row {row})' if row is not None else ''}; it is corrupt "
                            "or was made from bad input: re-run the stage that writes it")


def save_npy(array: np.ndarray, path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


def save_json(obj, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return Path(path)


def save_text(text: str, path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG without timestamps, so equal figures are equal bytes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return Path(path)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxW or HxWxC uint8 array as PNG bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, name: str, mode: str | None = None) -> np.ndarray:
    """Decode image bytes to a uint8 array; a corrupt image, or one too large to decode safely (PIL's
    decompression-bomb limit), raises an error naming it.

    With `mode` ("L" or "RGB"): 16-bit images are scaled to 8 bits (v / 257, rounded), not clipped; an image
    with transparency (RGBA, LA, a palette or grey image with a transparent colour) is composited on a
    BLACK background (colour x alpha), the background of the MNIST family.
    """
    with _image_errors(name):
        from PIL import Image
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(convert_image(img, mode) if mode else img)


def image_header(path) -> tuple[str, int, int, bool]:
    """(PIL mode, width, height, grey) of an image file, from its header only; errors as decode_image's.
    `grey`: the image has no colour (L, LA, 1, 16-bit, or a palette of greys)."""
    with _image_errors(str(path)):
        from PIL import Image
        with Image.open(path) as img:
            grey = img.mode in ("1", "L", "LA", "La", "I", "F") or img.mode.startswith("I;16")
            if img.mode in ("P", "PA"):
                palette = img.getpalette() or []
                grey = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
            return img.mode, img.width, img.height, grey


@contextlib.contextmanager
def _image_errors(name: str):
    from PIL import Image, UnidentifiedImageError
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise PipelineError(f"image too large to decode safely (decompression bomb check): {name} ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PipelineError(f"corrupt or unreadable image: {name} ({exc})") from exc


def convert_image(img, mode: str):
    """`img` in PIL `mode`, 16-bit scaled and transparency composited on black (see decode_image)."""
    from PIL import Image
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.int64)
        img = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert(mode)


def read_utf8(path) -> str:
    """The text of `path`; bytes that are not UTF-8 are an error naming the file and line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PipelineError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r}); save it as "
                            "UTF-8") from exc
