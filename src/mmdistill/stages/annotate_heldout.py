"""annotate_test: tags, instances, captions and caption features of the TEST split, for caption_concat

    python -m mmdistill.stages.annotate_heldout

caption_concat's classifier needs a caption embedding for every test image. This stage runs the same
code and the same params as the stages tag, ground, caption and embed_text (same backends, settings
and text encoder) on the test split only, writing under its own paths so that the pipeline's
train/val annotations are untouched:

  data/annotations_test/{tags,instances,captions}.parquet   schemas as data/annotations/ (see tag.py,
                                                             ground.py, caption.py)
  data/annotation_cache_test/{tag,ground,caption}/          its own content-addressed cache
  data/features_test/caption/                                caption features as data/features/caption,
                                                             `label` -1

No label reaches it: `label` reads as -1 and `class_name` as "" for every test image (the target's
`hide_labels`, stages/annotate.py), so no caption of the test split can name its class. No sample figure is drawn.
"""
from __future__ import annotations

from mmdistill.annotate import captions as caption
from mmdistill.annotate import grounding as ground
from mmdistill.annotate import tags as tag
from mmdistill.annotate.cache import AnnotationTarget, load_annotation_input
from mmdistill.core.config import load_params, positive
from mmdistill.core.paths import (
    ANNOTATION_CACHE_HELDOUT,
    ANNOTATIONS_HELDOUT,
    FEATURES_HELDOUT,
)
from mmdistill.core.runtime import resolve_device
from mmdistill.stages import run_stage
from mmdistill.embed.features import TEXT_ENCODERS, build_encoder, embed_captions

TEST = AnnotationTarget(splits=("test",), annotations=ANNOTATIONS_HELDOUT, cache_root=ANNOTATION_CACHE_HELDOUT, hide_labels=True)


def main() -> None:
    params = load_params()
    tag.run(TEST)
    ground.run(TEST)
    caption.run(figure=None, target=TEST)
    table = load_annotation_input(("uid", "label"), TEST)
    name, encoder = build_encoder(params, "embed.text_encoder", TEXT_ENCODERS, resolve_device(params))
    batch_size = positive(params, "embed.batch_size")
    uids = embed_captions(encoder, name, {"batch_size": batch_size} | encoder.settings,
                          dict(zip(table["uid"].to_pylist(), table["label"].to_pylist())), batch_size,
                          positive(params, "embed.rows_per_shard"), root=FEATURES_HELDOUT, target=TEST)
    print(f"annotate_test: {table.num_rows} test images, {len(uids)} captions -> {FEATURES_HELDOUT}/caption")


if __name__ == "__main__":
    run_stage(main)
