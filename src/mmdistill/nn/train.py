"""The shared training loops: a classifier on (images, labels) with SGD, and Adam over shuffled mini-batches of
any loss (the heads of stages align and caption_head, stage vae); accuracy."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm import tqdm


def train_classifier(net, images: torch.Tensor, labels: torch.Tensor, epochs: int, device, *, lr: float = 0.01,
                     batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4, augment=None,
                     seed: int = 0, desc: str = "train", decay: bool = True, on_batch=None,
                     generator: torch.Generator | None = None, autocast=contextlib.nullcontext, progress: bool = True,
                     captions: torch.Tensor | None = None):
    """SGD with momentum; lr x0.1 after half the epochs (the DC/DM evaluation protocol; never before the first
    epoch, so a 1-epoch run trains at `lr` throughout) unless `decay` is False.

    `on_batch(idx, logits, targets)` sees every mini-batch's (detached) logits before its update.
    Shuffling and augmentation seeds come from `generator` if given (DC's inner loop passes the
    distillation engine's, whose state is checkpointed), else from a generator seeded with `seed`;
    `augment(x, seed)` may be any callable. `autocast()` is entered around each forward pass.
    With `captions` (one vector per image), the network is called as net(x, captions[idx]) (caption_concat).

    NCHW throughout: on CPU, GroupNorm (instance norm) in channels-last is ~5x slower.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(epochs // 2, 1)] if decay else [], gamma=0.1)
    images, labels = images.to(device), labels.to(device)
    captions = captions.to(device) if captions is not None else None
    net.train()
    for epoch in tqdm(range(epochs), desc=desc, leave=False, mininterval=2, disable=not progress):
        order = torch.randperm(len(labels), generator=gen).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = images[idx]
            if augment is not None:  # in fp32: augmentation prepares the data, it is not the network's forward
                x = augment(x, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with autocast():
                logits = net(x) if captions is None else net(x, captions[idx])
                if on_batch is not None:
                    on_batch(idx, logits.detach(), labels[idx])
                loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return net


@torch.no_grad()
def accuracy(net, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 256,
             captions: torch.Tensor | None = None, autocast=contextlib.nullcontext) -> float:
    """Top-1 accuracy; `images` are already normalised float tensors; `captions` and `autocast` as in
    train_classifier."""
    net.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device)
        with autocast():
            logits = net(x) if captions is None else net(x, captions[start:start + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    net.train()
    return correct / max(len(labels), 1)


def adam_minibatches(parameters, size: int, batch_loss, *, epochs: int, batch_size: int, lr: float,
                     generator: torch.Generator, desc: str) -> list[float]:
    """Adam for `epochs` epochs over `size` items shuffled by `generator` each epoch; `batch_loss(idx)` is the
    loss of the mini-batch of item indices `idx` -> mean loss of each epoch (weighted by batch size)."""
    opt = torch.optim.Adam(parameters, lr=lr)
    history = []
    with tqdm(total=epochs * -(-size // batch_size), desc=desc, unit="batch", mininterval=2) as bar:
        for _ in range(epochs):
            order = torch.randperm(size, generator=generator)
            total = 0.0
            for start in range(0, size, batch_size):
                idx = order[start:start + batch_size]
                loss = batch_loss(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update()
            history.append(total / size)
    return history
