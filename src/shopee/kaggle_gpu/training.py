"""The training kernel: a notebook and a code dataset that train an experiment's folds on Kaggle.

Layout (``kernels/SLUG/`` and ``kernels/SLUG-dataset/``, as ``build-kernel`` writes its own)::

    SLUG/SLUG.ipynb, kernel-metadata.json     internet on (pretrained weights download there),
                                              GPU T4 x2, the competition and the code dataset
                                              attached, the previous version's output when resuming
    SLUG-dataset/dataset-metadata.json
    SLUG-dataset/shopee-train.json            manifest: experiment, folds, overrides, commit, files
    SLUG-dataset/shopee/                      the package source (no weights, no bench/demo)
    SLUG-dataset/exp/EXP.py                   the experiment file

The notebook finds its inputs, installs only what the image lacks, copies a previous version's
``output/`` in when one is attached (``kernel_sources``), and runs ``python -m shopee train`` with
``--resume``: finished folds are skipped, a fold cut at the last session's limit continues from its
last epoch. Each fold's outputs land in ``/kaggle/working/output/<exp>/fold<k>/`` exactly as local
training writes them. Training stops at ``SESSION_HOURS`` (below Kaggle's 12-hour limit, so that the
version ends normally and keeps its output), and ``output/shopee-train-run.json`` (``RUN_RECORD``)
says which folds finished and why the others did not.

Two GPUs (``device_groups``): folds train two at a time, one per GPU (two independent folds use
both GPUs fully, with nothing crossing PCIe), and an odd last fold either on one GPU or
data-parallel over both, as ``plan.lone_fold`` decides for the experiment: data parallelism
halves the compute but all-reduces every update's gradients over PCIe (0.74 GiB for exp051's
199 M parameters, ~0.3 s at an assumed 5 GB/s) and normalises BatchNorm over half the batch, so
it goes data-parallel only when each process keeps 16 rows (or ``sync_bn``) and it gains 15 %.
The recipes' batches of 8 to 16 keep their lone fold on one GPU.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import shopee
from shopee.atomic import atomic_dir, write_json, write_text
from shopee.constants import FULL_FOLD
from shopee.errors import ShopeeError
from shopee.gitinfo import source_state
from shopee.kernel import metadata as meta

if TYPE_CHECKING:
    from shopee.outputs import Fold

RUN_RECORD = "shopee-train-run.json"  # /kaggle/working/output/RUN_RECORD, written by the notebook
MANIFEST = "shopee-train.json"
SESSION_HOURS = 11.5  # Kaggle stops a GPU session at 12 hours: stop training before, keep the output
TRAINING_SUFFIX = "-train"  # default slug: <exp>-train


@dataclass(frozen=True)
class TrainingKernel:
    notebook_dir: Path
    dataset_dir: Path
    kernel_id: str
    dataset_id: str
    exp: str
    folds: list[int]
    estimate_hours: float  # plan's estimated session hours on T4 x2 for these folds
    full: bool = False  # a full-data run (--fold full) after the folds


def device_groups(
    folds: Sequence[int], gpus: int, lone_fold_gpus: int = 1, at_once: int = 2
) -> list[tuple[list[int], str]]:
    """How the folds use the machine: ``(folds, --gpus)`` rounds for ``python -m shopee train``:
    folds side by side, one per GPU; a fold left over on one GPU, or data-parallel over all of
    them when ``lone_fold_gpus`` > 1 (``plan.lone_fold`` decides). ``at_once`` 1 (the disk holds
    one training fold only, ``plan.disk``): every fold alone, placed as a lone fold."""
    folds = list(folds)
    if gpus <= 0:
        return [(folds, "cpu")]
    if gpus == 1:
        return [(folds, "0")]
    paired = len(folds) - len(folds) % gpus if at_once > 1 else 0
    rounds = []
    if paired:
        rounds.append((folds[:paired], ",".join(str(g) for g in range(gpus))))
    if folds[paired:]:
        lone = "+".join(str(g) for g in range(gpus)) if lone_fold_gpus > 1 else "0"
        rounds.append((folds[paired:], lone))
    return rounds


_ESTIMATES: dict[str, dict[str, Any]] = {}  # plan's estimate by config: measuring a recipe takes a minute


def kaggle_estimate(cfg: Any) -> dict[str, Any]:
    """``plan``'s estimate of ``cfg`` on the real data: times per machine and the lone fold's choice."""
    from shopee.plan import REAL_GROUPS, REAL_TRAIN_ROWS, estimate, measure

    key = cfg.to_json()
    if key not in _ESTIMATES:
        n_classes = math.ceil(REAL_GROUPS * (cfg.n_folds - 1) / cfg.n_folds)
        measured = measure(cfg, n_classes)
        _ESTIMATES[key] = {**estimate(cfg, measured, REAL_TRAIN_ROWS), "measured": measured}
    return _ESTIMATES[key]


def estimate_hours(cfg: Any, folds: Sequence[int]) -> float:
    """Session hours on Kaggle's T4 x2 for ``folds`` of ``cfg`` on the real data (``plan``'s
    estimates, arranged as ``device_groups`` arranges the folds), plus half an hour of start-up,
    downloads and writing."""
    est = kaggle_estimate(cfg)
    one_gpu = next(m for m in est["machines"] if m["machine"] == "T4")["fold_s"]  # a pair: two cores each
    lone = est["lone_fold"]
    alone = lone["ddp_fold_s"] if lone["gpus"] > 1 else lone["one_gpu_fold_s"]
    seconds = sum(
        (len(group) / 2 * one_gpu) if "," in gpus else len(group) * alone
        for group, gpus in device_groups(folds, 2, lone["gpus"], folds_at_once(cfg, len(folds)))
    )
    return seconds / 3600 + 0.5


def folds_at_once(cfg: Any, folds: int) -> int:
    """How many of a kernel's ``folds`` train side by side within Kaggle's disk (``plan.disk``:
    the training folds' checkpoints and the finished folds of the kernel's output); refused with
    one line when not even one at a time fits."""
    from shopee.plan import DISK_BUDGET_GB, REAL_TRAIN_ROWS, disk

    space = disk(cfg, kaggle_estimate(cfg)["measured"], REAL_TRAIN_ROWS, folds)
    if not space["folds_at_once"]:
        raise ShopeeError(
            f"{space['folds']} folds of this experiment need {space['peak_one_gb']:.1f} GB of "
            f"/kaggle/working even one at a time (a training fold {space['training_fold_gb']:.1f} GB, a "
            f"finished one {space['finished_fold_gb']:.2f} GB), over the {DISK_BUDGET_GB:.0f} GB planned: "
            "train fewer folds per kernel (--folds) or a smaller model"
        )
    return space["folds_at_once"]


def full_run_hours(cfg: Any) -> float:
    """Hours of a full-data run on Kaggle's T4 x2, placed as a lone fold (``full_data_command``):
    a lone fold's time (``estimate_hours`` of one fold, less its start-up) for n/(n-1) as many
    training rows; its validation and dense passes, which a full-data run skips, are left in as a
    margin."""
    one_fold = estimate_hours(cfg, [0]) - 0.5
    return one_fold * cfg.n_folds / max(cfg.n_folds - 1, 1)


def parse_training_folds(spec: str, n_folds: int) -> tuple[list[int], bool]:
    """``--folds`` of ``kaggle train``: what ``shopee train`` takes (``0-4``, ``0,2``, ``all``),
    and ``full`` alone or after them (``all,full``): (the fold numbers, whether the full-data run
    follows them)."""
    from shopee.launch import parse_folds

    parts = [part.strip() for part in spec.split(",")]
    full = FULL_FOLD in parts
    rest = ",".join(part for part in parts if part != FULL_FOLD)
    if not rest:
        if not full:
            raise ShopeeError(f"--folds {spec!r}: expected fold numbers such as 0-4, all, or full")
        return [], True
    return parse_folds(rest, n_folds), full


def training_slug(exp_name: str, slug: str | None = None) -> str:
    """The training kernel's slug: ``slug`` checked, or ``<exp>-train``."""
    return meta.check_slug(slug or f"{exp_name}{TRAINING_SUFFIX}".replace("_", "-"))


