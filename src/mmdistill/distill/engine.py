"""The distillation engine shared by every optimising method (methods/ with `engine=True`).

It owns what the methods have in common: the synthetic set and its SGD optimiser, the real
batches (one per class, drawn from a checkpointed generator), device placement and optional
bf16 (CUDA or CPU) / fp16 (CUDA) autocast, a loss curve (`outputs/plots/loss/{run}.tsv`, see LossLog) and a grid of
the synthetic images every N iterations under `outputs/distill/{run}/`, and checkpoints every N iterations under
`data/checkpoints/{run}.pt` that `--resume` continues from with the same output bytes as an
uninterrupted run ({run} = {method}-ipc{K} or {method}-latent-ipc{K}, core.paths.run_name). A method
only supplies `step(iteration)`, which computes its loss on `engine.images()` and calls
`engine.update(loss)` (once, or several times as DC's outer loop does).

The optimised tensor `engine.syn` is the normalised pixels, or for a latent run (`--latent`) the
latents of a frozen AutoencoderKL (`distill.latent`, mmdistill.nn.vae) that `engine.images()`
decodes; `run` returns the final images decoded from it.

Settings (`distill.engine` in params.yaml): precision fp32|bf16|fp16 (autocast; fp16 needs CUDA, bf16
also runs on CPU), checkpoint_every, log_every and grid_every (iterations), compile ("" or a
torch.compile backend for the embedding networks of dm, masked_dm and dsdm). The optimiser's `lr` and
`momentum` are the run's settings (`Run.settings`).

Randomness: the global torch RNG is re-seeded at the start of every iteration from (seed, iteration)
(network initialisation), and batches/augmentation seeds come from `engine.gen`, whose state is in
the checkpoint; so iteration t draws the same numbers whether or not the run was resumed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmdistill.core.config import param, positive
from mmdistill.core.paths import LOSS_CURVES, checkpoint, distill_log, run_name
from mmdistill.core.runtime import autocast_of, compile_backend_of
from mmdistill.core.storage import (
    PipelineError,
    load_tensors,
    save_figure,
    save_tensors,
    save_text,
)
from mmdistill.data.datasets import ImageSet, denormalize, resolve_flip
from mmdistill.distill import distributed
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.augment import from_params as augment_from_params
from mmdistill.nn.vae import Pixels, latent_space

class RealBatches:
    """Class-balanced batches of normalised real train images, class-major."""

    def __init__(self, train: ImageSet, batch_real: int, key: str):
        self.images = train.normalized()
        self.classes = len(train.class_names)
        labels = train.labels.numpy()
        self.by_class = [torch.from_numpy(np.flatnonzero(labels == c)) for c in range(self.classes)]
        for c, members in enumerate(self.by_class):
            if len(members) < batch_real:
                raise PipelineError(f"param '{key}' = {batch_real} is larger than class "
                                    f"'{train.class_names[c]}' ({len(members)} train images)")
        self.batch_real = batch_real

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """Indices of `batch_real` random images of each class, class-major."""
        return torch.cat([m[torch.randperm(len(m), generator=gen)[:self.batch_real]] for m in self.by_class])


class _Embed(nn.Module):
    """`net.embed` as a forward, so that torch.compile compiles a module instead of a patched attribute."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


class CompiledEmbedding(nn.Module):
    """A network whose `embed` is compiled by torch.compile (`backend`); `forward` and the parameters are the
    network's own (shared, not copied)."""

    def __init__(self, net: nn.Module, backend: str):
        super().__init__()
        self.net = net
        self.compiled_embed = torch.compile(_Embed(net), backend=backend)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled_embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


@dataclass(frozen=True)
class Run:
    """One distillation run, as the distill stage hands it to a method's run function."""
    method: str
    ipc: int
    latent: bool          # optimise latents of a VAE (`--latent`) instead of pixels
    settings: dict        # mmdistill.distill.methods.resolve: the family block overlaid with the method's
    where: dict           # the params.yaml key each setting came from, for messages
    params: dict          # the whole params (distill.engine, distill.latent, seed, ...)
    train: ImageSet
    device: torch.device
    seed: int
    resume: bool

    @property
    def name(self) -> str:
        """`{method}-ipc{K}` or `{method}-latent-ipc{K}`: the output, checkpoint and loss-log name."""
        return run_name(self.method, self.ipc, self.latent)

    @property
    def classes(self) -> int:
        return len(self.train.class_names)

    def real_batches(self) -> "RealBatches":
        return RealBatches(self.train, self.settings["batch_real"], self.where["batch_real"])

    def augmentation(self) -> "PairedAugment":
        """DSA (`augment`, with `flip`: true, false or auto = the prepared dataset's default; the form of params `dsa`)
        as the loops apply it to real and synthetic batches (`siamese`), or the identity."""
        dsa = None
        if self.settings["augment"]:
            dsa = augment_from_params(self.params, resolve_flip(self.settings["flip"], self.where["flip"]))
        return PairedAugment(dsa, self.settings["siamese"])


