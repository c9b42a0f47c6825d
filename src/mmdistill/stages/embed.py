"""embed: features of images, masked instances, captions and descriptions -> data/features/

    python -m mmdistill.stages.embed --modality image   # DVC stage embed_image: image, instance
    python -m mmdistill.stages.embed --modality text    # DVC stage embed_text: caption, description

For each kind in (image, instance, caption, description):
`data/features/<kind>/index.parquet` is the index (one row per feature vector) and
`data/features/<kind>/vectors-NNNNN.npy` are float16 shards, L2-normalised, row-aligned
with the index (row r of the index is row r of the concatenated shards).
The two modalities are separate DVC stages, so a caption change never re-encodes images.

| kind        | index columns            | encoder              | what is encoded                       |
|-------------|--------------------------|----------------------|---------------------------------------|
| image       | uid, label               | embed.image_encoder  | the whole image                       |
| instance    | uid, label, instance_id  | embed.image_encoder  | the image with all but the mask zeroed|
| caption     | uid, label, instance_id  | embed.text_encoder   | caption text (instance_id -1 = image) |
| description | uid, label               | embed.text_encoder   | description text                      |

Every index records `{"encoder": name, "settings": {..., "space": ...}, "dim": d}` in its metadata;
two kinds are in one joint space when their `settings.space` strings are equal.

Encoders (`embed.image_encoder`, `embed.text_encoder`):
  efficientnet_lite0  image only: ImageNet-pretrained EfficientNet-Lite0, pooled 1280-d (the offline default)
  minilm              text only: all-MiniLM-L6-v2, 384-d (the offline default); not in one space with images
  open_clip           `embed.open_clip.model` (a built-in name such as ViT-B-32, or local-dir:/path holding
                      open_clip_config.json + weights: .safetensors/.bin/.pth, or a .pt state dict) and `embed.open_clip.pretrained` (a tag whose weights
                      are in the Hugging Face cache, or a checkpoint file); images and texts in CLIP's space
  hf_clip             transformers CLIPModel + CLIPProcessor from `embed.hf_clip.model` (hub id in the local
                      cache, or a folder saved with save_pretrained)
Set both encoders to the same CLIP to get one joint space. Weights that cannot be found are an error,
never random weights.

`embed.engine: ray` encodes on Ray Data actors (`embed.ray`: address, actors, cpus_per_actor, gpus_per_actor, as
`annotate.ray`) instead of in this process, with the same features (mmdistill.embed.features.encode_jobs).
"""
from __future__ import annotations

from mmdistill.core.config import load_params, positive
from mmdistill.core.runtime import resolve_device
from mmdistill.embed.features import embed_images, embed_texts
from mmdistill.stages import ArgumentParser, run_stage


def main() -> None:
    parser = ArgumentParser(description="embed images or texts")
    parser.add_argument("--modality", required=True, choices=("image", "text"))
    args = parser.parse_args()
    params = load_params()
    resolve_device(params)  # a bad device is an error before anything loads
    batch_size = positive(params, "embed.batch_size")
    rows_per_shard = positive(params, "embed.rows_per_shard")
    run = embed_images if args.modality == "image" else embed_texts
    print("embedded " + run(params, batch_size, rows_per_shard))


if __name__ == "__main__":
    run_stage(main)
