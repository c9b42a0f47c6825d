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
  (`ground.sam.implementation: transformers`) or the `segment_anything` package (`sam_model_registry[model_type]`
  with `ground.sam.checkpoint`).
"""
from __future__ import annotations

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
from mmdistill.core.hub import from_pretrained, model_source, pil_images, torch_dtype
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
        self.dino = from_pretrained(AutoModelForZeroShotObjectDetection, self.params, key, rev,
                                    dtype=self.dtype).to(self.device).eval()
        if self.sam_impl == "transformers":
            from transformers import SamModel, SamProcessor
            self.sam_processor = from_pretrained(SamProcessor, self.params, "ground.sam.model", "ground.sam.revision")
            self.sam = from_pretrained(SamModel, self.params, "ground.sam.model", "ground.sam.revision",
                                       dtype=self.dtype).to(self.device).eval()
        else:
            from segment_anything import SamPredictor, sam_model_registry
            model_type = param(self.params, "ground.sam.model_type", str, choices=tuple(sam_model_registry))
            checkpoint = model_source(self.params, "ground.sam.checkpoint")
            if not Path(checkpoint).is_file():
                raise PipelineError(f"param 'ground.sam.checkpoint': no SAM checkpoint file at {checkpoint!r}; "
                                    f"download the {model_type} checkpoint there")
            self.predictor = SamPredictor(sam_model_registry[model_type](checkpoint=checkpoint).to(self.device).eval())

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
