"""The experiment ``Config``: every choice of an experiment, typed, validated, JSON round-trip.

An experiment file builds one ``Config``; ``--set key=value`` overrides a field from the command
line (the value is parsed by the field's type: ``true``/``false`` for booleans, JSON for lists
and dicts). ``Config.validate()`` names the field at fault in a ``ConfigError``.

Defaults describe the baseline (exp001): late fusion of EfficientNet-Lite0 and all-MiniLM-L6-v2
with an ArcFace head. A default that changes must not silently change what an old experiment
does: put new behaviour behind a new field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shopee.constants import (
    AMP_MODES,
    DEFAULT_EMBED_DIM,
    FULL_FOLD,
    HEADS,
    IMAGE_POLICIES,
    TFIDF_TEXT_MODEL,
    K,
)
from shopee.errors import ShopeeError


class ConfigError(ShopeeError):
    """A bad setting; the message names the key."""


IMAGE_POOLS = ("gem", "avg", "max")
TEXT_POOLS = ("mean", "cls", "attention", "mean_last4")
NECKS = ("bn", "linear_bn", "linear_bn_prelu", "fc_dropout")
FUSIONS = ("none", "late", "early", "multi")
OPTIMIZERS = ("adamw", "sgd")
# Parts a training stage can unfreeze; "image.lastN" / "text.lastN" name the last N blocks/layers.
PARTS = ("all", "image", "text", "neck", "head")
# Fields that set how fast a run goes, never what it computes: left out when the configs of two
# runs are compared (a checkpoint resumed, a fold pulled, the folds a full-data run follows).
RUNTIME_FIELDS = ("num_workers",)


@dataclass
class Config:
    # --- experiment -------------------------------------------------------------------------
    seed: int = 42
    n_folds: int = 5
    # Missing or unreadable images: error (stop), skip (leave those rows out of training; validation
    # rows keep a blank image so that every experiment scores the same rows), blank.
    image_policy: str = "error"
    # --- image encoder ("" = no image encoder) ------------------------------------------------
    image_model: str = "tf_efficientnet_lite0"
    image_pretrained: bool = True
    image_weights: str = ""  # a local checkpoint file or directory; overrides the lookup
    image_size: int = 128
    image_pool: str = "gem"
    gem_p: float = 3.0
    # --- text encoder ("" = no text encoder) --------------------------------------------------
    text_model: str = "all-MiniLM-L6-v2"
    text_pretrained: bool = True
    text_weights: str = ""  # a local Hugging Face model directory; overrides the lookup
    text_pool: str = "mean"
    max_len: int = 32
    tfidf_dim: int = 128  # text_model "tfidf_pca": PCA dimensions of the TF-IDF of the titles ...
    tfidf_hidden: int = 512  # ... and the width of its two-layer MLP
    # --- neck, fusion, head ---------------------------------------------------------------------
    neck: str = "bn"
    # Width of a projecting neck (linear_bn, linear_bn_prelu, fc_dropout) and of the shared
    # projection; unset: DEFAULT_EMBED_DIM. The bn neck keeps the encoder's width, so setting it
    # there is an error rather than silently ignored.
    embed_dim: int | None = None
    dropout: float = 0.1
    fusion: str = "late"
    early_layers: int = 1  # early fusion: transformer layers over image and text tokens
    early_heads: int = 4
    early_dim: int = 256
    loss_weights: dict[str, float] = field(default_factory=lambda: {"fused": 1.0, "img": 1.0, "txt": 1.0})
    shared_projection: bool = False  # image and text share one projection and margin head
    head: str = "arcface"
    scale: float = 30.0
    margin: float = 0.5
    margin_start: float | None = None  # ramp the margin from here to `margin` ...
    margin_ramp_epochs: int = 0  # ... over this many epochs (0 = no ramp)
    subcenters: int = 3
    neg_samples: int = 5  # head "neg_sampling": negatives drawn per row ...
    neg_scale: float = 1.0  # ... and the scale of z_i . z_j inside the sigmoid (1: as described)
    proto_clusters: int = 0  # a "protonce" stage: k-means clusters (0: one per training group) ...
    proto_temperature: float = 0.1  # ... and the temperature of its two contrasts
    adaptive_margin: bool = False  # per-class margin growing as the class gets smaller
    adaptive_margin_min: float = 0.2  # margin of the largest class (the smallest gets `margin`)
    # --- optimisation ---------------------------------------------------------------------------
    optimizer: str = "adamw"
    lr_image: float = 3e-4
    lr_text: float = 5e-5
    lr_head: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    layer_decay: float = 1.0  # learning rate x layer_decay**depth-from-top (1 = off)
    warmup: float = 0.1  # share of each stage's steps spent warming up
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    accum_steps: int = 1
    batch_size: int = 32
    epochs: int = 6  # used when `stages` is empty: one stage training everything
    # Stop a fold when its CV F1 has not improved for this many epochs and keep the best epoch's
    # weights (0 = train every epoch of the schedule).
    early_stopping_patience: int = 0
    # Epochs of a full-data run (--fold full) on the fold's schedule; 0 = as the CV runs: the median
    # best epoch of the finished folds with early stopping, else every epoch of the schedule.
    full_epochs: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    amp: str = "auto"  # mixed precision on CUDA: auto, bf16, fp16, off (fp32 on CPU; see runtime)
    channels_last: bool = True  # on CUDA
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (GPUs only)
    # Processes decoding images for each loader; -1: as many as this process's share of the CPU
    # cores (none for a model without images). Speed only: augmentation draws per row, not per worker.
    num_workers: int = -1
    # --- sampling and augmentation --------------------------------------------------------------
    sample_weight_power: float = 0.0  # sample weight 1/size**p by group size (0 = uniform)
    balanced: bool = False  # class-balanced resampling ...
    min_per_class: int = 2  # ... at least this many draws per class per epoch
    max_per_class: int = 8  # ... at most this many
    augment: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "Affine", "scale": [0.85, 1.15], "rotate": [-15, 15], "p": 0.5},
            {"name": "RandomBrightnessContrast", "p": 0.5},
        ]
    )
    # --- evaluation -----------------------------------------------------------------------------
    eval_k: int = K  # neighbours searched per row (itself included)
    eval_batch_size: int = 64
    # Also embed the fold's training rows with the finished model (dense_<kind>.npy): the dense CV
    # objective matches each validation row against them, at the density of the whole train set.
    dense_oof: bool = True
    # --- debug runs (--debug) -------------------------------------------------------------------
    debug_batches: int = 3
    debug_image_size: int = 64
    debug_val_rows: int = 0  # 0 = all validation rows

    # ----------------------------------------------------------------------------------------
    def validate(self) -> Config:
        def choice(key: str, options: tuple[str, ...]) -> None:
            if getattr(self, key) not in options:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(options)}")

        def positive(*keys: str) -> None:
            for key in keys:
                if not getattr(self, key) > 0:
                    raise ConfigError(f"{key}={getattr(self, key)!r} must be positive")

        choice("image_pool", IMAGE_POOLS)
        choice("text_pool", TEXT_POOLS)
        choice("neck", NECKS)
        choice("fusion", FUSIONS)
        choice("head", HEADS)
        choice("optimizer", OPTIMIZERS)
        choice("image_policy", IMAGE_POLICIES)
        choice("amp", AMP_MODES)
        positive("n_folds", "image_size", "max_len", "scale", "batch_size", "accum_steps")
        if self.batch_size < 2:
            raise ConfigError(
                f"batch_size={self.batch_size}: the neck's BatchNorm (neck {self.neck!r}) cannot train "
                "on one row"
            )
        if self.embed_dim is not None:
            positive("embed_dim")
            if self.neck == "bn" and not self.shared_projection:
                raise ConfigError(
                    f"embed_dim={self.embed_dim} has no effect with neck='bn' (BatchNorm keeps the "
                    "encoder's width): use a projecting neck (linear_bn, linear_bn_prelu, fc_dropout) "
                    "or leave embed_dim unset"
                )
        if self.num_workers < -1:
            raise ConfigError(f"num_workers={self.num_workers} must be -1 (auto) or 0 and more")
        positive("eval_k", "eval_batch_size", "debug_batches", "debug_image_size", "subcenters")
        positive("lr_image", "lr_text", "lr_head", "early_layers", "early_heads", "early_dim")
        if self.n_folds < 2:
            raise ConfigError(f"n_folds={self.n_folds} must be at least 2")
        if not self.image_model and not self.text_model:
            raise ConfigError("image_model and text_model are both empty: a model needs an encoder")
        both = bool(self.image_model and self.text_model)
        if self.fusion == "none" and both:
            raise ConfigError("fusion='none' needs one encoder only: set image_model or text_model to ''")
        if self.fusion != "none" and not both:
            raise ConfigError(f"fusion={self.fusion!r} needs both encoders; use fusion='none'")
        if self.text_model == TFIDF_TEXT_MODEL and self.fusion == "early":
            raise ConfigError(
                "text_model='tfidf_pca' has no tokens for early fusion; use late, multi or none"
            )
        if self.shared_projection and self.fusion != "multi":
            raise ConfigError("shared_projection=true needs fusion='multi' (one head for image and text)")
        if self.early_dim % self.early_heads:
            raise ConfigError(
                f"early_dim={self.early_dim} must be divisible by early_heads={self.early_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup={self.warmup} must be in [0, 1)")
        if self.head == "neg_sampling":
            positive("neg_samples", "neg_scale")
            if self.batch_size % 2:
                raise ConfigError(
                    f"batch_size={self.batch_size}: head 'neg_sampling' takes batches of pairs (an even size)"
                )
        if self.adaptive_margin and not 0 <= self.adaptive_margin_min <= self.margin:
            raise ConfigError(
                f"adaptive_margin_min={self.adaptive_margin_min} must be between 0 and margin={self.margin}"
            )
        if self.margin_ramp_epochs < 0:
            raise ConfigError(f"margin_ramp_epochs={self.margin_ramp_epochs} must be >= 0")
        for key in ("early_stopping_patience", "full_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")
        if self.epochs < 1 and not self.stages:
            raise ConfigError(f"epochs={self.epochs} must be at least 1")
        if self.min_per_class > self.max_per_class or self.min_per_class < 1:
            raise ConfigError(
                f"min_per_class={self.min_per_class} must be between 1 and max_per_class={self.max_per_class}"
            )
        for key in set(self.loss_weights) - {"fused", "img", "txt"}:
            raise ConfigError(f"loss_weights: unknown member {key!r} (use fused, img, txt)")
        for i, stage in enumerate(self.stages):
            if parse_stage(stage, i).loss == "protonce" and self.fusion != "none":
                # its prototypes are clusters of one kind's embeddings, compared with the
                # image or text features of another width under fusion
                raise ConfigError(
                    f"stages[{i}].loss='protonce' works with one encoder (fusion='none'), "
                    f"not fusion={self.fusion!r}"
                )
        for i, aug in enumerate(self.augment):
            if not isinstance(aug, dict) or not isinstance(aug.get("name"), str):
                raise ConfigError(f"augment[{i}] must be a dict with a 'name' (an albumentations transform)")
        return self

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """``to_dict`` without the ``RUNTIME_FIELDS``: what two runs must share to compute the same."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """A config from ``to_dict`` output, also of an older version of this class (not validated)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        data = dict(data)
        if isinstance(data.get("amp"), bool):  # before the precision policy: amp was on/off
            data["amp"] = "auto" if data["amp"] else "off"
        return cls(**data)

    @property
    def projection_dim(self) -> int:
        """The width a projecting neck or the shared projection maps to."""
        return self.embed_dim if self.embed_dim is not None else DEFAULT_EMBED_DIM

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, assignments: list[str]) -> Config:
        """A copy with ``key=value`` assignments applied (typed by the field), then validated."""
        hints = typing.get_type_hints(Config)
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"--set {assignment!r}: expected key=value")
            if key not in known:
                close = [k for k in known if key in k or k in key]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ConfigError(f"--set {key}: unknown config key{hint}")
            changes[key] = parse_value(key, text, hints[key])
        return dataclasses.replace(self, **changes).validate()


