"""The annotation cache as a persistent DVC output: repro semantics, partial re-runs, push and pull."""
import re
import shutil

import pytest

from tests.conftest import set_params
from tests.test_pipeline import ran, sh

pytestmark = pytest.mark.slow


def annotated_counts(output: str, stage: str) -> tuple[int, int]:
    found = re.findall(rf"{stage} \(\w+\): (\d+) images annotated, (\d+) from the cache", output)
    assert found, output[-2000:]
    return tuple(map(int, found[-1]))


def test_annotation_cache_through_dvc(project, tmp_path):
    set_params(project, **{"prepare.max_train_per_class": 2, "prepare.val_per_class": 1})
    (project / ".gitignore").write_text("/data/\n__pycache__/\n")
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    out = sh(project, "dvc", "repro", "describe")
    assert ran(out) == {"prepare", "tag", "ground", "caption", "describe"}
    assert annotated_counts(out, "caption") == (30, 0)
    assert ran(sh(project, "dvc", "repro", "describe")) == set()

    set_params(project, **{"caption.image_template": "an image of a {class_name}"})
    out = sh(project, "dvc", "repro", "describe")
    assert ran(out) == {"caption", "describe"} and annotated_counts(out, "caption") == (30, 0)
    assert len(list((project / "data/annotation_cache/caption").iterdir())) == 2  # persist: the old one stays

    set_params(project, **{"caption.image_template": "a photo showing {tags}"})
    out = sh(project, "dvc", "repro", "describe")  # back to the first settings: from the cache
    assert ran(out) == {"caption", "describe"} and annotated_counts(out, "caption") == (0, 30)

    remote = tmp_path / "remote"
    sh(project, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "annotations")
    sh(project, "dvc", "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull", "--with-deps", "describe")
    assert "up to date" in sh(clone, "dvc", "status", "--with-deps", "describe")
    set_params(clone, **{"caption.image_template": "an image of a {class_name}"})
    out = sh(clone, "dvc", "repro", "describe")  # computed before and pushed: the colleague computes nothing
    assert ran(out) == {"caption", "describe"} and annotated_counts(out, "caption") == (0, 30)
    shutil.rmtree(clone)
