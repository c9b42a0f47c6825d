"""Real CLIP encoders in `embed`: tiny random-weight open_clip and transformers CLIP models are saved to
disk and loaded through the user's path (params), then checked against the models run directly."""
import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from mmdistill.annotate.cache import read_annotations
from mmdistill.core.storage import PipelineError
from mmdistill.embed.features import HFClip, OpenClip, feature_metadata, load_features
from tests.conftest import run_stage, set_params

torch.set_num_threads(1)
TINY_OPEN_CLIP = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    """local-dir layout of open_clip: open_clip_config.json + open_clip_pytorch_model.bin."""
    import open_clip
    folder = tmp_path_factory.mktemp("open_clip_tiny")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A transformers CLIPModel + CLIPProcessor saved with save_pretrained; the tokenizer is CLIP's BPE,
    written from the vocabulary file open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )
    folder = tmp_path_factory.mktemp("hf_clip_tiny")
    merges = [tuple(m.split()) for m in gzip.open(default_bpe()).read().decode().split("\n")[1:49152 - 256 - 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=77),
                        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def check_features(encoder, dim: int):
    """All four kinds written, unit norm, one joint space, and equal to the model run directly."""
    for kind in ("image", "instance", "caption", "description"):
        index, vectors = load_features(kind)
        assert vectors.shape == (index.num_rows, dim) and index.num_rows > 0
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)
    spaces = {feature_metadata(k)["settings"]["space"] for k in ("image", "instance", "caption", "description")}
    assert len(spaces) == 1
    from mmdistill.annotate.cache import load_annotation_input
    from mmdistill.data.datasets import decode_images
    table = load_annotation_input(("uid", "image")).slice(0, 3)
    images = torch.from_numpy(decode_images(table["image"].to_pylist(), table["uid"].to_pylist(), channels=3))
    _, image_vectors = load_features("image")
    assert np.allclose(image_vectors[:3], encoder.features(images).numpy(), atol=2e-3)
    texts = read_annotations("captions", ["caption"])["caption"].to_pylist()[:3]
    _, caption_vectors = load_features("caption")
    assert np.allclose(caption_vectors[:3], encoder.encode(texts, 8), atol=2e-3)


def test_clip_encoders_embed_every_kind_from_saved_models(project, open_clip_dir, hf_clip_dir):
    for module in ("prepare", "tag", "ground", "caption", "describe"):
        run_stage(module)
    set_params(project, **{"embed.image_encoder": "open_clip", "embed.text_encoder": "open_clip",
                           "embed.open_clip.model": f"local-dir:{open_clip_dir}"})
    run_stage("embed", "--modality", "image")
    run_stage("embed", "--modality", "text")
    assert feature_metadata("image")["encoder"] == "open_clip"
    check_features(OpenClip(f"local-dir:{open_clip_dir}", None, torch.device("cpu")), 32)

    set_params(project, **{"embed.image_encoder": "hf_clip", "embed.text_encoder": "hf_clip",
                           "embed.hf_clip.model": str(hf_clip_dir)})
    run_stage("embed", "--modality", "image")
    run_stage("embed", "--modality", "text")
    assert feature_metadata("caption")["settings"]["model"] == str(hf_clip_dir)
    check_features(HFClip(str(hf_clip_dir), torch.device("cpu")), 16)


def test_open_clip_name_with_checkpoint_file(tmp_path, open_clip_dir):
    import open_clip
    config = tmp_path / "tiny-test-clip.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    encoder = OpenClip("tiny-test-clip", str(open_clip_dir / "open_clip_pytorch_model.bin"), torch.device("cpu"))
    reference = OpenClip(f"local-dir:{open_clip_dir}", None, torch.device("cpu"))
    texts = ["a photo of a shirt", "a bag"]
    assert np.allclose(encoder.encode(texts, 2), reference.encode(texts, 2), atol=1e-6)


def test_open_clip_folder_with_pt_weights_loads_them(tmp_path, open_clip_dir):
    """open_clip itself looks only for .safetensors/.bin/.pth in a folder and builds random weights otherwise: a
    folder whose weights end in .pt must give the saved model, and a .pt that is no state dict of it an error."""
    import shutil
    (tmp_path / "pt").mkdir()
    shutil.copy(open_clip_dir / "open_clip_config.json", tmp_path / "pt")
    shutil.copy(open_clip_dir / "open_clip_pytorch_model.bin", tmp_path / "pt" / "tiny-clip.pt")
    texts, cpu = ["a photo of a shirt", "a bag"], torch.device("cpu")
    reference = OpenClip(f"local-dir:{open_clip_dir}", None, cpu)
    torch.manual_seed(1)  # a random init would differ from the saved weights
    encoder = OpenClip(f"local-dir:{tmp_path / 'pt'}", None, cpu)
    assert np.allclose(encoder.encode(texts, 2), reference.encode(texts, 2), atol=1e-6)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(encoder.features(images), reference.features(images), atol=1e-6)

    (tmp_path / "bad").mkdir()
    shutil.copy(open_clip_dir / "open_clip_config.json", tmp_path / "bad")
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "bad" / "tiny-clip.pt")
    with pytest.raises(PipelineError, match="embed.open_clip.model"):
        OpenClip(f"local-dir:{tmp_path / 'bad'}", None, cpu)


def test_missing_weights_are_clear_errors(tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(PipelineError, match="could not load open_clip model 'ViT-B-32'"):
        OpenClip("ViT-B-32", "laion2b_s34b_b79k", cpu)  # tag whose weights are not in the cache (offline)
    with pytest.raises(PipelineError, match="random weights"):
        OpenClip("ViT-B-32", None, cpu)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    with pytest.raises(PipelineError, match="weights file"):
        OpenClip(f"local-dir:{tmp_path}", None, cpu)
    with pytest.raises(PipelineError, match="embed.hf_clip.model"):
        HFClip(str(tmp_path / "no-such-model"), cpu)


def test_unknown_encoder_lists_valid(project):
    set_params(project, **{"embed.image_encoder": "siglip"})
    with pytest.raises(PipelineError,
                       match="'embed.image_encoder' = 'siglip' is not one of: efficientnet_lite0, hf_clip, open_clip"):
        run_stage("embed", "--modality", "image")