def next_slug(slug: str) -> str:
    """``exp003-train`` -> ``exp003-train-2`` -> ``exp003-train-3``: a continuation's kernel."""
    stem, _, number = slug.rpartition("-")
    return f"{stem}-{int(number) + 1}" if stem and number.isdigit() else f"{slug}-2"


def check_resume_from(resume_from: str, kernel_id: str) -> None:
    """``--resume-from`` names another kernel as OWNER/SLUG: Kaggle does not attach a kernel's own
    output to a new version of itself, so a continuation goes under another slug."""
    if resume_from.count("/") != 1 or not all(resume_from.split("/")):
        raise ShopeeError(f"--resume-from {resume_from!r}: expected a kernel as OWNER/SLUG")
    if resume_from.lower() == kernel_id.lower():
        slug = kernel_id.split("/")[1]
        raise ShopeeError(
            f"--resume-from {resume_from}: that is the kernel being pushed, and Kaggle does not attach a "
            f"kernel's output to itself; push the continuation under another slug (--slug {next_slug(slug)})"
        )


def full_data_command(
    exp_file: Path, devices: str, data: Path, debug: bool, overrides: Sequence[str]
) -> list[str]:
    """``python exp/EXP.py --fold full --resume ...`` for the training notebook, on ``devices`` as
    ``device_groups`` writes them: ``0+1`` data-parallel under torchrun, ``0`` or ``cpu`` one
    process. The full-data run goes where a lone fold would (``shopee train --folds`` takes fold
    numbers only, so the notebook starts the experiment file itself)."""
    import sys

    script = [str(exp_file), "--fold", FULL_FOLD, "--data", str(data), "--output", "output", "--resume"]
    script += ["--slim-weights"]  # Kaggle's disk: what a kernel ships
    script += ["--debug"] if debug else []
    script += [arg for setting in overrides for arg in ("--set", setting)]
    processes = 1 if devices == "cpu" else len(devices.split("+"))
    if processes > 1:
        run = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        return [sys.executable, *run, *script]
    return [sys.executable, *script]


