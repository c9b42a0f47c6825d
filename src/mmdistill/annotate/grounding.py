"""ground: object instances (box + mask) per image -> data/annotations/instances.parquet

One row per instance:

| column      | type         | meaning                                              |
|-------------|--------------|------------------------------------------------------|
| uid         | string       | image uid                                            |
| instance_id | int32        | 0.. within the image (offline: largest first, models: best score first) |
| box         | list<float32>| [x0, y0, x1, y1] in pixels, x1/y1 exclusive          |
| score       | float32      | confidence (offline: share of the foreground; DINO: box score) |
| phrase      | string       | what it is (offline: the image's top tag; DINO: the matched tag words) |
| mask        | binary       | PNG, 0/255, image-sized                              |
| area        | float32      | mask pixels / image pixels                           |
| backend     | string       | backend that produced the row                        |

Images with no instance have no rows; consumers treat them as all-foreground.
Backends (`ground.backend`):
- `offline_threshold` (default): Otsu threshold, hole filling and connected components (scipy.ndimage); no model.
- `grounding_dino_sam`: transformers Grounding DINO prompted with the image's tags ("tag1. tag2. ..."), boxes kept
  above `ground.grounding_dino.box_threshold` with words above `text_threshold` (Grounded-SAM: 0.35 / 0.25), best
  `ground.max_instances` by score; then one SAM mask per box, from transformers `SamModel`
  (`ground.sam.implementation: transformers`) or the `segment_anything` package (`ground.sam.model_type`: a
  `sam_model_registry` size or a builder `package.module:function`, with the state dict `ground.sam.checkpoint`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy import ndimage

from mmdistill.annotate.cache import (
    PIPELINE,
    AnnotationTarget,
    group_by_uid,
    load_annotation_input,
    read_annotations,
    run_annotation_stage,
)
from mmdistill.core.config import load_params, param, positive
from mmdistill.core.hub import from_pretrained, import_object, load_model, model_source, pil_images, torch_dtype
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import PipelineError, png_bytes

SCHEMA = pa.schema([("uid", pa.string()), ("instance_id", pa.int32()), ("box", pa.list_(pa.float32())),
                    ("score", pa.float32()), ("phrase", pa.string()), ("mask", pa.binary()),
                    ("area", pa.float32())])
SAM_IMPLEMENTATIONS = ("transformers", "segment_anything")  # ground.sam.implementation


def otsu_threshold(gray: np.ndarray) -> float:
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)
    mu = np.cumsum(prob * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    if np.isnan(between).all():  # a single grey level: nothing to separate; above the maximum, so no foreground
        return float(gray.max())
    return float(np.nanargmax(between))


def foreground(gray: np.ndarray) -> np.ndarray:
    """Otsu foreground; polarity chosen so that the image border is mostly background."""
    fg = gray > otsu_threshold(gray)
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    if border.mean() > 0.5:
        fg = ~fg
    return ndimage.binary_fill_holes(fg)


class ThresholdGrounder:
    image_mode = "L"

    def __init__(self, params):
        self.min_area = param(params, "ground.min_area", float)
        self.max_instances = positive(params, "ground.max_instances")
        self.settings = {"min_area": self.min_area, "max_instances": self.max_instances}

    def load(self):
        pass

    def annotate(self, records):
        return [self.instances(r["image"], r["tags"]) for r in records]

    def instances(self, gray: np.ndarray, tags: list[str]):
        fg = foreground(gray)
        labels, count = ndimage.label(fg)
        total = max(int(fg.sum()), 1)
        parts = []
        for comp in range(1, count + 1):
            mask = labels == comp
            if mask.mean() >= self.min_area:
                parts.append(mask)
        parts.sort(key=lambda m: -int(m.sum()))
        return [instance_row(i, mask, round(float(mask.sum()) / total, 6), tags[0] if tags else "object")
                for i, mask in enumerate(parts[:self.max_instances])]


def instance_row(instance_id: int, mask: np.ndarray, score: float, phrase: str, box=None) -> dict:
    """One output row (without uid); the box defaults to the mask's bounding box."""
    if box is None:
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else [0.0] * 4
    return {"instance_id": instance_id, "box": [round(float(v), 4) for v in box], "score": score, "phrase": phrase,
            "mask": png_bytes(mask.astype(np.uint8) * 255), "area": round(float(mask.mean()), 6)}


