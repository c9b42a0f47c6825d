"""tag: image tags per image -> data/annotations/tags.parquet

| column  | type          | meaning                                  |
|---------|---------------|------------------------------------------|
| uid     | string        | image uid (train and val splits)         |
| tags    | list<string>  | tags, best first                         |
| scores  | list<float32> | the tagger's score of each tag           |
| backend | string        | backend that produced the row            |

Backends: `offline_imagenet` = top-k ImageNet-1k labels of the pretrained
EfficientNet-Lite0 (softmax probabilities as scores). It is an ImageNet
classifier, not the Recognize-Anything model, and its tags are ImageNet words.
"""
from __future__ import annotations

import pyarrow as pa
import torch

from stages.annotate import build_backend, load_annotation_input, settings, write_annotations
from stages.data import decode_images
from stages.models import EfficientNetLite0, batched, imagenet_class_names
from stages.params import load_params, positive, resolve_device

SCHEMA = pa.schema([("uid", pa.string()), ("tags", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))])


class ImageNetTagger:
    def __init__(self, params):
        self.top_k = positive(params, "tag.top_k")
        self.batch_size = positive(params, "tag.batch_size")
        self.model = EfficientNetLite0(resolve_device(params), positive(params, "tag.input_size"))
        self.names = [n.lower() for n in imagenet_class_names()]

    def __call__(self, images: torch.Tensor):
        tags, scores = [], []
        for sl in batched(len(images), self.batch_size, "tag"):
            probs = self.model.logits(images[sl]).softmax(1)
            top = probs.topk(self.top_k, dim=1)
            for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
                tags.append([self.names[i] for i in idx])
                scores.append([round(v, 6) for v in vals])
        return tags, scores


TAGGERS = {"offline_imagenet": ImageNetTagger}


def main() -> None:
    params = load_params()
    name, tagger = build_backend(params, "tag", TAGGERS)
    table = load_annotation_input(("uid", "image"))
    uids = table["uid"].to_pylist()
    images = torch.from_numpy(decode_images(table["image"].to_pylist(), uids, channels=3))
    tags, scores = tagger(images)
    path = write_annotations({"uid": uids, "tags": tags, "scores": scores}, SCHEMA, "tags", name,
                             settings(params, "tag"))
    print(f"tagged {len(uids)} images with {name} -> {path}")


if __name__ == "__main__":
    main()
