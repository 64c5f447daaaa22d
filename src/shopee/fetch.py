"""``python -m shopee fetch EXP``: an experiment's pretrained weights in one folder, for offline use.

Kaggle submissions (and this project's machines) have no internet, so the weights a recipe starts
from must travel as files. ``fetch`` runs on a machine with internet, resolves every model through
the same lookup training uses (``shopee.pretrained``: explicit weights, registry packages, fetched
folders, the timm / Hugging Face caches, the hub) and writes::

    DIR/shopee-weights.json        manifest: each model's kind, name, folder, source, hub repository
                                   and commit (``repo``, ``revision``; null when not from the hub),
                                   files + sha256
    DIR/dataset-metadata.json      for ``kaggle datasets create -p DIR --dir-mode zip``
    DIR/image/<name>/model.safetensors   the timm backbone as the models build it (no classifier)
    DIR/text/<name>/                config, tokenizer files and one weights file (AutoModel loads it)

The lookup finds such a folder through ``$SHOPEE_WEIGHTS`` or, on Kaggle, by its manifest under
``/kaggle/input``. A second fetch into the same folder adds models and keeps the others; each
model folder and the manifest are replaced atomically, the manifest after every model.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopee.atomic import atomic_dir, write_json
from shopee.errors import ShopeeError
from shopee.pretrained import HUB_REVISIONS_ENV, KAGGLE_INPUT, WEIGHTS_ENV, WEIGHTS_MANIFEST

FORMAT = 1
DEFAULT_OUT = "weights"
DEFAULT_NAME = "shopee-pretrained"  # the dataset's slug becomes shopee-pretrained-dataset
PLACEHOLDER_USER = "your-kaggle-name"
KINDS = ("image", "text")
# The timm arguments ImageEncoder (shopee.models.encoders) builds its backbone with: the saved
# state dict is the one training loads.
BACKBONE_KWARGS: dict[str, Any] = {"num_classes": 0, "global_pool": ""}
IMAGE_FILE = "model.safetensors"
TEXT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Wanted:
    """A model to fetch and the explicit weights its experiment names (``image_weights``...)."""

    kind: str
    name: str
    weights: str = ""


# ------------------------------------------------------------------------------------------------
# what to fetch
# ------------------------------------------------------------------------------------------------
def wanted_models(
    experiments: Sequence[str] = (),
    overrides: Sequence[str] = (),
    image_models: Sequence[str] = (),
    text_models: Sequence[str] = (),
) -> list[Wanted]:
    """The models the experiments and the ``--image-model`` / ``--text-model`` names need, once each.

    An image model with ``image_pretrained=false`` needs no weights; a text model always needs its
    tokenizer, so it is fetched whatever ``text_pretrained`` says; TF-IDF has nothing to fetch.
    """
    from shopee.constants import TFIDF_TEXT_MODEL
    from shopee.runner import load_experiment

    wanted: dict[tuple[str, str], Wanted] = {}
    for spec in experiments:
        _, cfg = load_experiment(spec, overrides)
        if cfg.image_model and cfg.image_pretrained:
            wanted.setdefault(("image", cfg.image_model), Wanted("image", cfg.image_model, cfg.image_weights))
        if cfg.text_model and cfg.text_model != TFIDF_TEXT_MODEL:
            wanted.setdefault(("text", cfg.text_model), Wanted("text", cfg.text_model, cfg.text_weights))
    for kind, names in (("image", image_models), ("text", text_models)):
        for name in names:
            if not name.strip():
                raise ShopeeError(f"--{kind}-model {name!r}: empty model name")
            wanted.setdefault((kind, name), Wanted(kind, name))
    if not wanted:
        raise ShopeeError("nothing to fetch: name an experiment, --image-model or --text-model")
    return list(wanted.values())


# ------------------------------------------------------------------------------------------------
# the folder and its manifest
# ------------------------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    """A folder name for a model: ``FacebookAI/xlm-roberta-base`` -> ``FacebookAI__xlm-roberta-base``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "__")).strip("-.") or "model"


def check_out(out: Path) -> None:
    """``out`` must be a folder that is new, empty or already a fetched folder: never a file, and
    never a folder of other things that would end up in the Kaggle dataset."""
    if out.exists() and not out.is_dir():
        raise ShopeeError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and not (out / WEIGHTS_MANIFEST).is_file():
        others = [p.name for p in out.iterdir() if p.name != "dataset-metadata.json"]
        if others:
            raise ShopeeError(
                f"--out {out}: holds other files ({', '.join(sorted(others)[:3])}) and no "
                f"{WEIGHTS_MANIFEST}; choose a new or empty folder"
            )


