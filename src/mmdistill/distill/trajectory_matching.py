"""MTT-VL's bi-trajectory matching (Algorithm 1, Eq. 4): the loss and one distillation step over image-text pairs.

The synthetic set is M pairs: pixels (dataset-normalised, like the real images) and text embeddings (in the frozen
text encoder's space, initialised from the embedding of one caption of each image), plus one trainable learning
rate alpha. One step:
  1. pick an expert trajectory e and a start epoch s <= `max_start_epoch` at random (a seeded generator);
  2. the student starts at the expert's trainable state at epoch s (its batch-norm statistics included);
  3. it takes `syn_steps` SGD steps of size alpha on the InfoNCE loss of random mini-batches of the synthetic pairs,
     differentiably (torch.func.functional_call; the graph reaches pixels, texts and alpha);
  4. the loss is Eq. 4: for each side, the squared distance of the student's final parameters to the expert's at
     epoch s + `expert_epochs`, divided by the squared distance the expert itself travelled from s to there, and the
     two sides summed. The image side is the image encoder's trainable parameters (or its LoRA adapters: what the
     buffer saved) and the image projection; the text side is the text projection (the text encoder is frozen).
Pixels, texts and alpha are then updated by SGD with momentum (MTT-VL: momentum 0.5, lr 1000 for pixels and texts,
1e-2 for alpha, alpha_0 0.1).
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from mmdistill.core.storage import PipelineError
from mmdistill.nn.contrastive import PairModel

IMAGE_SIDE = ("param.image_encoder.", "param.image_proj.")
TEXT_SIDE = ("param.text_proj.",)


def sides(state: dict) -> tuple[list[str], list[str]]:
    """The parameter keys of a trainable state (mmdistill.nn.contrastive.trainable_state) on each side."""
    image = [k for k in state if k.startswith(IMAGE_SIDE)]
    text = [k for k in state if k.startswith(TEXT_SIDE)]
    if not image or not text:
        raise PipelineError("expert state: no image-side or no text-side parameters (not a pair-model buffer?)")
    return image, text


def _sq_distance(a: dict, b: dict, keys: list[str]) -> torch.Tensor:
    return sum(((a[k] - b[k]) ** 2).sum() for k in keys)


def trajectory_loss(student: dict, start: dict, target: dict) -> torch.Tensor:
    """Eq. 4: per side, |student - target|^2 / |start - target|^2, summed over the image and the text side."""
    loss = 0.0
    for keys in sides(start):
        travelled = _sq_distance(start, target, keys)
        if float(travelled) == 0.0:
            raise PipelineError("expert trajectory: the parameters did not move between the start and the target "
                                "epoch (lr 0?), so Eq. 4 is undefined")
        loss = loss + _sq_distance(student, target, keys) / travelled
    return loss


def unroll(model: PairModel, start: dict, images: torch.Tensor, texts: torch.Tensor, alpha: torch.Tensor,
           syn_steps: int, batch_size: int, generator: torch.Generator) -> dict:
    """The student's trainable state after `syn_steps` differentiable SGD steps (size `alpha`) from `start` on
    mini-batches of the synthetic pairs (row i of `images` goes with row i of `texts`)."""
    device = images.device
    params = {k: v.to(device).detach().requires_grad_(True) for k, v in start.items() if k.startswith("param.")}
    buffers = {k[len("buffer."):]: v.to(device).clone() for k, v in start.items() if k.startswith("buffer.")}
    model.train()
    n = len(images)
    for _ in range(syn_steps):
        idx = torch.randperm(n, generator=generator)[:batch_size].to(device)
        weights = {k[len("param."):]: v for k, v in params.items()}
        loss = functional_call(model, {**weights, **buffers}, (images[idx], texts[idx]))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}
    return params


def distill_step(model: PairModel, trajectories: list[list[dict]], images: torch.Tensor, texts: torch.Tensor,
                 alpha: torch.Tensor, *, max_start_epoch: int, expert_epochs: int, syn_steps: int, batch_size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Eq. 4 for one random (expert, start epoch) pair: the loss to back-propagate to pixels, texts and alpha."""
    expert = int(torch.randint(len(trajectories), (1,), generator=generator))
    trajectory = trajectories[expert]
    last_start = len(trajectory) - 1 - expert_epochs
    if last_start < 0:
        raise PipelineError(f"expert_epochs {expert_epochs} is more than the buffer's {len(trajectory) - 1} epochs")
    s = int(torch.randint(min(max_start_epoch, last_start) + 1, (1,), generator=generator))
    start, target = trajectory[s], trajectory[s + expert_epochs]
    student = unroll(model, start, images, texts, alpha, syn_steps, batch_size, generator)
    device = images.device
    return trajectory_loss(student, {k: v.to(device) for k, v in start.items()},
                           {k: v.to(device) for k, v in target.items()})


def initial_pairs(pairs: dict, n: int, seed: int) -> dict:
    """M = `n` real pairs to start from: the images of the `random-n` pair set (mmdistill.data.pairs.subset, same
    seed) with one of each image's captions drawn at random."""
    from mmdistill.data.pairs import subset
    picked = subset(pairs, n, seed)
    gen = torch.Generator().manual_seed(seed)
    first = torch.searchsorted(picked["image_of_text"], torch.arange(n))
    counts = torch.bincount(picked["image_of_text"], minlength=n)
    chosen = first + (torch.rand(n, generator=gen) * counts).long()
    return {"images": picked["images"].clone(), "texts": picked["texts"][chosen].clone(), "uids": picked["uids"]}


class PairDistiller:
    """The optimisation state of an mttvl run: pixels, text embeddings and alpha, their SGD optimiser (three
    parameter groups), the generator of experts/start epochs/mini-batches, the loss history. `state_dict` /
    `load_state_dict` are what the checkpoint holds, so a resumed run repeats the same numbers."""

    def __init__(self, init: dict, *, alpha0: float, lr_images: float, lr_texts: float, lr_alpha: float,
                 momentum: float, seed: int, device):
        self.images = init["images"].to(device).clone().requires_grad_(True)
        self.texts = init["texts"].to(device).clone().requires_grad_(True)
        self.alpha = torch.tensor(float(alpha0), device=device, requires_grad=True)
        self.opt = torch.optim.SGD([{"params": [self.images], "lr": lr_images},
                                    {"params": [self.texts], "lr": lr_texts},
                                    {"params": [self.alpha], "lr": lr_alpha}], momentum=momentum)
        self.gen = torch.Generator().manual_seed(seed)
        self.history: list[float] = []

    def step(self, model, trajectories, **settings) -> float:
        loss = distill_step(model, trajectories, self.images, self.texts, self.alpha, generator=self.gen, **settings)
        value = loss.item()
        if value != value or value in (float("inf"), float("-inf")):
            raise PipelineError(f"mttvl: the loss is {value} at iteration {len(self.history)} (diverged: lower "
                                "imagetext.mttvl.lr_images / lr_texts / lr_alpha)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.alpha.clamp_(min=1e-8)  # a learning rate stays positive
        self.history.append(value)
        return value

    def state_dict(self) -> dict:
        return {"images": self.images.detach().cpu(), "texts": self.texts.detach().cpu(),
                "alpha": self.alpha.detach().cpu(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.texts.copy_(state["texts"])
            self.alpha.copy_(state["alpha"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.history = list(state["history"])
