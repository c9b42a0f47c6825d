"""caption: a caption per instance and one per whole image -> data/annotations/captions.parquet

| column      | type   | meaning                                            |
|-------------|--------|----------------------------------------------------|
| uid         | string | image uid                                          |
| instance_id | int32  | instance of `instances.parquet`; -1 = whole image  |
| caption     | string |                                                    |
| backend     | string | backend that produced the row                      |

Backends: `offline_template` fills `caption.instance_template` from the
instance's phrase, size and position, and `caption.image_template` from the
class name and tags. Template text, not a captioning model.
"""
from __future__ import annotations

import pyarrow as pa
from tqdm import tqdm

from stages.annotate import build_backend, group_by_uid, load_annotation_input, read_annotations, settings, \
    write_annotations
from stages.io import PipelineError
from stages.params import load_params, param

SCHEMA = pa.schema([("uid", pa.string()), ("instance_id", pa.int32()), ("caption", pa.string())])


def size_word(area: float) -> str:
    return "small" if area < 0.15 else "medium-sized" if area < 0.4 else "large"


def position_word(box, width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}"


def fill(template: str, key: str, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise PipelineError(f"param '{key}': bad template {template!r} ({exc}); "
                            f"fields available: {', '.join(sorted(values))}") from exc


class TemplateCaptioner:
    def __init__(self, params):
        self.instance_template = param(params, "caption.instance_template", str)
        self.image_template = param(params, "caption.image_template", str)

    def __call__(self, uid, class_name, width, height, tags, instances):
        rows = [(uid, -1, fill(self.image_template, "caption.image_template", class_name=class_name.lower(),
                                tags=", ".join(tags)))]
        for inst in instances:
            rows.append((uid, inst["instance_id"], fill(
                self.instance_template, "caption.instance_template", phrase=inst["phrase"],
                size=size_word(inst["area"]), position=position_word(inst["box"], width, height),
                class_name=class_name.lower())))
        return rows


CAPTIONERS = {"offline_template": TemplateCaptioner}


def main() -> None:
    params = load_params()
    name, captioner = build_backend(params, "caption", CAPTIONERS)
    table = load_annotation_input(("uid", "class_name", "width", "height"))
    tags = {u: t[0] for u, t in group_by_uid(read_annotations("tags", ["uid", "tags"]), "tags").items()}
    inst = read_annotations("instances", ["uid", "instance_id", "box", "phrase", "area"]).to_pylist()
    instances = {}
    for row in inst:
        instances.setdefault(row["uid"], []).append(row)
    rows = []
    for uid, cls, w, h in tqdm(zip(*(table[c].to_pylist() for c in ("uid", "class_name", "width", "height"))),
                               total=table.num_rows, desc="caption", mininterval=2):
        rows += captioner(uid, cls, w, h, tags.get(uid, []), instances.get(uid, []))
    uids, ids, caps = zip(*rows) if rows else ((), (), ())
    path = write_annotations({"uid": list(uids), "instance_id": list(ids), "caption": list(caps)}, SCHEMA,
                             "captions", name, settings(params, "caption"))
    print(f"wrote {len(rows)} captions with {name} -> {path}")


if __name__ == "__main__":
    main()