class PairedAugment:
    """DSA in a matching loop. `draw(gen, classes)` -> f(class-major batch) that transforms a real batch and the
    synthetic set alike: with `siamese`, each class gets one transform of its own (DSA: a class's real and synthetic
    images share the sampled transform); without, one seed over the whole batch with per-image parameters (the
    earlier form, which pairs no class's real and synthetic images). Called as f(x, seed), it augments per image
    (DC's network training on the synthetic set). `dsa` None: the identity."""

    def __init__(self, dsa: DifferentiableAugment | None, siamese: bool):
        self.dsa, self.siamese = dsa, siamese

    def draw(self, gen: torch.Generator, classes: int):
        if self.dsa is None or not self.siamese:
            seed = draw_seed(gen)
            return lambda x: self(x, seed)
        seeds = [draw_seed(gen) for _ in range(classes)]
        return lambda x: self.dsa.per_class(x, seeds)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return x if self.dsa is None else self.dsa(x, seed)


def digest(obj) -> str:
    """SHA-256 of tensors, arrays, strings and numbers, nested in dicts/lists (dtype, shape and bytes of each
    tensor): the identity of a run's inputs in its checkpoint fingerprint."""
    hasher = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            hasher.update(f"tensor {x.dtype} {tuple(x.shape)};".encode())
            hasher.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
        elif isinstance(x, np.ndarray):
            hasher.update(f"array {x.dtype} {x.shape};".encode())
            hasher.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            hasher.update(f"dict {len(x)};".encode())
            for k in x:
                feed(str(k))
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            hasher.update(f"list {len(x)};".encode())
            for v in x:
                feed(v)
        else:
            hasher.update(f"{type(x).__name__} {x!r};".encode())

    feed(obj)
    return hasher.hexdigest()


