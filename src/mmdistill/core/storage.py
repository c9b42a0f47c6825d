"""The one reader and writer of pipeline artifacts.

Every write goes to a temporary sibling path that is renamed into place, so a
killed stage never leaves a half-written Parquet file, tensor file or figure.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class PipelineError(RuntimeError):
    """A user-facing error: bad input, bad params or a missing artifact."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
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


def read_parquet(path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, a directory of them, or the shards `path-*.parquet`.

    Missing columns raise a PipelineError naming the file and the column.
    """
    tables = []
    for file in _parquet_files(path):
        schema = pq.read_schema(file)
        missing = [c for c in columns or [] if c not in schema.names]
        if missing:
            raise PipelineError(f"{file}: missing column(s) {missing}; it has {schema.names}")
        tables.append(pq.read_table(file, columns=columns))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def read_parquet_metadata(path) -> dict:
    """The JSON metadata written by write_parquet (from the first file)."""
    meta = pq.read_schema(_parquet_files(path)[0]).metadata or {}
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
    import torch
    if not Path(path).exists():
        raise PipelineError(f"no tensor file at {path}: run the stage that produces it first")
    return torch.load(path, map_location="cpu", weights_only=True)


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
