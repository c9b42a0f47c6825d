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


@pytest.mark.slow
def test_local_and_ray_engines_embed_the_same_features(annotated):
    """embed.engine ray (2 actors, batches of 16): image and instance features byte-identical to the local engine's
    (the same batches, one thread each); caption and description features (all-MiniLM-L6-v2, which regroups a batch
    by length itself) equal to float16 rounding."""
    ray = pytest.importorskip("ray")
    import numpy as np

    from mmdistill.embed.features import KINDS, load_features
    torch.set_num_threads(1)
    set_params(annotated, **{"embed.batch_size": 16, "embed.ray.actors": 2})
    features = {}
    for engine in ("local", "ray"):
        set_params(annotated, **{"embed.engine": engine})
        run_stage("embed", "--modality", "image")
        run_stage("embed", "--modality", "text")
        features[engine] = {kind: load_features(kind) for kind in KINDS}
        features[engine]["bytes"] = {str(p.relative_to(annotated)): p.read_bytes() for kind in ("image", "instance")
                                     for p in sorted((annotated / "data/features" / kind).iterdir())}
    ray.shutdown()
    local, remote = features["local"], features["ray"]
    assert local["bytes"] == remote["bytes"]
    assert len(local["instance"][1]) > 16 and len(local["image"][1]) > 16  # more than one batch each
    for kind in ("caption", "description"):
        (local_index, local_vectors), (ray_index, ray_vectors) = local[kind], remote[kind]
        assert local_index.equals(ray_index) and local_vectors.shape == ray_vectors.shape
        assert np.abs(local_vectors - ray_vectors).max() <= 2e-3  # a float16 step of a unit vector's entries
    assert len(set(local["caption"][0]["uid"].to_pylist())) > 16
