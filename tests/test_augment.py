"""DSA as the paper has it (issue 14, item 23): in a matching step each class gets ONE sampled transform, shared by
its real batch and its synthetic images (siamese); a crop is a whole-pixel translation with zero fill. The earlier
forms (per-image draws over the class-major batch, a sub-pixel bilinear shift) stay as options."""
import copy

import pytest
import torch

from mmdistill.core.config import load_params
from mmdistill.nn.augment import DifferentiableAugment
from tests.conftest import REPO, method_run

CLASSES, REAL, IPC = 3, 5, 2


def loop_augmentation(method: str, siamese: bool):
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    family = "gradient" if method == "dsa" else method if method == "dsdm" else "distribution"
    params["distill"][family].update(siamese=siamese, flip=True)
    return method_run(params, method, IPC, train=None).augmentation()


def class_images(copies: int) -> torch.Tensor:
    """`copies` identical images of each class, class-major: class c's image is its own random pattern."""
    patterns = torch.rand(CLASSES, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return patterns.repeat_interleave(copies, dim=0)


@pytest.mark.parametrize("method", ["dm", "dsa", "dsdm"])
def test_a_class_real_and_synthetic_images_share_one_transform(method):
    augmentation = loop_augmentation(method, siamese=True)
    real, syn = class_images(REAL), class_images(IPC)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):  # every family comes up
        aug = augmentation.draw(gen, CLASSES)
        real_out, syn_out = aug(real), aug(syn)
        for c in range(CLASSES):
            block = torch.cat([real_out[c * REAL:(c + 1) * REAL], syn_out[c * IPC:(c + 1) * IPC]])
            assert torch.equal(block, block[:1].expand_as(block)), f"class {c} got more than one transform"


def test_the_earlier_form_pairs_nothing():
    augmentation = loop_augmentation("dm", siamese=False)
    real, syn = class_images(REAL), class_images(IPC)
    gen = torch.Generator().manual_seed(1)
    unpaired = 0
    for _ in range(30):
        aug = augmentation.draw(gen, CLASSES)
        unpaired += not torch.equal(aug(real)[:REAL], aug(syn)[:1].expand(REAL, -1, -1, -1))
    assert unpaired > 15


def test_classes_get_their_own_transforms():
    dsa = DifferentiableAugment(flip=True)
    x = torch.rand(1, 1, 16, 16).expand(8, -1, -1, -1)
    out = dsa.per_class(x, list(range(8)))
    assert len({out[i].numpy().tobytes() for i in range(8)}) > 4


def test_per_image_form_varies_within_a_call():
    dsa = DifferentiableAugment()
    x = torch.rand(1, 1, 16, 16).expand(16, -1, -1, -1)
    varied = [len({o.numpy().tobytes() for o in dsa(x, seed)}) > 1 for seed in range(10)]
    assert sum(varied) >= 8


def test_shift_crop_moves_whole_pixels_with_zero_fill():
    dsa = DifferentiableAugment(crop_mode="shift")
    dsa.families = ["crop"]
    x = torch.rand(20, 2, 16, 16) + 1  # no zero inside
    out = dsa(x, seed=5)
    limit = int(16 * 0.125 + 0.5)
    for i in range(20):
        found = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                 if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(found) == 1, f"image {i} is not a whole-pixel shift within {limit}"
    bilinear = DifferentiableAugment(crop_mode="bilinear")
    bilinear.families = ["crop"]
    assert not torch.equal(bilinear(x, seed=5), out)


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`img` moved so that output[y, x] = img[y + dy, x + dx], zero outside."""
    h, w = img.shape[1:]
    out = torch.zeros_like(img)
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    out[:, ys, xs] = img[:, ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
    return out


def test_shift_crop_is_differentiable():
    dsa = DifferentiableAugment()
    dsa.families = ["crop"]
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    dsa(x, seed=2, siamese=True).sum().backward()
    assert x.grad.abs().sum() > 0


def test_unknown_crop_form_is_refused():
    with pytest.raises(ValueError, match="crop_mode"):
        DifferentiableAugment(crop_mode="pad")


def test_transform_ranges_are_dsas():
    """DSA's parameters (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5], crop 1/8 of the side, cutout
    1/2 of the side, scale x[1/1.2, 1.2], rotate +-15 degrees), checked on what the transforms do, so that a changed
    default shows up here rather than as a quietly different distillation."""
    aug = DifferentiableAugment()
    assert aug.families == ["color", "crop", "cutout", "scale", "rotate"]  # one family per draw; flip when enabled
    x = torch.zeros(4000, 1, 8, 8)
    aug.families = ["color"]
    shifted = aug(x + 1.0, seed=1)[:, 0, 0, 0]  # a flat image: brightness moves it, contrast scales nothing
    assert 0.5 <= shifted.min() < 0.52 and 1.48 < shifted.max() <= 1.5
    aug.families = ["cutout"]
    zeros = (aug(torch.ones(400, 1, 16, 16), seed=2) == 0).flatten(1).sum(1)
    assert zeros.max() == 64  # an 8 x 8 square inside the image: 1/2 of the side
    aug.families = ["crop"]
    moved = aug(torch.ones(400, 1, 16, 16), seed=3)
    assert (moved[:, 0].sum(2) == 0).sum(1).max() == 2  # at most round(16 / 8) = 2 whole columns shifted in
    aug.families = ["rotate"]
    line = torch.zeros(1, 1, 65, 65)
    line[..., 32, :] = 1.0
    angles = []
    for seed in range(200):
        out = aug(line, seed=seed)[0, 0]
        ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
        slope = torch.linalg.lstsq(torch.stack([xs.float(), torch.ones_like(xs.float())], 1), ys.float()[:, None])
        angles.append(abs(float(torch.rad2deg(torch.atan(slope.solution[0, 0])))))
    assert 13.5 < max(angles) <= 15.5
    aug.families = ["scale"]
    dot = torch.zeros(1, 1, 65, 65)
    dot[..., 32, 32 + 20] = 1.0
    reach = [float(torch.nonzero(aug(dot, seed=s)[0, 0] > 0.2)[:, 1].float().mean()) - 32 for s in range(200)]
    assert 20 / 1.2 - 1 < min(reach) < 20 / 1.1 and 20 * 1.1 < max(reach) < 20 * 1.2 + 1
