"""describe: one free-text description per image -> data/annotations/descriptions.parquet

| column      | type   | meaning                       |
|-------------|--------|-------------------------------|
| uid         | string | image uid                     |
| description | string |                               |
| backend     | string | backend that produced the row |

Backends (`describe.backend`):
- `offline_template` (default): fills `describe.template` from the class name, the tags and the instance
  captions. Template text, not a vision-language model.
- `llava`: transformers LLaVA (`describe.llava.model`) asked `describe.llava.prompt` (VLCP's prompt, with the
  class name filled in) through the model's chat template; sampling at temperature 0.2 with one beam, as in
  VLCP, seeded from `seed` and the batch's image keys, at most `max_new_tokens` tokens.
"""
from __future__ import annotations

import pyarrow as pa
import torch

from mmdistill.annotate.cache import (
    PIPELINE,
    AnnotationTarget,
    digest,
    group_by_uid,
    load_annotation_input,
    read_annotations,
    run_annotation_stage,
)
from mmdistill.annotate.captions import fill
from mmdistill.core.config import load_params, param, positive
from mmdistill.core.hub import from_pretrained, load_model, pil_images, torch_dtype
from mmdistill.core.runtime import resolve_device
from mmdistill.core.storage import PipelineError

SCHEMA = pa.schema([("uid", pa.string()), ("description", pa.string())])


class TemplateDescriber:
    image_mode = "L"

    def __init__(self, params):
        self.template = param(params, "describe.template", str)
        self.settings = {"template": self.template}

    def load(self):
        pass

    def annotate(self, records):
        return [[{"description": self.describe(r["class_name"], r["tags"], r["instance_captions"])}] for r in records]

    def describe(self, class_name: str, tags: list[str], instance_captions: list[str]) -> str:
        instances = "; ".join(instance_captions) if instance_captions else "no separable object"
        return fill(self.template, "describe.template", class_name=class_name.lower(), tags=", ".join(tags),
                    instances=instances)


class LlavaDescriber:
    """LLaVA with VLCP's prompt (class name filled in), sampling at `describe.llava.temperature`, one beam."""

    image_mode = "RGB"

    def __init__(self, params):
        self.params = params
        self.prompt = param(params, "describe.llava.prompt", str)
        fill(self.prompt, "describe.llava.prompt", class_name="x")
        self.temperature = param(params, "describe.llava.temperature", float)
        self.max_new_tokens = positive(params, "describe.llava.max_new_tokens")
        self.seed = param(params, "seed", int)
        self.settings = {"model": param(params, "describe.llava.model", str),
                         "revision": param(params, "describe.llava.revision", str), "prompt": self.prompt,
                         "temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "seed": self.seed}

    def load(self):
        from transformers import AutoProcessor, LlavaForConditionalGeneration
        self.device = resolve_device(self.params)
        self.dtype = torch_dtype(self.device)
        key, rev = "describe.llava.model", "describe.llava.revision"
        self.processor = from_pretrained(AutoProcessor, self.params, key, rev)
        self.processor.tokenizer.padding_side = "left"
        self.render("object")  # no usable chat template: an error now, before the model loads
        self.model = load_model(LlavaForConditionalGeneration, self.params, key, rev, self.device)

    def render(self, class_name: str) -> str:
        """The prompt for one image through the processor's chat template."""
        from jinja2 import TemplateError
        try:
            return self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": fill(
                    self.prompt, "describe.llava.prompt", class_name=class_name)}]}], add_generation_prompt=True)
        except (ValueError, TemplateError) as exc:
            raise PipelineError(f"param 'describe.llava.model' = {self.settings['model']!r}: its processor has no "
                                f"usable chat template ({exc}); LLaVA's prompt is built with it: give a model whose "
                                "processor is saved with one (chat_template.jinja)") from exc

    def inputs(self, records):
        """The model inputs of a batch: the chat-templated prompts with their images, left-padded."""
        texts = [self.render(r["class_name"].lower()) for r in records]
        bos = self.processor.tokenizer.bos_token
        # a template that writes the BOS itself ({{ bos_token }}) and a tokenizer that adds one would give two
        template_bos = bool(bos) and all(t.startswith(bos) for t in texts)
        inputs = self.processor(images=pil_images(r["image"] for r in records), text=texts, return_tensors="pt",
                                padding=True, add_special_tokens=not template_bos).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    @torch.no_grad()
    def annotate(self, records):
        inputs = self.inputs(records)
        # sampling seeded from the seed and the batch's keys: a batch re-run gives the same text
        torch.manual_seed(int(digest([self.seed] + [r["key"] for r in records])[:15], 16))
        tokens = self.model.generate(**inputs, do_sample=self.temperature > 0, temperature=self.temperature or None,
                                     num_beams=1, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [[{"description": t.strip()}] for t in texts]


DESCRIBERS = {"offline_template": TemplateDescriber, "llava": LlavaDescriber}


def run(target: AnnotationTarget = PIPELINE) -> None:
    params = load_params()
    table = load_annotation_input(("uid", "class_name", "image"), target)
    tags = {u: t[0] for u, t in group_by_uid(read_annotations("tags", ["uid", "tags"], target), "tags").items()}
    captions = read_annotations("captions", ["uid", "instance_id", "caption"], target)
    per_instance = {}
    for uid, iid, cap in zip(*(captions[c].to_pylist() for c in ("uid", "instance_id", "caption"))):
        if iid >= 0:
            per_instance.setdefault(uid, []).append(cap)
    records = [{"uid": u, "image": b, "class_name": c, "tags": tags.get(u, []),
                "instance_captions": per_instance.get(u, [])}
               for u, b, c in zip(*(table[k].to_pylist() for k in ("uid", "image", "class_name")))]
    path = run_annotation_stage(params, "describe", "mmdistill.annotate.descriptions:DESCRIBERS", SCHEMA, records, "descriptions", target)
    print(f"described {len(records)} images -> {path}")
