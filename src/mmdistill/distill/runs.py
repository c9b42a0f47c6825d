"""The names of distillation runs: `{method}-ipc{K}`, or `{method}-latent-ipc{K}` for a latent run."""
from __future__ import annotations

from mmdistill.core.config import int_list, param


def run_name(method: str, ipc: int, latent: bool = False) -> str:
    return f"{method}{'-latent' if latent else ''}-ipc{ipc}"


def enabled_runs(params: dict) -> list[tuple[str, int, bool]]:
    """(method, ipc, latent) of every run the params enable, in the order of the `distill.methods` groups."""
    groups = param(params, "distill.methods", dict)
    ipcs = int_list(params, "distill.ipcs")
    return [(method, ipc, group == "latent") for group, methods in groups.items() for method in methods
            for ipc in ipcs]
