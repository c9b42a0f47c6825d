"""Ray Data actor pools for the stages that map a model over many inputs: the annotation stages (cache shards,
`annotate.engine: ray`) and the embed stages (batches of images or texts, `embed.engine: ray`).

A worker is a class whose constructor loads the model once and whose `run(item)` handles one item; the local engine
builds one and calls `run` on each item, the Ray engine builds one per actor. Settings (`<prefix>.*`, schema
RAY_KEYS): `address` ("" = start a local Ray instance with actors x cpus_per_actor CPUs; else a cluster address such
as `auto`, whose nodes must see the project's files and this package at the same paths), `actors`,
`cpus_per_actor`, `gpus_per_actor` (e.g. 1, or 0.5 to put two actors on a GPU).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from mmdistill.core.config import Float, Int, Str, param, positive


def ray_keys() -> dict:
    """The schema of a `ray` block (annotate.ray, embed.ray)."""
    return {"address": Str(), "actors": Int(low=1), "cpus_per_actor": Float(above=0), "gpus_per_actor": Float(low=0)}


class _Actor:
    """A Ray Data map_batches actor around a worker: one pickled item per row, one pickled result back."""

    def __init__(self, worker_class, worker_args: tuple):
        self.worker = worker_class(*worker_args)

    def __call__(self, batch: dict) -> dict:
        return {"index": batch["index"], "result": [pickle.dumps(self.worker.run(pickle.loads(blob)))
                                                    for blob in batch["item"]]}


def run_on_actors(params: dict, prefix: str, worker_class, worker_args: tuple, items: list) -> list:
    """`worker_class(*worker_args).run(item)` for every item, on the actor pool of params `<prefix>` -> the results
    in item order."""
    import ray
    address = param(params, f"{prefix}.address", str) or None
    actors = positive(params, f"{prefix}.actors")
    cpus = param(params, f"{prefix}.cpus_per_actor", (int, float))
    if not ray.is_initialized():
        code = str(Path(__file__).resolve().parents[2])  # the actors import this package from where the driver did
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([code, os.getcwd()])}},
                 **({} if address else {"num_cpus": actors * cpus}))
    rows = [{"index": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]
    ds = ray.data.from_items(rows).map_batches(
        _Actor, fn_constructor_args=(worker_class, worker_args), batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        num_gpus=param(params, f"{prefix}.gpus_per_actor", (int, float)))
    return [pickle.loads(row["result"]) for row in sorted(ds.take_all(), key=lambda row: row["index"])]
