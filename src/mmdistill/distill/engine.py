"""The distillation engine shared by every optimising method (methods/ with `engine=True`).

It owns what the methods have in common: the synthetic set and its SGD optimiser, the real
batches (one per class, drawn from a checkpointed generator), device placement and optional
bf16 (CUDA or CPU) / fp16 (CUDA) autocast, a DVCLive loss curve and a grid of the synthetic images
every N iterations under `outputs/distill/{run}/`, and checkpoints every N iterations under
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

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmdistill.core.config import param, positive
from mmdistill.core.paths import checkpoint, distill_log, run_name
from mmdistill.core.storage import (
    PipelineError,
    load_tensors,
    save_figure,
    save_tensors,
)
from mmdistill.data.datasets import ImageSet, denormalize
from mmdistill.nn.augment import DifferentiableAugment
from mmdistill.nn.vae import Pixels, latent_space

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    def augmentation(self):
        """DSA (`augment`, with `flip`) as f(images, seed), or the identity."""
        if self.settings["augment"]:
            return DifferentiableAugment(flip=self.settings["flip"])
        return lambda x, seed: x


class Engine:
    def __init__(self, run: Run, syn: torch.Tensor):
        """The optimiser of `syn` (the initial synthetic images, normalised) for `run`."""
        self.name, self.device, self.seed, self.resume = run.name, run.device, run.seed, run.resume
        self.show = _show(run.train, run.name)
        params = run.params
        precision = param(params, "distill.engine.precision", str, choices=tuple(PRECISIONS))
        self.dtype = PRECISIONS[precision]
        if precision == "fp16" and self.device.type != "cuda":
            raise PipelineError(f"param 'distill.engine.precision' = {precision} needs a CUDA device "
                                f"(device is {self.device}); use fp32, or bf16 (CPU autocast)")
        self.checkpoint_every = positive(params, "distill.engine.checkpoint_every", int)
        self.log_every = positive(params, "distill.engine.log_every", int)
        self.grid_every = positive(params, "distill.engine.grid_every", int)
        self.compile_backend = param(params, "distill.engine.compile", str,
                                     choices=("", *torch.compiler.list_backends(exclude_tags=())))
        self.parameterisation = latent_space(params, run.method, self.device) if run.latent else Pixels()
        self.syn = self.parameterisation.encode(syn.to(self.device)).clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=run.settings["lr"], momentum=run.settings["momentum"])
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.gen = torch.Generator().manual_seed(self.seed)
        self.state: dict[str, torch.Tensor] = {}  # a method's own tensors that live across iterations
        self.history: list[float] = []
        settings = dict(run.settings)
        settings.pop("iterations", None)  # a resumed run may be extended
        self.fingerprint = {"name": self.name, "seed": self.seed, "precision": precision, "settings": settings,
                            **self.parameterisation.fingerprint,
                            **({"compile": self.compile_backend} if self.compile_backend else {})}
        self._losses: list[float] = []

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def compiled(self, net):
        """`net` with `net.embed` wrapped by torch.compile when `distill.engine.compile` names a backend."""
        if self.compile_backend:
            net.embed = torch.compile(net.embed, backend=self.compile_backend)
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

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step of the synthetic set on `loss`."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self._losses.append(loss.item())

    def run(self, iterations: int, step) -> tuple[torch.Tensor, list[float], dict]:
        """Run `step` for the remaining iterations -> (the final images on the CPU, the loss history, the
        parameterisation's extra outputs, e.g. the latents)."""
        start = self._load_checkpoint(iterations) if self.resume else 0
        live = _live()(dir=str(distill_log(self.name)), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        for it in tqdm(range(start, iterations), desc=self.name, initial=start, total=iterations, mininterval=2):
            torch.manual_seed(self.seed * 100003 + it)
            self._losses = []
            step(it)
            self.history.append(float(np.mean(self._losses)))
            done = it + 1
            if done % self.log_every == 0 or done == iterations:
                live.step = it
                live.log_metric("loss", self.history[-1])
                live.next_step()
            if done % self.grid_every == 0 and self.show is not None:
                self.show(self.images(detach=True).cpu(), Path(live.plots_dir) / "grids" / f"{done:06d}.png")
            if done % self.checkpoint_every == 0 or done == iterations:
                self._save_checkpoint(done)
        live.end()
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
        if ckpt["fingerprint"] != self.fingerprint:
            raise PipelineError(f"{path} was written with other settings ({ckpt['fingerprint']}); now "
                                f"{self.fingerprint}. Delete it or run without --resume")
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


def _live():
    """DVCLive's logger without its DVC/Git integration: we only want the loss files.

    DVCLive 3 has no public switch for this: with `save_dvc_exp=False, dvcyaml=None` (or False) its
    constructor still opens the repository, which runs `dvc init` in a plain Git repository and
    raises "Empty git repo" in a Git repository with no commits (as tests/test_pipeline.py runs
    `dvc repro`). So the hook that opens it is replaced (tests/test_engine.py checks both cases)."""
    from dvclive import Live

    class LossLog(Live):
        def _init_dvc(self):
            self._dvc_file = None

    return LossLog


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