def _ship_folds(data_dir: Path, n_folds: int, dataset: Path) -> None:
    """The local data's fold split (computed and saved beside the data if it was not yet)."""
    from shopee.data import read_split
    from shopee.folds import folds_filename, load_folds, write_folds

    train = read_split(data_dir, "train", check_images=False)
    write_folds(dataset / folds_filename(n_folds), train, load_folds(data_dir, train, n_folds))


def build_training_kernel(
    exp: str,
    folds: list[int],
    *,
    user: str | None = None,
    out: Path = Path("kernels"),
    overrides: Sequence[str] = (),
    slug: str | None = None,
    resume_from: str | None = None,
    debug: bool = False,
    overwrite: bool = False,
    data_dir: Path | None = None,
    full: bool = False,
) -> TrainingKernel:
    """Write the training notebook and its code dataset for ``folds`` of ``exp`` (a name or a file),
    and with ``full`` a full-data run after them (``--fold full``: it takes its epochs from the
    folds when early stopping is on, so it goes last).

    ``data_dir``: the local competition data; its fold split goes into the dataset, and the
    notebook trains on that very split (so that the folds pull home and ensemble with local ones)."""
    from shopee.kernel.bundle import copy_package, file_list
    from shopee.launch import parse_folds
    from shopee.pretrained import hub_revisions
    from shopee.runner import load_experiment

    name, cfg = load_experiment(exp, list(overrides))
    exp_file = Path(exp) if Path(exp).suffix == ".py" else Path("exp") / f"{name}.py"
    folds = parse_folds(",".join(str(f) for f in folds), cfg.n_folds) if folds else []
    if not folds and not full:
        raise ShopeeError("--folds: no fold to train (fold numbers, all, or full)")
    slug = training_slug(name, slug)
    title = meta.kernel_title(slug, None)
    user = meta.kaggle_user(user)
    dataset_meta = meta.dataset_metadata(user, slug, title)
    kernel_meta = meta.kernel_metadata(user, slug, title, accelerator="NvidiaTeslaT4", private=True)
    if resume_from is not None:
        check_resume_from(resume_from, kernel_meta["id"])
    kernel_meta["enable_internet"] = True  # training downloads its pretrained weights
    kernel_meta["kernel_sources"] = [resume_from] if resume_from else []
    hours = (estimate_hours(cfg, folds) if folds else 0.5) + (full_run_hours(cfg) if full else 0.0)
    lone = kaggle_estimate(cfg)["lone_fold"]
    at_once = folds_at_once(cfg, len(folds) + int(full))  # refuses when even one fold cannot fit
    commit, changed = source_state(Path(shopee.__file__).resolve().parent)
    info = {
        "slug": slug,
        "kernel": kernel_meta["id"],
        "dataset": dataset_meta["id"],
        "exp": name,
        "folds": folds,
        "full": full,
        "overrides": list(overrides),
        "debug": debug,
        "resume_from": resume_from,
        "hub_revisions": hub_revisions(),  # fetch's pins, when set here: the downloads there take them
        "estimate_hours": round(hours, 2),
        "lone_fold_gpus": lone["gpus"],
        "folds_at_once": at_once,
        "lone_fold_why": lone["why"],
        "git_commit": commit + ("-dirty" if changed else ""),
        "shopee_version": shopee.__version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    notebook_dir, dataset_dir = Path(out) / slug, Path(out) / (slug + meta.DATASET_SUFFIX)
    for target in (notebook_dir, dataset_dir):
        if target.exists() and any(target.iterdir()) and not overwrite:
            marker = target / (MANIFEST if target == dataset_dir else "kernel-metadata.json")
            if not marker.is_file():
                raise ShopeeError(f"{target}: holds something else than a training kernel; pass --overwrite")
    Path(out).mkdir(parents=True, exist_ok=True)
    with atomic_dir(dataset_dir, overwrite=True) as tmp:
        write_json(tmp / "dataset-metadata.json", dataset_meta)
        copy_package(tmp / "shopee")
        (tmp / "exp").mkdir()
        write_text(tmp / "exp" / f"{name}.py", exp_file.read_text())
        if data_dir is not None:
            _ship_folds(Path(data_dir), cfg.n_folds, tmp)
        write_json(tmp / MANIFEST, {**info, "files": file_list(tmp)})
    notebook = training_notebook(info, dataset_meta["id"])
    with atomic_dir(notebook_dir, overwrite=True) as tmp:
        write_text(tmp / f"{slug}.ipynb", nbformat.writes(notebook))
        write_json(tmp / "kernel-metadata.json", kernel_meta)
    return TrainingKernel(
        notebook_dir, dataset_dir, kernel_meta["id"], dataset_meta["id"], name, folds, hours, full
    )


# ------------------------------------------------------------------------------------------------
# the notebook
# ------------------------------------------------------------------------------------------------
FIND_INPUTS = """\
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Kaggle mounts the competition, the code dataset and (when resuming) the previous version's output
# under /kaggle/input; for a local run SHOPEE_INPUT names another root (run-kernel sets it up).
INPUT_ROOT = Path(os.environ.get("SHOPEE_INPUT", "/kaggle/input"))


def find(root: Path, name: str, keep, max_depth: int = 5) -> list:
    found = []
    for folder, subdirs, files in os.walk(root, followlinks=True):
        if len(Path(folder).relative_to(root).parts) >= max_depth:
            subdirs.clear()
        subdirs[:] = [d for d in subdirs if not d.endswith("_images")]  # 32,000 files each
        if name in files and keep(json.loads(Path(folder, name).read_text())):
            found.append(Path(folder))
    return found


CODE = find(INPUT_ROOT, "MANIFEST", lambda m: m.get("slug") == SLUG)
if not CODE:
    raise FileNotFoundError(f"no MANIFEST of {SLUG!r} under {INPUT_ROOT}: add the dataset {DATASET}")
CODE = CODE[0]
sys.path.insert(0, str(CODE))  # the dataset's shopee package comes first, here and in the folds
os.environ["PYTHONPATH"] = os.pathsep.join([str(CODE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
if HUB_REVISIONS:  # pretrained weights and tokenizers download at the commits fetch recorded
    os.environ["SHOPEE_HUB_REVISIONS"] = json.dumps(HUB_REVISIONS)
PREVIOUS = find(INPUT_ROOT, "RUN_RECORD", lambda r: r.get("exp") == EXP)
print(f"code {CODE}; previous output: {PREVIOUS[0] if PREVIOUS else 'none'}")
""".replace("MANIFEST", MANIFEST).replace("RUN_RECORD", RUN_RECORD)

ENVIRONMENT = """\
# Install only what the image lacks (internet is on); print the versions training runs on.
import importlib.metadata

NEEDED = NEEDS
missing = []
for dist, minimum in NEEDED.items():
    try:
        print(f"{dist:<16}{importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        missing.append(f"{dist}>={minimum}")
if missing:
    print("installing", ", ".join(missing))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], check=False)
"""

RESTORE = """\
# A previous version's output (kernel_sources): its finished folds are kept, its unfinished ones
# continue from their last epoch (--resume).
OUTPUT = Path("output")
if PREVIOUS:
    source = PREVIOUS[0] / EXP
    if source.is_dir():
        shutil.copytree(source, OUTPUT / EXP, dirs_exist_ok=True)
        print(f"restored {sorted(p.name for p in (OUTPUT / EXP).iterdir())} from {source}")
"""

TRAIN = """\
import time

import torch

from shopee.data import find_data_dir
from shopee.kaggle_gpu.training import device_groups, full_data_command, write_run_record

DATA = find_data_dir(os.environ.get("SHOPEE_DATA") or INPUT_ROOT)
SPLIT = sorted(CODE.glob("folds-*.csv"))  # the user's fold split, so that the folds pull home
if SPLIT:
    from shopee.data import read_split
    from shopee.folds import install_folds

    n_folds = int(SPLIT[0].stem.split("-")[1])
    train = read_split(DATA, "train", check_images=False)
    print("fold split:", install_folds(DATA, train, SPLIT[0], n_folds))
GPUS = torch.cuda.device_count()
started = time.time()
deadline = started + SESSION_HOURS * 3600


def run_until_deadline(command: list, log=None) -> str:
    # Why the run was stopped: "" when it ended by itself; else the session budget ran out, and
    # the run is stopped before Kaggle's limit so that the version keeps its output.
    errors = subprocess.STDOUT if log else None
    process = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=errors)
    try:
        process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 15)
        process.wait()
        return f"stopped at the session budget of {SESSION_HOURS} h"
    return ""


stopped = ""
for folds, gpus in device_groups(FOLDS, GPUS, LONE_FOLD_GPUS, FOLDS_AT_ONCE) if FOLDS else []:
    command = [sys.executable, "-m", "shopee", "train", str(CODE / "exp" / f"{EXP}.py")]
    command += ["--folds", ",".join(map(str, folds)), "--gpus", gpus, "--data", str(DATA)]
    command += ["--output", "output"]
    command += ["--resume", "--slim-weights", *(["--debug"] if DEBUG else [])]
    command += [a for s in OVERRIDES for a in ("--set", s)]
    print(f"folds {folds} on {gpus}:", " ".join(command), flush=True)
    stopped = run_until_deadline(command)
    if stopped:
        break
if FULL and not stopped:  # last: with early stopping it takes its epochs from the folds
    _, devices = device_groups([0], GPUS, LONE_FOLD_GPUS)[0]  # where a lone fold goes
    command = full_data_command(CODE / "exp" / f"{EXP}.py", devices, DATA, DEBUG, OVERRIDES)
    log = Path("output") / EXP / "launch" / "full.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"full-data run on {devices}, log {log}:", " ".join(command), flush=True)
    with open(log, "a") as sink:
        stopped = run_until_deadline(command, sink)
REQUESTED = [*FOLDS, *(["full"] if FULL else [])]
record = write_run_record(Path("output"), EXP, REQUESTED, OVERRIDES, DEBUG, time.time() - started, stopped)
print(json.dumps(record))
"""


def _settings(info: dict[str, Any], dataset: str) -> str:
    return "\n".join(
        [
            f"SLUG = {info['slug']!r}",
            f"DATASET = {dataset!r}",
            f"EXP = {info['exp']!r}",
            f"FOLDS = {info['folds']!r}",
            f"FULL = {bool(info.get('full'))!r}  # a full-data run (--fold full) after the folds",
            f"OVERRIDES = {info['overrides']!r}  # --set KEY=VALUE",
            f"DEBUG = {info['debug']!r}",
            f"SESSION_HOURS = {SESSION_HOURS}  # Kaggle stops a GPU session at 12 h",
            f"HUB_REVISIONS = {info.get('hub_revisions', {})!r}  # repository -> commit (fetch's pins)",
            f"FOLDS_AT_ONCE = {info.get('folds_at_once', 2)!r}  # side by side within the disk (plan)",
            f"LONE_FOLD_GPUS = {info.get('lone_fold_gpus', 1)!r}  # an odd fold's GPUs (plan: "
            f"{info.get('lone_fold_why', 'not planned')})",
        ]
    )


def training_notebook(info: dict[str, Any], dataset: str) -> nbformat.NotebookNode:
    from shopee.kernel.environment import MINIMUM_VERSIONS

    needs = {**MINIMUM_VERSIONS, "pyarrow": "14.0", "tqdm": "4.60"}
    rounds = (
        "; ".join(
            f"folds {f} on GPUs {g}"
            for f, g in device_groups(
                info["folds"], 2, info.get("lone_fold_gpus", 1), info.get("folds_at_once", 2)
            )
        )
        if info["folds"]
        else ""
    )
    if info.get("full"):
        alone = device_groups([0], 2, info.get("lone_fold_gpus", 1))[0][1]
        rounds = "; ".join(filter(None, [rounds, f"then the full-data run (--fold full) on GPUs {alone}"]))
    lone_said = (
        "data-parallel over both" if info.get("lone_fold_gpus", 1) > 1 else "on one GPU"
    ) + f": {info.get('lone_fold_why', 'not planned')}"
    side = (
        "two folds side by side"
        if info.get("folds_at_once", 2) > 1
        else "one fold at a time: two training folds' checkpoints would not fit the disk"
    )
    what = f"folds {info['folds']}{' and full' if info.get('full') else ''} of `{info['exp']}`"
    intro = f"""\
# Train {info["exp"]} on Kaggle

Built by `python -m shopee kaggle train` at commit `{info["git_commit"]}` on {info["built_at"]}:
{what}{" (debug)" if info["debug"] else ""}, overrides
{info["overrides"] or "none"}. Internet on (pretrained weights download here), GPU T4 x2: {rounds}
({side}, a fold alone {lone_said}). Estimated {info["estimate_hours"]:.1f} h
on the real data (`plan`). Each fold's outputs go to `output/{info["exp"]}/fold<k>/` as local
training writes them with `--slim-weights` (float16 weights without the margin heads, for Kaggle's
20 GB disk; the full-data run's to `output/{info["exp"]}/full/`); `python -m shopee kaggle pull
{info["kernel"]}` brings them home. Training
stops at {SESSION_HOURS} h; a new version with this one's output attached
(`kaggle train ... --resume-from {info["kernel"]}`) continues where it stopped.
"""
    return new_notebook(
        cells=[
            new_markdown_cell(intro),
            new_code_cell(_settings(info, dataset)),
            new_code_cell(FIND_INPUTS),
            new_code_cell(ENVIRONMENT.replace("NEEDS", repr(needs))),
            new_code_cell(RESTORE),
            new_code_cell(TRAIN),
        ],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "shopee": {"slug": info["slug"], "exp": info["exp"], "git_commit": info["git_commit"]},
        },
    )


