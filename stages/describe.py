"""describe: one free-text description per image -> data/annotations/descriptions.parquet

| column      | type   | meaning                       |
|-------------|--------|-------------------------------|
| uid         | string | image uid                     |
| description | string |                               |
| backend     | string | backend that produced the row |

Backends: `offline_template` fills `describe.template` from the class name,
the tags and the instance captions. Template text, not a vision-language model.
"""
from __future__ import annotations

import pyarrow as pa
from tqdm import tqdm

from stages.annotate import build_backend, group_by_uid, load_annotation_input, read_annotations, settings, \
    write_annotations
from stages.caption import fill
from stages.params import load_params, param

SCHEMA = pa.schema([("uid", pa.string()), ("description", pa.string())])


class TemplateDescriber:
    def __init__(self, params):
        self.template = param(params, "describe.template", str)

    def __call__(self, class_name: str, tags: list[str], instance_captions: list[str]) -> str:
        instances = "; ".join(instance_captions) if instance_captions else "no separable object"
        return fill(self.template, "describe.template", class_name=class_name.lower(), tags=", ".join(tags),
                    instances=instances)


DESCRIBERS = {"offline_template": TemplateDescriber}


def main() -> None:
    params = load_params()
    name, describer = build_backend(params, "describe", DESCRIBERS)
    table = load_annotation_input(("uid", "class_name"))
    tags = {u: t[0] for u, t in group_by_uid(read_annotations("tags", ["uid", "tags"]), "tags").items()}
    captions = read_annotations("captions", ["uid", "instance_id", "caption"])
    per_instance = {}
    for uid, iid, cap in zip(*(captions[c].to_pylist() for c in ("uid", "instance_id", "caption"))):
        if iid >= 0:
            per_instance.setdefault(uid, []).append(cap)
    uids = table["uid"].to_pylist()
    texts = [describer(cls, tags.get(uid, []), per_instance.get(uid, []))
             for uid, cls in tqdm(zip(uids, table["class_name"].to_pylist()), total=len(uids), desc="describe",
                                  mininterval=2)]
    path = write_annotations({"uid": uids, "description": texts}, SCHEMA, "descriptions", name,
                             settings(params, "describe"))
    print(f"wrote {len(texts)} descriptions with {name} -> {path}")


if __name__ == "__main__":
    main()
