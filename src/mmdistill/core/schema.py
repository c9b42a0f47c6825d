"""The schema of params.yaml: every key, its type, range and valid names. No default value: those live in
params.yaml only (mmdistill.core.config.load_params checks the whole file against this before any stage runs).

Valid names come from the code's registries (backends, encoders, networks, datasets, ...), so there is one list of
them: registering a new backend makes its name valid here.
"""
from mmdistill.core.config import AUTO_BOOL, BOOL, FREE, Float, Int, List, Str
from mmdistill.core.runtime import PRECISIONS
from mmdistill.core.storage import PipelineError
from mmdistill.distill import methods

COUNT = Int(low=1)                       # sizes, epochs, batch sizes, iterations: at least one
RATE = Float(above=0)                    # learning rates: 0 would leave everything where it started
FRACTION = Float(low=0, high=1)          # a share or a probability-like score
NAME = Str(empty=False)                  # a model id, path or template: "" means nothing
REVISION = Str()                         # a hub revision; "" = the repository's default branch


def names(registry) -> Str:
    """The keys of a registry (a dict or tuple of valid names) as a choice."""
    return Str(*sorted(registry))


def net_name() -> Str:
    """A network of mmdistill.nn.nets.NETWORKS, optionally with `:norm`."""
    from mmdistill.nn.nets import NETWORKS, NORMS
    return Str(*NETWORKS, *(f"{n}:{norm}" for n in NETWORKS for norm in NORMS),
               hint=f"{', '.join(NETWORKS)} (each optionally :norm, norm one of {', '.join(NORMS)})")


def method_name(name: str, option: str = "--method") -> str:
    """`name` if it is a method of the registry (mmdistill.distill.methods.REGISTRY), else a PipelineError: a name
    from the command line never becomes a path (`--method ../../x`)."""
    if name not in methods.REGISTRY:
        raise PipelineError(f"{option} {name!r} is not a registered method; valid: {', '.join(methods.REGISTRY)}")
    return name


