"""The Ray engine (Ray Data actors over cache shards) against the local one, on a local Ray instance."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import run_stage, set_params


@pytest.mark.slow
def test_local_and_ray_engines_write_identical_rows(project):
    ray = pytest.importorskip("ray")
    torch.set_num_threads(1)  # as in a Ray actor with one CPU: CPU float sums depend on the thread count
    set_params(project, **{"prepare.max_train_per_class": 3, "prepare.val_per_class": 1,
                           "annotate.shard_size": 8, "annotate.ray.actors": 2})
    run_stage("prepare")
    outputs = {}
    for engine in ("local", "ray"):
        shutil.rmtree(project / "data/annotation_cache", ignore_errors=True)
        set_params(project, **{"annotate.engine": engine})
        for module in ("tag", "ground"):
            run_stage(module)
        cache = project / "data/annotation_cache"
        outputs[engine] = {str(p.relative_to(project)): p.read_bytes()
                           for p in sorted((project / "data/annotations").glob("*.parquet"))}
        outputs[engine]["shards"] = sorted(str(p.relative_to(cache)) for p in cache.rglob("shard-*.parquet"))
    ray.shutdown()
    assert len(outputs["local"]["shards"]) == 2 * 5  # 40 images in shards of 8, for tag and for ground
    assert outputs["local"] == outputs["ray"]