def config_difference(expected: dict[str, Any], found: dict[str, Any], where: str) -> str:
    """The first key (in the config's field order) whose value differs between the ``expected``
    config and the one ``found`` in ``where``, as a phrase; "" if none. JSON's view of the values:
    a tuple and a list of the same items are the same config."""
    expected, found = (json.loads(json.dumps(c, sort_keys=True, default=str)) for c in (expected, found))
    for key in [*expected, *(k for k in found if k not in expected)]:
        if expected.get(key, "<absent>") != found.get(key, "<absent>"):
            there, here = found.get(key, "<absent>"), expected.get(key, "<absent>")
            return f"{key}={there!r} in {where}, {here!r} here"
    return ""


def parse_value(key: str, text: str, hint: Any) -> Any:
    """Parse ``text`` as the type ``hint`` of field ``key``."""
    text = text.strip()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return parse_value(key, text, args[0])
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if origin in (list, dict):
            value = json.loads(text)
            if not isinstance(value, origin):
                raise ValueError(f"expected a JSON {origin.__name__}")
            return value
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--set {key}={text!r}: {exc}") from None
    raise ConfigError(f"--set {key}: cannot parse a value of type {hint}")


STAGE_LOSSES = ("margin", "protonce")  # the loss a stage trains with (protonce: see models/contrastive)


