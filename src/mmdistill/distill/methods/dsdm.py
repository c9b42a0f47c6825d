"""dsdm: Diversified Semantic Distribution Matching. A network drawn each iteration from the pool of stage
`pretrain`; prototype + `lambda_diversity` x covariance + `lambda_history` x historical-prototype matching; IDC's
factor l (`factor`): each stored image holds l^2 tiles, each a real image downsampled by l; the loss sees the
decoded (upsampled) tiles.

The historical term matches the synthetic class prototypes to a memory bank of "integrated" prototypes h
(`memory`):
  integrated   (default) the paper's §4.3, Eq. 6-8: ONE bank across the pool. Iteration t matches mu_S to
               h^(t-1) (Eq. 6); after its update, the prototypes of the optimised set under that iteration's
               network (Eq. 7) enter h^(t) = ema h^(t-1) + (1 - ema) prototypes for t > 1, and h^(1) = 0 (Eq. 8).
               The bank starts at 0, so h = 0 at the first step (and, by Eq. 8, still at the second).
  per_network  the earlier form: each pool network keeps its own EMA memory, set to that network's prototypes
               at its first use; its historical term is 0 until then.
"""
from __future__ import annotations

import torch

from mmdistill.core.config import AUTO_BOOL, BOOL, Float, Int, Str
from mmdistill.core.paths import POOL
from mmdistill.core.storage import load_tensors
from mmdistill.distill.engine import Engine, Run
from mmdistill.distill.initial import random_selection
from mmdistill.distill.losses import class_means, dsdm_terms, factor_decode, factor_encode
from mmdistill.distill.methods import Method, Synthetic
from mmdistill.nn.nets import make_net


def load_pool(device) -> tuple[str, list]:
    """The pre-trained networks of stage `pretrain` (frozen, eval mode)."""
    pool = load_tensors(POOL)
    nets = []
    for state in pool["states"]:
        net = make_net(pool["net"], pool["channels"], pool["classes"], pool["image_size"])
        net.load_state_dict(state)
        nets.append(net.to(device).eval().requires_grad_(False))
    return pool["net"], nets


MEMORIES = ("integrated", "per_network")  # distill.dsdm.memory


def new_memory(kind: str, models: int, classes: int, dim: int, device) -> dict:
    """The memory bank's tensors (engine.state: checkpointed and restored on `--resume`)."""
    if kind == "integrated":
        return {"memory": torch.zeros(classes, dim, device=device)}
    return {"memory": torch.zeros(models, classes, dim, device=device),
            "used": torch.zeros(models, dtype=torch.bool, device=device)}


def recalled(kind: str, state: dict, m: int) -> torch.Tensor | None:
    """The prototypes the historical term of an iteration on pool network `m` matches (None: no term)."""
    if kind == "integrated":
        return state["memory"]
    return state["memory"][m] if state["used"][m] else None


def memorise(kind: str, state: dict, m: int, it: int, prototypes: torch.Tensor, ema: float) -> None:
    """Store the prototypes of the optimised set after iteration `it` (0-based) on network `m`."""
    memory = state["memory"]
    if kind == "integrated":  # Eq. 8: h^(1) = 0, then the EMA
        if it > 0:
            memory.mul_(ema).add_((1 - ema) * prototypes)
        return
    used = state["used"]
    memory[m] = ema * memory[m] + (1 - ema) * prototypes if used[m] else prototypes
    used[m] = True


def run(run: Run) -> Synthetic:
    settings, device = run.settings, run.device
    factor = settings["factor"]
    lambda_div, lambda_hist, ema = settings["lambda_diversity"], settings["lambda_history"], settings["ema"]
    init = random_selection(run.train, run.ipc * factor**2, run.seed)
    augment = run.augmentation()
    batches = run.real_batches()
    classes = batches.classes
    net_name, pool = load_pool(device)
    engine = Engine(run, factor_encode(batches.images[init], factor), {"pool": [net.state_dict() for net in pool]})
    dim = pool[0].embed(batches.images[:1].to(device)).shape[1]
    pool = [engine.compiled(net) for net in pool]
    memory = settings["memory"]
    engine.state = new_memory(memory, len(pool), classes, dim, device)

    def step(it):
        m = int(torch.randint(len(pool), (1,), generator=engine.gen))
        net = pool[m]
        idx = batches.sample(engine.gen)
        real = batches.images[idx].to(device)
        aug = augment.draw(engine.gen, classes)
        with engine.autocast():
            with torch.no_grad():
                real_features = net.embed(aug(real))
            syn_features = net.embed(aug(factor_decode(engine.images(), factor)))
            proto, diversity, hist = dsdm_terms(real_features, syn_features, recalled(memory, engine.state, m), classes)
            loss = proto + lambda_div * diversity + lambda_hist * hist
        engine.update(loss)
        with torch.no_grad(), engine.autocast():
            prototypes = class_means(net.embed(factor_decode(engine.images(), factor)), classes).float()
        memorise(memory, engine.state, m, it, prototypes, ema)

    encoded, history, outputs = engine.run(settings["iterations"], step)
    return Synthetic(factor_decode(encoded, factor), init, history,
                     {"encoded": encoded.contiguous(), "factor": factor, "pool_net": net_name, **outputs})


METHOD = Method("dsdm", group="pool", family=None, run=run, engine=True, keys={
    "iterations": Int(low=1),
    "batch_real": Int(low=1),
    "lr": Float(above=0),
    "momentum": Float(low=0, high=1),
    "lambda_diversity": Float(low=0),
    "lambda_history": Float(low=0),
    "ema": Float(low=0, high=1),
    "factor": Int(low=1),
    "memory": Str(*MEMORIES),
    "augment": BOOL,
    "siamese": BOOL,
    "flip": AUTO_BOOL,                # auto: the prepared dataset's default (resolved by the distill run)
})