def read_manifest(out: Path) -> dict[str, Any]:
    """The folder's manifest, or an empty one for a new folder."""
    path = out / WEIGHTS_MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "models": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        models = manifest["models"]
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise TypeError("'models' is not a list of objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise ShopeeError(
            f"{path}: not a fetched folder's manifest ({exc}); remove it or choose another --out"
        ) from None
    return manifest


def _entry(manifest: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    return next((m for m in manifest["models"] if m.get("kind") == kind and m.get("name") == name), None)


def _merged(manifest: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    others = [
        m for m in manifest["models"] if (m.get("kind"), m.get("name")) != (entry["kind"], entry["name"])
    ]
    models = sorted(
        [*others, entry], key=lambda m: (KINDS.index(m["kind"]) if m["kind"] in KINDS else 9, m["name"])
    )
    return {"format": FORMAT, "models": models}


def _folder_for(manifest: dict[str, Any], kind: str, name: str) -> str:
    """``kind/<safe name>``, kept when the model is already listed, suffixed when another holds it."""
    known = _entry(manifest, kind, name)
    if known:
        return str(known["folder"])
    taken = {m.get("folder") for m in manifest["models"]}
    folder = f"{kind}/{safe_name(name)}"
    n = 1
    while folder in taken:
        folder, n = f"{kind}/{safe_name(name)}-{n}", n + 1
    return folder


def _intact(out: Path, entry: dict[str, Any]) -> bool:
    from shopee.pretrained import files_problem

    try:
        return not files_problem(out / str(entry["folder"]), entry.get("files"))
    except (KeyError, TypeError, ValueError):
        return False


def size_mb(entry: dict[str, Any]) -> float:
    return sum(int(f["bytes"]) for f in entry["files"]) / 1e6


# ------------------------------------------------------------------------------------------------
# fetching one model
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """Where a fetched model came from: the lookup's words and, for the hub's files (downloaded or
    in the Hugging Face cache), the repository and the commit they are at (else None)."""

    source: str
    repo: str | None = None
    revision: str | None = None


def hub_revisions_of(manifest: dict[str, Any]) -> dict[str, str]:
    """repository -> commit of every model the manifest records from the hub: the value of
    ``$SHOPEE_HUB_REVISIONS`` that makes downloads elsewhere (the training kernel) get the same."""
    pinned = [m for m in manifest["models"] if m.get("repo") and m.get("revision")]
    return {str(m["repo"]): str(m["revision"]) for m in pinned}


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, tied ones copied apart (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def _fetch_image(wanted: Wanted, target: Path) -> Origin:
    """The timm backbone's weights into ``target/model.safetensors``; returns where they came from."""
    from safetensors.torch import save_file

    from shopee.pretrained import create_image_backbone, image_hub_origin

    model, source = create_image_backbone(
        wanted.name, pretrained=True, weights=wanted.weights, **BACKBONE_KWARGS
    )
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(_tensors(model.state_dict()), str(tmp / IMAGE_FILE), metadata={"timm_model": wanted.name})
    repo, revision = image_hub_origin(model) if source.startswith("timm ") else (None, None)
    return Origin(source, repo, revision)


def _text_weights_file(directory: Path, name: str) -> Path:
    for filename in TEXT_WEIGHT_FILES:
        if (directory / filename).is_file():
            return directory / filename
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    why = f"sharded weights ({sharded[0]}) are not supported" if sharded else "no weights file"
    raise ShopeeError(
        f"text model {name!r}: {directory}: {why}; fetch wants one of {', '.join(TEXT_WEIGHT_FILES)}"
    )


def _fetch_text(wanted: Wanted, target: Path) -> Origin:
    """Config, tokenizer files and the one weights file into ``target``; returns the source."""
    from shopee.pretrained import locate_text_model, snapshot_revision, text_files_for_bundle, text_hub_id

    directory, source = locate_text_model(wanted.name, wanted.weights)
    files = [*text_files_for_bundle(directory), _text_weights_file(Path(directory), wanted.name)]
    with atomic_dir(target, overwrite=True) as tmp:
        for file in files:
            shutil.copy2(file, tmp / file.name)  # follows the Hugging Face cache's symlinks to blobs
    revision = snapshot_revision(directory)  # a Hugging Face cache snapshot, downloaded or found
    return Origin(source, text_hub_id(wanted.name) if revision else None, revision)


def fetch(
    out: Path,
    wanted: Iterable[Wanted],
    *,
    refresh: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every ``wanted`` model into ``out`` (see the module's docstring); returns the manifest.

    A model already in the folder with its files intact is kept unless ``refresh``.
    """
    from shopee.kernel.bundle import file_list

    check_out(out)
    manifest = read_manifest(out)
    for item in wanted:
        known = _entry(manifest, item.kind, item.name)
        if known and not refresh and _intact(out, known):
            log(f"{item.kind:<5} {item.name}: already in {out} ({known['source']}), {size_mb(known):.1f} MB")
            continue
        folder = _folder_for(manifest, item.kind, item.name)
        fetch_one = _fetch_image if item.kind == "image" else _fetch_text
        origin = fetch_one(item, out / folder)
        source = origin.source
        entry = {
            "kind": item.kind,
            "name": item.name,
            "folder": folder,
            "source": source,
            "repo": origin.repo,
            "revision": origin.revision,
            "files": file_list(out / folder),
        }
        manifest = _merged(manifest, entry)
        write_json(out / WEIGHTS_MANIFEST, manifest)  # after each model: an interrupted fetch keeps it
        log(f"{item.kind:<5} {item.name}: {source}, {size_mb(entry):.1f} MB")
    return manifest


# ------------------------------------------------------------------------------------------------
# Kaggle dataset metadata
# ------------------------------------------------------------------------------------------------
def _user(user: str | None) -> str:
    """``--user``, else the Kaggle API's user ($KAGGLE_USERNAME, kaggle.json), else a placeholder."""
    from shopee.kernel.metadata import kaggle_user

    try:
        return kaggle_user(user)
    except ShopeeError:
        if user:
            raise
        return PLACEHOLDER_USER


def write_dataset_metadata(out: Path, user: str | None, name: str | None) -> dict[str, Any]:
    """``dataset-metadata.json``, written when absent, when ``--user`` or ``--name`` is given, or
    when the existing one still holds the placeholder user; an edited one is otherwise kept."""
    from shopee.kernel.metadata import dataset_metadata, default_title

    path = out / "dataset-metadata.json"
    if path.is_file() and user is None and name is None:
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
            if not str(existing.get("id", "")).startswith(f"{PLACEHOLDER_USER}/"):
                return existing
        except (OSError, ValueError, AttributeError):
            pass  # unreadable: write a good one
    slug = name or DEFAULT_NAME
    meta = dataset_metadata(_user(user), slug, default_title(slug))
    write_json(path, meta)
    return meta


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    from shopee.cli_args import add_set

    parser = sub.add_parser(
        "fetch", help="an experiment's pretrained weights into one folder for offline use (needs internet)"
    )
    parser.add_argument("experiments", nargs="*", metavar="EXP", help="experiment names or files (exp055)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="the folder (new, or one fetched before) [%(default)s]"
    )
    parser.add_argument(
        "--image-model", action="append", default=[], metavar="NAME", help="a timm model (repeatable)"
    )
    parser.add_argument(
        "--text-model", action="append", default=[], metavar="NAME", help="a Hugging Face model (repeatable)"
    )
    parser.add_argument("--refresh", action="store_true", help="fetch models already in the folder again")
    parser.add_argument(
        "--user",
        default=None,
        help=f"Kaggle user of the dataset id [$KAGGLE_USERNAME, kaggle.json, {PLACEHOLDER_USER}]",
    )
    parser.add_argument(
        "--name",
        default=None,
        help=f"dataset slug before '-dataset' [{DEFAULT_NAME}, or the folder's metadata]",
    )
    add_set(parser)
    parser.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> None:
    from shopee.kernel.metadata import dataset_upload_command

    out = Path(args.out)
    wanted = wanted_models(args.experiments, args.set, args.image_model, args.text_model)
    check_out(out)  # before any download
    manifest = fetch(out, wanted, refresh=args.refresh)
    meta = write_dataset_metadata(out, args.user, args.name)
    total = sum(size_mb(m) for m in manifest["models"])
    print(
        f"{out}: {len(manifest['models'])} models, {total:.1f} MB ({WEIGHTS_MANIFEST}, dataset-metadata.json)"
    )
    if str(meta.get("id", "")).startswith(f"{PLACEHOLDER_USER}/"):
        print(f"  the dataset id is {meta['id']}: pass --user NAME (or edit {out / 'dataset-metadata.json'})")
    print(
        f"upload as Kaggle dataset {meta.get('id')} (a new version later: kaggle datasets version -p {out} "
        "--dir-mode zip -m NOTE):"
    )
    print(f"  {dataset_upload_command(out)}")
    print(
        f"use it offline: export {WEIGHTS_ENV}={out.resolve()} (here), or attach the dataset to a Kaggle "
        f"notebook (its {WEIGHTS_MANIFEST} is found under {KAGGLE_INPUT})"
    )
    pins = hub_revisions_of(manifest)
    if pins:
        pinned = shlex.quote(json.dumps(pins))
        print(f"download the same commits elsewhere: export {HUB_REVISIONS_ENV}={pinned}")
    print(
        json.dumps(
            {
                "out": str(out),
                "models": [
                    {"kind": m["kind"], "name": m["name"], "mb": round(size_mb(m), 1)}
                    for m in manifest["models"]
                ],
                "mb": round(total, 1),
                "dataset": meta.get("id"),
            }
        )
    )
