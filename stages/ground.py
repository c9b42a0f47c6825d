"""ground: object instances (box + mask) per image -> data/annotations/instances.parquet

One row per instance:

| column      | type         | meaning                                              |
|-------------|--------------|------------------------------------------------------|
| uid         | string       | image uid                                            |
| instance_id | int32        | 0.. within the image, largest first                  |
| box         | list<float32>| [x0, y0, x1, y1] in pixels, x1/y1 exclusive          |
| score       | float32      | backend confidence (offline: share of the foreground)|
| phrase      | string       | what the instance is (offline: the image's top tag)  |
| mask        | binary       | PNG, 0/255, image-sized                              |
| area        | float32      | mask pixels / image pixels                           |
| backend     | string       | backend that produced the row                        |

Images with no instance have no rows; consumers treat them as all-foreground.
Backends: `offline_threshold` = Otsu threshold, hole filling and connected
components (scipy.ndimage); no learned model.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import ndimage
from tqdm import tqdm

from stages.annotate import build_backend, group_by_uid, load_annotation_input, read_annotations, settings, \
    write_annotations
from stages.io import decode_image, png_bytes
from stages.params import load_params, param, positive

SCHEMA = pa.schema([("uid", pa.string()), ("instance_id", pa.int32()), ("box", pa.list_(pa.float32())),
                    ("score", pa.float32()), ("phrase", pa.string()), ("mask", pa.binary()),
                    ("area", pa.float32())])


def otsu_threshold(gray: np.ndarray) -> float:
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)
    mu = np.cumsum(prob * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return float(np.nanargmax(between))


def foreground(gray: np.ndarray) -> np.ndarray:
    """Otsu foreground; polarity chosen so that the image border is mostly background."""
    fg = gray > otsu_threshold(gray)
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    if border.mean() > 0.5:
        fg = ~fg
    return ndimage.binary_fill_holes(fg)


class ThresholdGrounder:
    def __init__(self, params):
        self.min_area = param(params, "ground.min_area", float)
        self.max_instances = positive(params, "ground.max_instances")

    def __call__(self, uid: str, gray: np.ndarray, tags: list[str]):
        fg = foreground(gray)
        labels, count = ndimage.label(fg)
        total = max(int(fg.sum()), 1)
        parts = []
        for comp in range(1, count + 1):
            mask = labels == comp
            if mask.mean() >= self.min_area:
                parts.append(mask)
        parts.sort(key=lambda m: -int(m.sum()))
        rows = []
        for i, mask in enumerate(parts[:self.max_instances]):
            ys, xs = np.nonzero(mask)
            rows.append({"uid": uid, "instance_id": i,
                         "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                         "score": round(float(mask.sum()) / total, 6),
                         "phrase": tags[0] if tags else "object",
                         "mask": png_bytes(mask.astype(np.uint8) * 255), "area": round(float(mask.mean()), 6)})
        return rows


GROUNDERS = {"offline_threshold": ThresholdGrounder}


def main() -> None:
    params = load_params()
    name, grounder = build_backend(params, "ground", GROUNDERS)
    table = load_annotation_input(("uid", "image"))
    tags = {uid: t[0] for uid, t in group_by_uid(read_annotations("tags", ["uid", "tags"]), "tags").items()}
    rows = []
    for uid, blob in tqdm(zip(table["uid"].to_pylist(), table["image"].to_pylist()), total=table.num_rows,
                          desc="ground", mininterval=2):
        rows += grounder(uid, decode_image(blob, uid, "L"), tags.get(uid, []))
    columns = {f.name: [r[f.name] for r in rows] for f in SCHEMA}
    path = write_annotations(columns, SCHEMA, "instances", name, settings(params, "ground"))
    print(f"grounded {len(rows)} instances in {table.num_rows} images with {name} -> {path}")


if __name__ == "__main__":
    main()
