"""The registry of distillation methods: one module per method, one line here per method.

Adding a method: write `mmdistill/distill/methods/NAME.py` defining `METHOD = Method(...)` (or `METHODS`, a dict
name -> Method, for a module holding several) and add `"NAME": "mmdistill.distill.methods.NAME"` to REGISTRY
(the full module name: mmdistill.devtools.closure finds it there for dvc.yaml's code deps). Its module is
imported when first needed. A Method declares:

  group    the `distill.methods.<group>` list of params.yaml it may be listed in. A group is the set of
           artifacts the method's distill and evaluate stages read, so dvc.yaml has one matrix per group
           (GROUPS below); `latent` is not a method's group: it lists methods of LATENT_GROUPS run in the
           latent parameterisation (`--latent`).
  family   "distribution" | "gradient" | None: the shared block `distill.<family>` (keys in FAMILIES) that its
           own block `distill.<name>` overlays. `switch` = (key, {value: family}) lets a key of its own block
           pick the family instead (masked_dm's `full_term`).
  keys     the Spec of its own keys in `distill.<name>` (all required; the family's keys may be overridden there).
  run      run(Run) -> Synthetic, the method's step (mmdistill.distill.engine.Run: the resolved settings,
           train split, device, seed, ...).
  engine   whether it optimises on the distillation engine (a loss curve, `--resume`, `--latent`).

`resolve(params, name)` is the one place a run's settings are made: the family block overlaid with the method
block, validated. `schema()` is the schema of the whole `distill` section of params.yaml (mmdistill.core.schema).
For dvc.yaml: GROUPS says what each group's distill and evaluate stages read and which stages exist only for it;
params_read(name, latent) the params blocks a run reads; enabled(params) the (method, latent) runs params enable.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from mmdistill.core import paths
from mmdistill.core.config import Int, List, Spec, Str, param, validate
from mmdistill.core.runtime import PRECISIONS
from mmdistill.core.storage import PipelineError

REGISTRY = {  # method name -> its module
    "random": "mmdistill.distill.methods.real_images",
    "kmeans": "mmdistill.distill.methods.real_images",
    "herding": "mmdistill.distill.methods.real_images",
    "kcenter": "mmdistill.distill.methods.real_images",
    "forgetting": "mmdistill.distill.methods.real_images",
    "forgetting_most": "mmdistill.distill.methods.real_images",
    "dm": "mmdistill.distill.methods.dm",
    "masked_dm": "mmdistill.distill.methods.masked_dm",
    "masked_dm_means": "mmdistill.distill.methods.masked_dm",
    "dc": "mmdistill.distill.methods.dc",
    "dsa": "mmdistill.distill.methods.dsa",
    "masked_dc": "mmdistill.distill.methods.masked_dc",
    "masked_dc_cosine": "mmdistill.distill.methods.masked_dc",
    "dsdm": "mmdistill.distill.methods.dsdm",
    "caption_match": "mmdistill.distill.methods.caption_match",
    "caption_concat": "mmdistill.distill.methods.caption_concat",
    "vlcp": "mmdistill.distill.methods.vlcp",
}

@dataclass(frozen=True)
class Group:
    """What the distill and evaluate stages of a group's methods read (besides their own distilled set), and the
    stages that exist only for this group (dvc.yaml runs them only when the group is not empty)."""
    distill_reads: tuple
    evaluate_reads: tuple
    stages: tuple = ()


_PREPARED = str(paths.PREPARED)
GROUPS = {  # distill.methods.<group>; "{method}" stands for the method's name
    "selection": Group((_PREPARED, str(paths.SELECTIONS)), (_PREPARED,)),
    "distribution": Group((_PREPARED,), (_PREPARED,)),
    "gradient": Group((_PREPARED,), (_PREPARED,)),
    "masked": Group((_PREPARED, str(paths.ANNOTATIONS / "instances.parquet")), (_PREPARED,)),
    "pool": Group((_PREPARED, str(paths.POOL.parent)), (_PREPARED,), ("pretrain",)),
    "caption_match": Group((_PREPARED, str(paths.FEATURES / "caption"), str(paths.CAPTION_HEAD.parent)), (_PREPARED,),
                           ("caption_head",)),
    "caption_concat": Group((_PREPARED, str(paths.ANNOTATIONS / "captions.parquet"), str(paths.FEATURES / "caption"),
                             str(paths.FEATURES / "image"), str(paths.SELECTIONS)),
                            (_PREPARED, str(paths.FEATURES / "caption"), str(paths.FEATURES_HELDOUT)),
                            ("annotate_test",)),
    "synthesis": Group((_PREPARED, str(paths.SELECTIONS), str(paths.FEATURES / "image"),
                        str(paths.ANNOTATIONS / "descriptions.parquet"), str(paths.diffusion_dir("{method}"))),
                       (_PREPARED,), ("finetune_diffusion",)),
    # --latent runs of methods of LATENT_GROUPS; data/vae/{method} is read when distill.latent.vae is "offline"
    "latent": Group((_PREPARED, str(paths.vae_dir("{method}"))), (_PREPARED,), ("vae",)),
}
LATENT = "latent"
LATENT_GROUPS = ("distribution", "gradient")  # the groups whose methods may be listed in distill.methods.latent

FAMILIES = {  # family -> the module of its shared loop, whose KEYS is the schema of distill.<family>
    "distribution": "mmdistill.distill.distribution_matching",
    "gradient": "mmdistill.distill.gradient_matching",
}


@dataclass(frozen=True)
class Method:
    name: str
    group: str
    family: str | None
    keys: dict
    run: Callable
    engine: bool
    switch: tuple | None = None  # (own key, {value: family}): that key picks the family

    @property
    def families(self) -> tuple:
        """Every family whose block this method may overlay."""
        if self.switch is not None:
            return tuple(dict.fromkeys(self.switch[1].values()))
        return (self.family,) if self.family else ()

    def family_of(self, block: dict) -> str | None:
        if self.switch is not None:
            return self.switch[1][block[self.switch[0]]]
        return self.family

    @property
    def has_block(self) -> bool:
        """Whether params.yaml has a block `distill.<name>` for it (its own keys or family overrides)."""
        return bool(self.keys) or bool(self.families)


@dataclass(frozen=True)
class Synthetic:
    """What a method's run returns: the images (normalised, class-major), the train index each started from
    (its label and source uid), the loss history (empty when not optimised), further entries of the output file,
    and settings the run took from its inputs rather than from its params block (added to the output's
    `info.settings`, e.g. the order a forgetting selection was made in)."""
    images: object
    init: list
    loss: list
    extra: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Block(Spec):
    """A method's block in params.yaml: its own keys (required) and overrides of its families' keys (optional)."""
    own: dict = field(default_factory=dict)
    overridable: dict = field(default_factory=dict)

    def check(self, key: str, value) -> None:
        if not isinstance(value, dict):
            raise PipelineError(f"param '{key}' must be a mapping of keys, got {value!r}")
        known = {**self.overridable, **self.own}
        if any(k not in known for k in value):
            validate(value, known, f"{key}.")  # names the unknown key and the closest valid one
        validate(value, {**{k: s for k, s in self.overridable.items() if k in value}, **self.own}, f"{key}.")


@dataclass(frozen=True)
class GroupList(Spec):
    """`distill.methods.<group>`: distinct names of methods registered for that group."""
    group: str = ""

    def check(self, key: str, value) -> None:
        List(Str(empty=False)).check(key, value)
        if len(set(value)) != len(value):
            raise PipelineError(f"param '{key}' lists a method twice: {value!r}")
        for name in value:
            method = get(name)
            if self.group == LATENT:
                if method.group not in LATENT_GROUPS:
                    raise PipelineError(f"param '{key}' lists {name!r}, a method of group '{method.group}'; group "
                                        f"'{LATENT}' runs methods of groups {', '.join(LATENT_GROUPS)} in the latent "
                                        "parameterisation")
            elif method.group != self.group:
                raise PipelineError(f"param '{key}' lists {name!r}, which belongs in group '{method.group}' "
                                    f"(distill.methods.{method.group}), not '{self.group}'")


def get(name: str) -> Method:
    """The registered method `name` (its module imported on first use)."""
    if name not in REGISTRY:
        raise PipelineError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    module = importlib.import_module(REGISTRY[name], __name__)
    methods = getattr(module, "METHODS", None)
    if methods is None:
        method = getattr(module, "METHOD", None)
        methods = {method.name: method} if isinstance(method, Method) else {}
    method = methods.get(name)
    if not isinstance(method, Method) or method.name != name:
        raise PipelineError(f"module {module.__name__} (registered for method {name!r}) defines no Method named "
                            f"{name!r} in METHOD or METHODS")
    if method.group not in GROUPS or method.group == LATENT:
        raise PipelineError(f"method {name!r} declares group {method.group!r}; valid: "
                            f"{', '.join(g for g in GROUPS if g != LATENT)}")
    for family in method.families:
        if family not in FAMILIES:
            raise PipelineError(f"method {name!r} declares family {family!r}; valid: {', '.join(FAMILIES)}")
    return method


def family_keys(family: str) -> dict:
    return importlib.import_module(FAMILIES[family]).KEYS


def block_spec(method: Method) -> Block:
    overridable = {}
    for family in method.families:
        overridable.update(family_keys(family))
    return Block(dict, own=dict(method.keys), overridable=overridable)


def resolve(params: dict, name: str) -> dict:
    """The settings of a run of method `name`: `distill.<family>` overlaid with `distill.<name>`, validated.
    Returns (settings, where): `where[key]` is the params.yaml key each setting came from (for messages)."""
    method = get(name)
    if not method.has_block:
        return {}, {}
    block = param(params, f"distill.{name}")
    block_spec(method).check(f"distill.{name}", block)
    family = method.family_of(block)
    settings, where = {}, {}
    if family is not None:
        keys = family_keys(family)
        base = param(params, f"distill.{family}")
        validate(base, keys, f"distill.{family}.")
        stray = [k for k in block if k not in keys and k not in method.keys]
        if stray:
            raise PipelineError(f"param 'distill.{name}.{stray[0]}' is not a key of family '{family}' (used by "
                                f"{name} with these settings); its keys: {', '.join(keys)}")
        settings.update(base)
        where.update({k: f"distill.{family}.{k}" for k in base})
    settings.update(block)
    where.update({k: f"distill.{name}.{k}" for k in block})
    return settings, where


def params_read(name: str, latent: bool) -> list[str]:
    """The params blocks a distill run of `name` reads (seed and device besides): its family blocks, its own block,
    distill.engine for engine methods, distill.latent for latent runs, dsa (the augmentation's form) for methods that
    augment."""
    method = get(name)
    blocks = [f"distill.{family}" for family in method.families]
    blocks += [f"distill.{name}"] if method.has_block else []
    blocks += ["distill.engine"] if method.engine else []
    blocks += ["distill.latent"] if latent else []
    return blocks + (["dsa"] if method.families or "augment" in method.keys else [])


def enabled(params: dict) -> list[tuple[str, bool]]:
    """The (method, latent) runs params.yaml enables, in group order (as dvc.yaml runs them)."""
    groups = param(params, "distill.methods", dict)
    runs = []
    for group in GROUPS:
        runs += [(name, group == LATENT) for name in groups.get(group, [])]
    return runs


def schema() -> dict:
    """The schema of params.yaml's `distill` section (imports every registered method's module)."""
    section = {
        "ipcs": List(Int(low=1), min_items=1),
        "methods": {group: GroupList(list, group=group) for group in GROUPS},
    }
    for family in FAMILIES:
        section[family] = family_keys(family)
    for name in REGISTRY:
        method = get(name)
        if method.has_block:
            section[name] = block_spec(method)
    section["latent"] = {
        "vae": Str(empty=False),
        "vae_revision": Str(),
        "vae_subfolder": Str(),
    }
    section["engine"] = {
        "precision": Str(*PRECISIONS),
        "checkpoint_every": Int(low=1),
        "log_every": Int(low=1),
        "grid_every": Int(low=1),
        "compile": Str(),
    }
    return section