# ------------------------------------------------------------------------------------------------
# the notebook's side: what it leaves behind
# ------------------------------------------------------------------------------------------------
def _unfinished_reason(output: Path, exp: str, fold: Fold) -> str:
    from shopee.outputs import fold_name, partial_dir

    partial = partial_dir(output, exp, fold)
    metrics = partial / "metrics.json"
    if metrics.is_file():
        epochs = json.loads(metrics.read_text()).get("epochs", [])
        return f"unfinished after epoch {len(epochs)} (continue with --resume-from)"
    log = output / exp / "launch" / f"{fold_name(fold)}.log"
    if log.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["no output"])[-1][:200]
    return "not started"


def _started_over(output: Path, exp: str, fold: Fold) -> str:
    """The last "started over" line of the fold's log (finished or not), "" when there is none."""
    from shopee.outputs import fold_dir, partial_dir
    from shopee.train import STARTED_OVER

    for folder in (fold_dir(output, exp, fold), partial_dir(output, exp, fold)):
        log = folder / "train.log"
        if log.is_file():
            lines = [line for line in log.read_text(errors="replace").splitlines() if STARTED_OVER in line]
            if lines:
                return lines[-1].split(STARTED_OVER, 1)[1].strip()[:300]
    return ""


def write_run_record(
    output: Path,
    exp: str,
    folds: Sequence[Fold],
    overrides: Sequence[str],
    debug: bool,
    seconds: float,
    stopped: str = "",
) -> dict[str, Any]:
    """``output/RUN_RECORD``: which of the requested folds (``full`` for the full-data run)
    finished, why the others did not, and which started over because a restored checkpoint could
    not be resumed (``train.STARTED_OVER`` lines of their logs)."""
    from shopee.outputs import fold_dir, is_finished

    finished = [f for f in folds if is_finished(fold_dir(output, exp, f))]
    unfinished = {str(f): stopped or _unfinished_reason(output, exp, f) for f in folds if f not in finished}
    record = {
        "exp": exp,
        "folds": list(folds),
        "finished": finished,
        "unfinished": unfinished,
        "started_over": {str(f): why for f in folds if (why := _started_over(output, exp, f))},
        "overrides": list(overrides),
        "debug": debug,
        "seconds": round(seconds, 1),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / RUN_RECORD, record)
    return record