class Engine:
    def __init__(self, run: Run, syn: torch.Tensor, inputs: dict | None = None):
        """The optimiser of `syn` (the initial synthetic images, normalised) for `run`. `inputs`: what else the
        method reads (masks, a network pool, caption targets), named; hashed into the checkpoint fingerprint with the
        train split and `syn`, so that `--resume` refuses a checkpoint made from other data."""
        self.name, self.device, self.seed, self.resume = run.name, run.device, run.seed, run.resume
        self.show = _show(run.train, run.name)
        params = run.params
        precision, self.dtype, self.autocast = autocast_of(params, "distill.engine.precision", self.device)
        self.checkpoint_every = positive(params, "distill.engine.checkpoint_every", int)
        self.log_every = positive(params, "distill.engine.log_every", int)
        self.grid_every = positive(params, "distill.engine.grid_every", int)
        self.compile_backend = compile_backend_of(params, "distill.engine.compile", self.device)
        self.parameterisation = latent_space(params, run.method, self.device) if run.latent else Pixels()
        self.syn = self.parameterisation.encode(syn.to(self.device)).clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=run.settings["lr"], momentum=run.settings["momentum"])
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.gen = torch.Generator().manual_seed(self.seed)
        self.state: dict[str, torch.Tensor] = {}  # a method's own tensors that live across iterations
        self.history: list[float] = []
        settings = dict(run.settings)
        settings.pop("iterations", None)  # a resumed run may be extended
        train = run.train
        data = {"train": digest([train.uids, train.labels, train.images, train.class_names, train.mean, train.std]),
                "initial": digest(syn), **{name: digest(value) for name, value in sorted((inputs or {}).items())}}
        self.fingerprint = {"name": self.name, "seed": self.seed, "precision": precision, "settings": settings,
                            **self.parameterisation.fingerprint,
                            **({"compile": self.compile_backend} if self.compile_backend else {}), "inputs": data}
        self._losses: list[float] = []
        self.iteration = 0
        self.lr_key = run.where.get("lr", "lr")

    def compiled(self, net):
        """`net` itself, or with `distill.engine.compile` naming a backend, a module whose `embed` runs `net.embed`
        through torch.compile (`net` is not modified: it is compiled as the forward of a wrapper module)."""
        if self.compile_backend:
            return CompiledEmbedding(net, self.compile_backend)
        return net

    def refuse_compile(self, why: str) -> None:
        if self.compile_backend:
            raise PipelineError(f"param 'distill.engine.compile' = {self.compile_backend!r}: {why}; set it to ''")

    def images(self, detach: bool = False) -> torch.Tensor:
        """The synthetic images the losses see: `syn` decoded (pixels: `syn` itself)."""
        if detach:
            with torch.no_grad():
                return self.parameterisation.decode(self.syn).detach()
        return self.parameterisation.decode(self.syn)

    def update(self, loss: torch.Tensor, shared: bool = False) -> None:
        """One optimiser step of the synthetic set on `loss`. `shared`: under torchrun, `loss` is this process's
        share of a sum over processes (gradient matching's classes), so the loss and the gradient of the synthetic
        set are summed over the processes before the step."""
        value = (distributed.sum_across_ranks(loss.detach().float().clone()) if shared else loss).item()
        if not math.isfinite(value):  # a diverged run (lr too large) or NaN in an input: stop, write nothing more
            raise PipelineError(f"distill {self.name}: the loss is {value} at iteration {self.iteration}; the run is "
                                f"stopped (diverged: lower param '{self.lr_key}', or an input holds NaN) and its "
                                "set is not written")
        self.opt.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if shared:
            distributed.sum_across_ranks(self.syn.grad)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self._losses.append(value)

    def run(self, iterations: int, step) -> tuple[torch.Tensor, list[float], dict]:
        """Run `step` for the remaining iterations -> (the final images on the CPU, the loss history, the
        parameterisation's extra outputs, e.g. the latents)."""
        start = self._load_checkpoint(iterations) if self.resume else 0
        writes = distributed.writes()  # under torchrun, rank 0 alone writes the curve, grids and checkpoints
        log = LossLog(distill_log(self.name), start) if writes else None
        # the bar as a context: an error closes it (a newline), so the error's one line stands on its own
        with tqdm(range(start, iterations), desc=self.name, initial=start, total=iterations, mininterval=2) as bar:
            for it in bar:
                torch.manual_seed(self.seed * 100003 + it)
                self.iteration = it
                self._losses = []
                step(it)
                self.history.append(float(np.mean(self._losses)))
                done = it + 1
                if not writes:
                    continue
                if done % self.log_every == 0 or done == iterations:
                    log.log(it, self.history[-1])
                if done % self.grid_every == 0 and self.show is not None:
                    self.show(self.images(detach=True).cpu(), log.grids / f"{done:06d}.png")
                if done % self.checkpoint_every == 0 or done == iterations:
                    self._save_checkpoint(done)
        if not bool(torch.isfinite(self.syn.detach()).all()):
            raise PipelineError(f"distill {self.name}: the synthetic set holds NaN or inf after iteration "
                                f"{iterations - 1}; the run is stopped (diverged: lower param '{self.lr_key}') and "
                                "its set is not written")
        return self.parameterisation.final(self.syn.detach()), self.history, self.parameterisation.outputs(self.syn)

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint(self.name)

    def _save_checkpoint(self, done: int) -> None:
        save_tensors({"iteration": done, "syn": self.syn.detach().cpu(), "optimizer": self.opt.state_dict(),
                      "generator": self.gen.get_state(), "history": list(self.history),
                      "state": {k: v.detach().cpu() for k, v in self.state.items()},
                      "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                      "fingerprint": self.fingerprint}, self.checkpoint_path)

    def _load_checkpoint(self, iterations: int) -> int:
        path = self.checkpoint_path
        if not path.exists():
            print(f"--resume: no checkpoint at {path}, starting from iteration 0")
            return 0
        ckpt = load_tensors(path)
        saved = dict(ckpt.get("fingerprint", {}))
        saved_inputs, inputs = saved.pop("inputs", None), self.fingerprint["inputs"]
        now = {k: v for k, v in self.fingerprint.items() if k != "inputs"}
        if saved != now:
            changed = sorted(k for k in {**saved, **now} if saved.get(k) != now.get(k))
            raise PipelineError(f"{path} was written with other settings ({', '.join(changed)}: "
                                f"{ {k: saved.get(k) for k in changed} }; now { {k: now.get(k) for k in changed} }). "
                                "Delete it or run without --resume")
        if saved_inputs is None:
            raise PipelineError(f"{path} records no hashes of its input data (an older checkpoint), so it cannot be "
                                "checked against today's: delete it or run without --resume")
        other = [name for name in inputs if saved_inputs.get(name) != inputs[name]]
        if other or set(saved_inputs) != set(inputs):
            what = {"train": "the prepared train split (data/prepared)", "initial": "the initial images"}
            names = other or sorted(set(saved_inputs) ^ set(inputs))
            raise PipelineError(f"{path} was made from other data ({', '.join(what.get(n, n) for n in names)} "
                                "changed since): delete it or run without --resume")
        if ckpt["iteration"] > iterations:
            raise PipelineError(f"{path} is at iteration {ckpt['iteration']}, beyond the {iterations} "
                                f"iterations in params")
        with torch.no_grad():
            self.syn.copy_(ckpt["syn"].to(self.device))
        self.opt.load_state_dict(ckpt["optimizer"])
        self.gen.set_state(ckpt["generator"])
        self.history = list(ckpt["history"])
        self.state = {k: v.to(self.device) for k, v in ckpt["state"].items()}
        if self.scaler is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        print(f"--resume: continuing {self.name} from iteration {ckpt['iteration']} ({path})")
        return ckpt["iteration"]


def _show(train: ImageSet, name: str):
    """The engine's grid callback: synthetic images (one row per class) at an iteration."""
    classes = len(train.class_names)

    def show(images, path):
        labels = torch.arange(classes).repeat_interleave(len(images) // classes)
        save_grid(images, labels, train.class_names, train.mean, train.std, path, f"{name}, {path.stem}")
    return show


class LossLog:
    """A run's loss curve, which `dvc plots` reads (dvc.yaml's top-level `plots`): `outputs/plots/loss/{run}.tsv`
    (header `step<TAB>loss`, one row per logged iteration; a DVC output of the run's stage, in git) and
    `{dir}/metrics.json` (the last row: {"loss": .., "step": ..}); grids of the synthetic set go to
    `{dir}/plots/grids/`.

    Written here rather than by `dvclive.Live`: DVCLive 3.49's public constructor always opens the
    repository (even with `save_dvc_exp=False, dvcyaml=None`), which runs `dvc init` in a plain Git
    repository and raises "Empty git repo" in one with no commits, e.g. on the first `dvc repro` after
    `git init && dvc init` (tests/test_engine.py checks both). The files are byte-for-byte what
    `Live(resume=...)` with `log_metric("loss", ...)` / `next_step()` wrote, except that a resumed run first drops
    rows at or after its checkpoint (logged by the interrupted run after its last checkpoint; DVCLive kept them
    twice)."""

    def __init__(self, directory: Path, start: int):
        """`start`: the iteration the run starts from (0: a fresh run, whose old curve is removed)."""
        self.tsv = LOSS_CURVES / f"{directory.name}.tsv"
        self.summary = directory / "metrics.json"
        self.grids = directory / "plots" / "grids"
        self.fresh = start == 0  # the old curve is removed by the first row logged (a run failing before keeps it)
        if start > 0 and self.tsv.exists():
            header, *rows = self.tsv.read_text().splitlines()
            kept = [row for row in rows if int(row.split("\t")[0]) < start]
            if kept != rows:
                save_text("".join(f"{line}\n" for line in [header, *kept]), self.tsv)

    def log(self, step: int, loss: float) -> None:
        value = loss if math.isfinite(loss) else str(loss)  # as DVCLive: nan/inf as text
        if self.fresh:
            self.tsv.unlink(missing_ok=True)
            self.summary.unlink(missing_ok=True)
            self.fresh = False
        new = not self.tsv.exists()
        self.tsv.parent.mkdir(parents=True, exist_ok=True)
        with open(self.tsv, "a", encoding="utf-8") as f:
            f.write(("step\tloss\n" if new else "") + f"{step}\t{value}\n")
        save_text(json.dumps({"loss": value, "step": step}, indent=4) + "\n", self.summary)


def save_grid(images: torch.Tensor, labels: torch.Tensor, class_names, mean, std, path: Path, title: str):
    """One row per class, up to 10 images each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = len(class_names)
    ipc = len(labels) // classes
    cols = min(ipc, 10)
    pixels = denormalize(images, mean, std).permute(0, 2, 3, 1).numpy()
    fig, axes = plt.subplots(classes, cols, figsize=(cols * 0.9 + 1.5, classes * 0.9), squeeze=False)
    for c in range(classes):
        for j in range(cols):
            ax = axes[c, j]
            img = pixels[c * ipc + j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)