@dataclass(frozen=True)
class Stage:
    """One stage of a staged schedule: which parts train, for how long, at what learning rate,
    with which loss (``margin``: the model's head; ``protonce``: unsupervised, clusters)."""

    epochs: int
    train: tuple[str, ...]
    lr_scale: float = 1.0
    name: str = ""
    loss: str = "margin"


def parse_stage(stage: dict[str, Any], index: int) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(stage, dict):
        raise ConfigError(f"{where} must be a dict like {{'epochs': 1, 'train': ['head']}}")
    unknown = set(stage) - {"epochs", "train", "lr_scale", "name", "loss"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    epochs = stage.get("epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"{where}.epochs={epochs!r} must be a positive integer")
    train = stage.get("train", ["all"])
    if isinstance(train, str):
        train = [train]
    for part in train:
        base, _, last = str(part).partition(".last")
        if base not in PARTS or (last and (base not in ("image", "text") or not last.isdigit())):
            raise ConfigError(
                f"{where}.train: unknown part {part!r} (use all, image, text, neck, head, "
                "image.lastN, text.lastN)"
            )
    lr_scale = float(stage.get("lr_scale", 1.0))
    if lr_scale <= 0:
        raise ConfigError(f"{where}.lr_scale={lr_scale} must be positive")
    loss = stage.get("loss", "margin")
    if loss not in STAGE_LOSSES:
        raise ConfigError(f"{where}.loss={loss!r}: use one of {', '.join(STAGE_LOSSES)}")
    return Stage(epochs, tuple(str(p) for p in train), lr_scale, str(stage.get("name", "")), loss)


def stages_of(cfg: Config) -> list[Stage]:
    """The schedule: ``cfg.stages``, or one stage training everything for ``cfg.epochs``."""
    if not cfg.stages:
        return [Stage(cfg.epochs, ("all",))]
    return [parse_stage(s, i) for i, s in enumerate(cfg.stages)]


def check_fold(fold: int | str, n_folds: int) -> int | str:
    """``fold`` if it is a fold of ``n_folds`` (or ``full``, the run on every row)."""
    if fold == FULL_FOLD:
        return fold
    if not 0 <= int(fold) < n_folds:
        raise ConfigError(f"--fold {fold} is out of range: n_folds={n_folds} gives folds 0..{n_folds - 1}")
    return fold


def embedding_kinds(cfg: Config) -> list[str]:
    """The embeddings a model built from ``cfg`` produces (``img``, ``txt``, ``fused``)."""
    kinds = []
    if cfg.image_model:
        kinds.append("img")
    if cfg.text_model:
        kinds.append("txt")
    if cfg.fusion != "none":
        kinds.append("fused")
    return kinds
