"""caption: a caption per instance and one per whole image -> data/annotations/captions.parquet

| column      | type   | meaning                                            |
|-------------|--------|----------------------------------------------------|
| uid         | string | image uid                                          |
| instance_id | int32  | instance of `instances.parquet`; -1 = whole image  |
| caption     | string |                                                    |
| backend     | string | backend that produced the row                      |

Also draws `outputs/figures/annotations.png`: one image per class with its masks, boxes, phrases, tags and
captions.

Backends (`caption.backend`):
- `offline_template` (default): fills `caption.instance_template` from the instance's phrase, size and position,
  and `caption.image_template` from the class name and tags. Template text, not a captioning model.
- `blip2`: transformers BLIP-2 (`caption.blip2.model`), beam search with `caption.blip2.{num_beams,max_new_tokens}`
  and an optional text `prompt`; the whole image, and each instance's box crop with the pixels outside its mask
  set to black.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from mmdistill.annotate.cache import (
    PIPELINE,
    AnnotationTarget,
    group_by_uid,
    load_annotation_input,
    read_annotations,
    run_annotation_stage,
)
from mmdistill.core.config import load_params, param, positive
from mmdistill.core.hub import from_pretrained, load_model, pil_images, torch_dtype
from mmdistill.core.paths import ANNOTATION_FIGURE
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import PipelineError, decode_image, save_figure

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
    image_mode = "L"

    def __init__(self, params):
        self.instance_template = param(params, "caption.instance_template", str)
        self.image_template = param(params, "caption.image_template", str)
        self.settings = {"instance_template": self.instance_template, "image_template": self.image_template}

    def load(self):
        pass

    def annotate(self, records):
        return [self.captions(r) for r in records]

    def captions(self, rec):
        h, w = rec["image"].shape[:2]
        cls = rec["class_name"].lower()
        rows = [{"instance_id": -1, "caption": fill(self.image_template, "caption.image_template", class_name=cls,
                                                     tags=", ".join(rec["tags"]))}]
        for inst in rec["instances"]:
            rows.append({"instance_id": inst["instance_id"], "caption": fill(
                self.instance_template, "caption.instance_template", phrase=inst["phrase"],
                size=size_word(inst["area"]), position=position_word(inst["box"], w, h), class_name=cls)})
        return rows


def masked_crop(image: np.ndarray, mask_png: bytes, box, name: str) -> np.ndarray:
    """The instance's box crop with pixels outside its mask set to black."""
    mask = decode_image(mask_png, name, "L") > 0
    h, w = image.shape[:2]
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    if x1 <= x0 or y1 <= y0:
        x0, y0, x1, y1 = 0, 0, w, h
    return (image * mask[..., None])[y0:y1, x0:x1]


class Blip2Captioner:
    """BLIP-2: one caption for the whole image and one per instance (masked crop), batched."""

    image_mode = "RGB"

    def __init__(self, params):
        self.params = params
        self.generation = {"max_new_tokens": positive(params, "caption.blip2.max_new_tokens"),
                           "num_beams": positive(params, "caption.blip2.num_beams")}
        self.prompt = param(params, "caption.blip2.prompt", str)
        self.settings = {"model": param(params, "caption.blip2.model", str),
                         "revision": param(params, "caption.blip2.revision", str), "prompt": self.prompt,
                         **self.generation}

    def load(self):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor
        self.device = resolve_device(self.params)
        self.dtype = torch_dtype(self.device)
        key, rev = "caption.blip2.model", "caption.blip2.revision"
        self.processor = from_pretrained(Blip2Processor, self.params, key, rev)
        self.model = load_model(Blip2ForConditionalGeneration, self.params, key, rev, self.device)

    @torch.no_grad()
    def annotate(self, records):
        images, owners = [], []
        for i, rec in enumerate(records):
            images.append(rec["image"])
            owners.append((i, -1))
            for inst in rec["instances"]:
                images.append(masked_crop(rec["image"], inst["mask"], inst["box"], f"mask of {rec['uid']}"))
                owners.append((i, inst["instance_id"]))
        inputs = self.processor(images=pil_images(images), text=[self.prompt] * len(images), return_tensors="pt",
                                padding=True).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tokens = self.model.generate(**inputs, do_sample=False, **self.generation)
        if not self.model.config.text_config.is_encoder_decoder:
            # a decoder-only language model (OPT) returns the image and prompt tokens first; an encoder-decoder
            # one (T5, blip2-flan-t5-*) returns only the decoder's tokens
            tokens = tokens[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        out = [[] for _ in records]
        for (i, instance_id), caption in zip(owners, texts):
            out[i].append({"instance_id": instance_id, "caption": caption.strip()})
        return out


CAPTIONERS = {"offline_template": TemplateCaptioner, "blip2": Blip2Captioner}


def draw_annotations(records: list[dict], captions: dict, path=ANNOTATION_FIGURE, n: int = 8) -> Path:
    """One image per class (first n classes): masks tinted, boxes with phrases, tags above, captions below."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    samples = list({r["class_name"]: r for r in reversed(records)}.values())[::-1][:n]
    cols = min(max(len(samples), 1), 4)
    rows = -(-max(len(samples), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 3.6 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.flat[len(samples):]:
        ax.axis("off")
    for ax, rec in zip(axes.flat, samples):
        image = decode_image(rec["image"], rec["uid"], "RGB").astype(np.float32) / 255
        for inst in rec["instances"]:
            mask = decode_image(inst["mask"], f"mask of {rec['uid']}", "L") > 0
            image[mask] = 0.6 * image[mask] + 0.4 * np.array(colours(inst["instance_id"] % 10)[:3])
        ax.imshow(image, interpolation="nearest")
        for inst in rec["instances"]:
            x0, y0, x1, y1 = inst["box"]
            colour = colours(inst["instance_id"] % 10)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.5))
            ax.text(x0, y0, inst["phrase"][:18], color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": colour, "pad": 1, "lw": 0})
        ax.set_title(textwrap.fill("tags: " + ", ".join(rec["tags"]), 30), fontsize=7)
        lines = [captions.get((rec["uid"], -1), "")] + [captions.get((rec["uid"], i["instance_id"]), "")
                                                        for i in rec["instances"][:2]]
        ax.set_xlabel(textwrap.fill(" | ".join(line for line in lines if line)[:160], 34), fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def run(figure: Path | None = ANNOTATION_FIGURE, target: AnnotationTarget = PIPELINE) -> None:
    params = load_params()
    table = load_annotation_input(("uid", "class_name", "image"), target)
    tags = {u: t[0] for u, t in group_by_uid(read_annotations("tags", ["uid", "tags"], target), "tags").items()}
    instances = {}
    columns = ["uid", "instance_id", "box", "phrase", "area", "mask"]
    for row in read_annotations("instances", columns, target).to_pylist():
        instances.setdefault(row.pop("uid"), []).append(row)
    records = [{"uid": u, "image": b, "class_name": c, "tags": tags.get(u, []), "instances": instances.get(u, [])}
               for u, b, c in zip(*(table[k].to_pylist() for k in ("uid", "image", "class_name")))]
    path = run_annotation_stage(params, "caption", "mmdistill.annotate.captions:CAPTIONERS", SCHEMA, records, "captions", target)
    table = read_annotations("captions", ["uid", "instance_id", "caption"], target)
    captions = {(u, i): c for u, i, c in zip(*(table[k].to_pylist() for k in ("uid", "instance_id", "caption")))}
    print(f"captioned {len(records)} images -> {path}")
    if figure is not None:
        print(f"sample figure -> {draw_annotations(records, captions, figure)}")