SAM_SIZES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}  # image encoder: (embed dim, blocks)


def sam_size_hint(state: dict) -> str:
    """What the checkpoint's image encoder looks like, and which `ground.sam.model_type` would fit it."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if not isinstance(weight, torch.Tensor):
        return "; it has no SAM image encoder (image_encoder.patch_embed.proj.weight)"
    size = (weight.shape[0], len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}))
    if size in SAM_SIZES:
        return f"; the checkpoint is a {SAM_SIZES[size]} (embed dim {size[0]}, {size[1]} blocks): set it as " \
               "'ground.sam.model_type'"
    return (f"; its image encoder (embed dim {size[0]}, {size[1]} blocks) is none of the registry's sizes: set "
            "'ground.sam.model_type' to a builder 'package.module:function' that returns this segment_anything Sam")


def load_segment_anything(params: dict):
    """A segment_anything `Sam` with the weights of `ground.sam.checkpoint`.

    `ground.sam.model_type` is a `sam_model_registry` size (vit_b, vit_l, vit_h) or a builder
    `package.module:function` called without arguments that returns a `segment_anything.modeling.Sam` (other
    sizes). The checkpoint is read as a state dict with `torch.load(weights_only=True)` (never segment_anything's
    own unrestricted load) and must fit the model key for key.
    """
    from segment_anything import sam_model_registry
    from segment_anything.modeling import Sam
    type_key, checkpoint_key = "ground.sam.model_type", "ground.sam.checkpoint"
    model_type = param(params, type_key, str)
    if ":" in model_type:
        build = import_object(model_type, type_key)
        if not callable(build):
            raise PipelineError(f"param '{type_key}': {model_type!r} is not callable")
    elif model_type in sam_model_registry:
        build = partial(sam_model_registry[model_type], checkpoint=None)
    else:
        raise PipelineError(f"param '{type_key}' = {model_type!r} is neither a sam_model_registry size "
                            f"({', '.join(sam_model_registry)}) nor a builder 'package.module:function'")
    checkpoint = model_source(params, checkpoint_key)
    if not Path(checkpoint).is_file():
        raise PipelineError(f"param '{checkpoint_key}': no SAM checkpoint file at {checkpoint!r}; "
                            f"download the {model_type} checkpoint there")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused (not plain tensors), truncated or not a torch file
        raise PipelineError(f"param '{checkpoint_key}': cannot read {checkpoint!r} as a state dict of tensors "
                            f"(torch.load with weights_only=True): {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"param '{checkpoint_key}': {checkpoint!r} holds a {type(state).__name__}, not a "
                            "state dict of tensors")
    try:
        model = build()
    except Exception as exc:
        raise PipelineError(f"param '{type_key}': {model_type!r} failed to build a SAM: {exc}") from exc
    if not isinstance(model, Sam):
        raise PipelineError(f"param '{type_key}': {model_type!r} returned a {type(model).__name__}, not a "
                            "segment_anything.modeling.Sam")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise PipelineError(f"params '{checkpoint_key}'/'{type_key}': {checkpoint!r} does not fit the "
                            f"{model_type} SAM{sam_size_hint(state)} ({detail[:300]})") from exc
    return model


class GroundingDinoSam:
    """Grounding DINO boxes for the image's tags, then SAM masks prompted with those boxes."""

    image_mode = "RGB"

    def __init__(self, params):
        self.params = params
        self.max_instances = positive(params, "ground.max_instances")
        self.box_threshold = param(params, "ground.grounding_dino.box_threshold", float)
        self.text_threshold = param(params, "ground.grounding_dino.text_threshold", float)
        self.sam_impl = param(params, "ground.sam.implementation", str, choices=SAM_IMPLEMENTATIONS)
        sam = ({"model": param(params, "ground.sam.model", str), "revision": param(params, "ground.sam.revision", str)}
               if self.sam_impl == "transformers" else
               {"model_type": param(params, "ground.sam.model_type", str),
                "checkpoint": param(params, "ground.sam.checkpoint", str)})
        self.settings = {"max_instances": self.max_instances, "box_threshold": self.box_threshold,
                         "text_threshold": self.text_threshold,
                         "grounding_dino": {"model": param(params, "ground.grounding_dino.model", str),
                                            "revision": param(params, "ground.grounding_dino.revision", str)},
                         "sam": {"implementation": self.sam_impl, **sam}}

    def load(self):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        self.device = resolve_device(self.params)
        self.dtype = torch_dtype(self.device)
        key, rev = "ground.grounding_dino.model", "ground.grounding_dino.revision"
        self.dino_processor = from_pretrained(AutoProcessor, self.params, key, rev)
        self.dino = load_model(AutoModelForZeroShotObjectDetection, self.params, key, rev, self.device)
        if self.sam_impl == "transformers":
            from transformers import SamModel, SamProcessor
            self.sam_processor = from_pretrained(SamProcessor, self.params, "ground.sam.model", "ground.sam.revision")
            self.sam = load_model(SamModel, self.params, "ground.sam.model", "ground.sam.revision", self.device)
        else:
            from segment_anything import SamPredictor
            self.predictor = SamPredictor(load_segment_anything(self.params).to(self.device).eval())

    @staticmethod
    def prompt(tags: list[str]) -> str:
        return " ".join(f"{t.lower().strip()}." for t in tags) if tags else "object."

    @torch.no_grad()
    def annotate(self, records):
        images = [r["image"] for r in records]
        inputs = self.dino_processor(images=pil_images(images), text=[self.prompt(r["tags"]) for r in records],
                                     return_tensors="pt", padding=True).to(self.device)
        if self.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.dino(**inputs)
        detections = self.dino_processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[img.shape[:2] for img in images])
        out = []
        for image, det in zip(images, detections):
            order = det["scores"].float().argsort(descending=True, stable=True)[:self.max_instances]
            boxes = det["boxes"].float()[order].cpu()
            h, w = image.shape[:2]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            masks = self.masks(image, boxes) if len(boxes) else []
            out.append([instance_row(i, mask, round(float(det["scores"][j]), 6), det["text_labels"][j] or "object",
                                     boxes[i].tolist())
                        for i, (j, mask) in enumerate(zip(order.tolist(), masks))])
        return out

    def masks(self, image: np.ndarray, boxes: torch.Tensor) -> list[np.ndarray]:
        if self.sam_impl == "transformers":
            inputs = self.sam_processor(images=pil_images([image]), input_boxes=[boxes.tolist()],
                                        return_tensors="pt").to(self.device)
            if self.dtype != torch.float32:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            pred = self.sam(**inputs, multimask_output=False).pred_masks
            masks = self.sam_processor.image_processor.post_process_masks(
                pred.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
        else:
            self.predictor.set_image(image)
            tboxes = self.predictor.transform.apply_boxes_torch(boxes.to(self.device), image.shape[:2])
            masks, _, _ = self.predictor.predict_torch(None, None, boxes=tboxes, multimask_output=False)
        return [m[0].cpu().numpy().astype(bool) for m in masks]


GROUNDERS = {"offline_threshold": ThresholdGrounder, "grounding_dino_sam": GroundingDinoSam}


def run(target: AnnotationTarget = PIPELINE) -> None:
    params = load_params()
    table = load_annotation_input(("uid", "image"), target)
    tags = {uid: t[0] for uid, t in group_by_uid(read_annotations("tags", ["uid", "tags"], target), "tags").items()}
    records = [{"uid": u, "image": b, "tags": tags.get(u, [])}
               for u, b in zip(table["uid"].to_pylist(), table["image"].to_pylist())]
    path = run_annotation_stage(params, "ground", "mmdistill.annotate.grounding:GROUNDERS", SCHEMA, records, "instances", target)
    print(f"grounded {table.num_rows} images -> {path}")
