import numpy as np
import pytest

from mmdistill.annotate import grounding as ground
from mmdistill.annotate.cache import annotation_backend, read_annotations
from mmdistill.annotate.grounding import foreground
from mmdistill.core.storage import PipelineError
from mmdistill.data.datasets import load_foreground_masks
from mmdistill.embed.features import KINDS, feature_metadata, load_features
from tests.conftest import run_stage, set_params


def test_annotation_and_embedding_outputs(annotated):
    tags = read_annotations("tags")
    assert tags.num_rows == 120 and set(tags["backend"].to_pylist()) == {"offline_imagenet"}
    assert all(len(t) == 3 for t in tags["tags"].to_pylist())
    inst = read_annotations("instances")
    assert inst.column_names == ["uid", "instance_id", "box", "score", "phrase", "mask", "area", "backend"]
    assert inst.num_rows >= 100
    caps = read_annotations("captions")
    assert caps.num_rows == 120 + inst.num_rows
    assert read_annotations("descriptions").num_rows == 120
    assert annotation_backend("instances")["backend"] == "offline_threshold"
    for kind, dim in zip(KINDS, (1280, 1280, 384, 384)):
        index, vectors = load_features(kind)
        assert vectors.shape == (index.num_rows, dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)
    assert feature_metadata("caption")["encoder"] == "minilm"


def test_threshold_grounding_finds_planted_rectangle():
    gray = np.zeros((28, 28), np.uint8)
    gray[5:15, 8:20] = 220
    fg = foreground(gray)
    assert fg.sum() == 10 * 12 and fg[5:15, 8:20].all()
    rows = ground.ThresholdGrounder({"ground": {"min_area": 0.02, "max_instances": 3}}).instances(gray, ["shirt"])
    assert len(rows) == 1 and rows[0]["box"] == [8.0, 5.0, 20.0, 15.0] and rows[0]["phrase"] == "shirt"


@pytest.mark.parametrize("value", [0, 97, 255])
def test_threshold_grounding_flat_image_has_no_instances(value):
    gray = np.full((28, 28), value, np.uint8)            # an all-black (or any single-valued) tile
    assert not foreground(gray).any()
    rows = ground.ThresholdGrounder({"ground": {"min_area": 0.02, "max_instances": 3}}).instances(gray, ["tile"])
    assert rows == []


def test_foreground_masks_union(annotated):
    uids = read_annotations("instances", ["uid"])["uid"].to_pylist()[:3]
    masks = load_foreground_masks(uids + ["no-such-uid"], 28, 28)
    assert masks.shape == (4, 1, 28, 28)
    assert 0 < masks[0].mean() < 1 and masks[3].min() == 1


def test_unknown_backend_lists_valid(project):
    run_stage("prepare")
    set_params(project, **{"tag.backend": "ram_plus"})
    with pytest.raises(PipelineError, match="'tag.backend' = 'ram_plus' is not one of: clip, offline_imagenet, plugin"):
        run_stage("tag")


def test_bad_template_names_param(annotated):
    set_params(annotated, **{"caption.image_template": "a {colour} thing"})
    with pytest.raises(PipelineError, match="caption.image_template"):
        run_stage("caption")


def test_caption_change_rewrites_only_captions(annotated):
    before = (annotated / "data/annotations/instances.parquet").read_bytes()
    set_params(annotated, **{"caption.image_template": "picture of {class_name}"})
    run_stage("caption")
    run_stage("describe")
    assert read_annotations("captions")["caption"].to_pylist()[0].startswith("picture of ")
    assert (annotated / "data/annotations/instances.parquet").read_bytes() == before


def test_default_templates_keep_the_label_out_of_the_text():
    """The default offline caption and description templates must not write the ground-truth class name:
    image-text results would otherwise be a label in disguise."""
    import yaml
    from pathlib import Path

    from mmdistill.annotate.captions import TemplateCaptioner
    from mmdistill.annotate.descriptions import TemplateDescriber
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    record = {"image": np.zeros((28, 28), np.uint8), "class_name": "Sneaker", "tags": ["running shoe", "sandal"],
              "instances": [{"instance_id": 0, "phrase": "running shoe", "area": 0.3, "box": [2, 2, 20, 20]}]}
    captions = [row["caption"] for row in TemplateCaptioner(params).captions(record)]
    description = TemplateDescriber(params).describe(record["class_name"], record["tags"], captions[1:])
    assert "running shoe" in captions[0] and "running shoe" in description
    assert not any("sneaker" in text.lower() for text in captions + [description])