def schema() -> dict:
    # the registries are imported here, not at module level: importing this module stays cheap
    from mmdistill.annotate.cache import ENGINES, ON_ERROR
    from mmdistill.annotate.captions import CAPTIONERS
    from mmdistill.annotate.descriptions import DESCRIBERS
    from mmdistill.annotate.grounding import GROUNDERS, SAM_IMPLEMENTATIONS
    from mmdistill.annotate.tags import TAGGERS
    from mmdistill.core.ray_actors import ray_keys
    from mmdistill.core.runtime import DEVICES
    from mmdistill.data.sources import CHANNELS, DATASETS, RESIZE_MODES
    from mmdistill.data.synthetic import GRID, LABEL_TEMPLATES
    from mmdistill.embed.features import IMAGE_ENCODERS, TEXT_ENCODERS
    from mmdistill.nn.caption_head import HEADS, TARGETS
    from mmdistill.nn.augment import KEYS as AUGMENT_KEYS
    from mmdistill.nn.contrastive import IMAGE_ENCODERS as PAIR_IMAGE_ENCODERS
    from mmdistill.nn.diffusion import CLASS_NAMES as DIFFUSION_CLASS_NAMES
    from mmdistill.selection.coresets import (
        FORGETTING_ORDERS,
        KCENTER_STARTS,
        PAIR_CORESETS,
        PDS_CONDITIONS,
        PDS_FEATURES,
        PDS_TEXT_FEATURES,
    )
    net = net_name()
    return {
        "seed": Int(low=0),
        "device": Str(*DEVICES),
        "prepare": {
            "dataset": Str(*DATASETS),
            "source": NAME,
            "val_per_class": COUNT,
            "max_train_per_class": Int(low=0),          # 0 = all
            "rows_per_shard": COUNT,
            "image_size": Int(low=0),              # 0 = from the data (image_folder)
            "channels": Int(choices=CHANNELS),
            "resize": Str(*RESIZE_MODES),
            "classes": List(Str(empty=False), unique=True),
            "test_fraction": Float(above=0, below=1),
            "fashion_mnist_captions": {
                "captions": Int(low=1, high=len(LABEL_TEMPLATES)),   # 1 = "This is a {label}"
            },
            "scenes": {
                "size": Int(low=16),
                "max_items": Int(low=1, high=GRID * GRID),  # one item per grid cell
                "train": COUNT,
                "val": COUNT,
                "test": COUNT,
                "captions": COUNT,
            },
            "karpathy": {
                "json": Str(),                          # "" = the one dataset_*.json in prepare.source
                "images": Str(),                        # "" = prepare.source or its one subfolder holding them
            },
        },
        "tag": {
            "backend": names(TAGGERS),
            "top_k": COUNT,
            "threshold": FRACTION,
            "batch_size": COUNT,
            "input_size": COUNT,
            "clip": {
                "model": NAME,
                "revision": REVISION,
                "vocabulary": NAME,
                "prompt": NAME,
            },
            "plugin": {
                "class": Str(),                         # "" unless tag.backend is plugin
                "kwargs": FREE,
            },
        },
        "ground": {
            "backend": names(GROUNDERS),
            "min_area": FRACTION,
            "max_instances": COUNT,
            "batch_size": COUNT,
            "grounding_dino": {
                "model": NAME,
                "revision": REVISION,
                "box_threshold": FRACTION,
                "text_threshold": FRACTION,
            },
            "sam": {
                "implementation": Str(*SAM_IMPLEMENTATIONS),
                "model": NAME,
                "revision": REVISION,
                "model_type": NAME,                     # a segment_anything registry key, checked when it loads
                "checkpoint": NAME,
            },
        },
        "caption": {
            "backend": names(CAPTIONERS),
            "batch_size": COUNT,
            "instance_template": NAME,
            "image_template": NAME,
            "blip2": {
                "model": NAME,
                "revision": REVISION,
                "max_new_tokens": COUNT,
                "num_beams": COUNT,
                "prompt": Str(),                        # optional text prefix
            },
        },
        "describe": {
            "backend": names(DESCRIBERS),
            "batch_size": COUNT,
            "template": NAME,
            "llava": {
                "model": NAME,
                "revision": REVISION,
                "prompt": NAME,
                "temperature": Float(low=0),            # 0 = greedy
                "max_new_tokens": COUNT,
            },
        },
        "annotate": {
            "engine": Str(*ENGINES),
            "shard_size": COUNT,
            "on_error": Str(*ON_ERROR),
            "cache_dir": NAME,
            "ray": ray_keys(),                          # address "" = a local Ray instance
        },
        "embed": {
            "engine": Str(*ENGINES),
            "ray": ray_keys(),
            "image_encoder": names(IMAGE_ENCODERS),
            "text_encoder": names(TEXT_ENCODERS),
            "open_clip": {
                "model": NAME,
                "pretrained": Str(),                    # may be "" only with a local-dir: model
            },
            "hf_clip": {
                "model": NAME,
            },
            "input_size": COUNT,
            "batch_size": COUNT,
            "rows_per_shard": COUNT,
        },
        "align": {
            "dim": COUNT,
            "epochs": COUNT,
            "batch_size": COUNT,
            "lr": RATE,
        },
        "caption_head": {
            "head": Str(*HEADS),
            "target": Str(*TARGETS),
            "width": COUNT,
            "epochs": COUNT,
            "batch_size": COUNT,
            "lr": RATE,
            "blip2": {
                "model": NAME,
                "revision": REVISION,
            },
        },
        "select": {
            "prototypes": List(Str("on")),
            "lof_neighbors": COUNT,
            "lof_contamination": Float(low=0, high=0.5),  # sklearn's range; 0 keeps every image
            "kmeans_n_init": COUNT,
            "kcenter_start": Str(*KCENTER_STARTS),
            "forgetting_order": Str(*FORGETTING_ORDERS),
            "text_threshold": Float(above=0, high=1),
            "text_top_k": COUNT,
            "pds": {
                "clusters": List(COUNT, min_items=1, unique=True),
                "prune_ratio": Float(low=0, below=1),
                "features": Str(*PDS_FEATURES),
            },
            "pair_coresets": {
                "methods": List(names(PAIR_CORESETS), unique=True),
                "sizes": List(COUNT, min_items=1, unique=True),
            },
            "forgetting": {
                "net": net,
                "epochs": COUNT,
                "batch_size": COUNT,
                "lr": RATE,
                "precision": Str(*PRECISIONS),
            },
        },
        "dsa": AUGMENT_KEYS,
        "distill": methods.schema(),
        "imagetext": {
            "stages": List(Str("on")),
            "pair_sets": List(NAME, unique=True),   # full | random-N, checked by mmdistill.data.pairs
            "distill_sets": List(NAME, unique=True),  # mttvl-N, checked by mmdistill.data.pairs
            "coreset_sets": List(NAME, unique=True),  # herding|kcenter|forgetting|pds-N, checked by mmdistill.data.pairs
            "synthesis_sets": List(NAME, unique=True),  # pds_unclip-N, checked by mmdistill.data.pairs
            "unclip": List(Str("on")),
            "pds_unclip": {
                "decoder": NAME,                        # offline (a pretrained one is refused when used)
                "guidance_scale": Float(low=1),
                "steps": COUNT,
                "noise_level": Int(low=0),              # below the decoder's noising steps (checked when used)
                "batch_size": COUNT,
                "text": Str(*PDS_TEXT_FEATURES),
                "condition": Str(*PDS_CONDITIONS),
            },
            "text_encoder": names(TEXT_ENCODERS),
            "batch_size": COUNT,
            "model": {
                "image_encoder": names(PAIR_IMAGE_ENCODERS),
                "dim": COUNT,
                "temperature": Float(above=0),
                "input_size": Int(low=0),               # 0 = the prepared size
                "timm": {
                    "nfnet_l0": NAME,
                    "vit": NAME,
                },
                "lora": {
                    "rank": COUNT,
                    "alpha": Float(above=0),
                    "targets": List(Str(empty=False), min_items=1, unique=True),
                },
            },
            "buffer": {
                "experts": COUNT,
                "expert_epochs": COUNT,
                "lr": RATE,
                "momentum": Float(low=0, below=1),
                "batch_size": Int(low=2),               # a contrastive batch needs a negative
            },
            "mttvl": {
                "iterations": COUNT,
                "syn_steps": COUNT,
                "expert_epochs": COUNT,
                "max_start_epoch": Int(low=0),
                "batch_syn": Int(low=2),
                "lr_images": RATE,
                "lr_texts": RATE,
                "lr_alpha": RATE,
                "alpha0": RATE,
                "momentum": Float(low=0, below=1),
                "checkpoint_every": COUNT,
            },
            "evaluate": {
                "repeats": COUNT,
                "epochs": COUNT,
                "lr": RATE,
                "momentum": Float(low=0, below=1),
                "batch_size": Int(low=2),
            },
        },
        "vae": {
            "block_out_channels": List(COUNT, min_items=1),
            "latent_channels": COUNT,
            "layers_per_block": COUNT,
            "norm_num_groups": COUNT,                   # must divide every block's channels (checked when built)
            "attention": BOOL,
            "epochs": COUNT,
            "batch_size": COUNT,
            "lr": RATE,
            "kl_weight": Float(low=0),
        },
        "diffusion": {
            "model": NAME,                              # offline | a hub id or local pipeline folder
            "revision": REVISION,
            "resolution": Int(low=8),
            "flip": AUTO_BOOL,                         # auto: the prepared dataset's default
            "class_name": Str(*DIFFUSION_CLASS_NAMES),
            "finetune": {
                "epochs": COUNT,
                "batch_size": COUNT,
                "lr": RATE,
                "weight_decay": Float(low=0),
                "caption_dropout": Float(low=0, below=1),
                "lora_rank": Int(low=0),                # 0 = the whole UNet
            },
            "offline": {
                "epochs": COUNT,
                "batch_size": COUNT,
                "lr": RATE,
                "weight_decay": Float(low=0),
                "caption_dropout": Float(low=0, below=1),
                "block_out_channels": List(COUNT, min_items=1),
                "layers_per_block": COUNT,
                "norm_num_groups": COUNT,               # must divide every block's channels (checked when built)
                "attention_head_dim": COUNT,
                "text_width": COUNT,
                "text_layers": COUNT,
                "text_heads": COUNT,                    # must divide text_width (checked when built)
            },
        },
        "pretrain": {
            "net": net,
            "models": COUNT,
            "epochs": COUNT,
            "lr": RATE,
            "batch_size": COUNT,
            "augment": BOOL,
            "flip": AUTO_BOOL,                         # auto: the prepared dataset's default
        },
        "evaluate": {
            "nets": List(net, min_items=1, unique=True),
            "repeats": COUNT,
            "epochs": COUNT,
            "lr": RATE,
            "batch_size": COUNT,
            "precision": Str(*PRECISIONS),
            "compile": Str(),                          # "" or a torch.compile backend, checked when used
            "augment": BOOL,
            "flip": AUTO_BOOL,                         # auto: the prepared dataset's default
        },
        "evaluate_full": {
            "epochs": COUNT,
            "repeats": COUNT,
            "augment": BOOL,
        },
        "report": {
            "benchmarks": List(NAME, unique=True),   # benchmarks/results/NAME.json, checked by stage report
        },
    }
