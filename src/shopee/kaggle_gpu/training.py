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

Two GPUs (``device_groups``): folds train two at a time, one per GPU, and an odd last fold
data-parallel over both. On paper (``plan``'s figures, two T4s on PCIe, no NVLink): two
independent folds use both GPUs fully, while data parallelism loses about 10 % to the gradient
all-reduce (1.8x, not 2x); so pairs go side by side (2 folds in T) and a fold left alone goes
data-parallel (1 fold in T / 1.8): five folds take 2.56 T, against 3 T one per GPU and 2.78 T
data-parallel throughout.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import shopee
from shopee.atomic import atomic_dir, write_json, write_text
from shopee.errors import ShopeeError
from shopee.gitinfo import source_state
from shopee.kernel import metadata as meta

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


def device_groups(folds: Sequence[int], gpus: int) -> list[tuple[list[int], str]]:
    """How the folds use the machine: ``(folds, --gpus)`` rounds for ``python -m shopee train``."""
    folds = list(folds)
    if gpus <= 0:
        return [(folds, "cpu")]
    if gpus == 1:
        return [(folds, "0")]
    paired = len(folds) - len(folds) % gpus
    rounds = []
    if paired:
        rounds.append((folds[:paired], ",".join(str(g) for g in range(gpus))))
    if folds[paired:]:
        rounds.append((folds[paired:], "+".join(str(g) for g in range(gpus))))
    return rounds


def estimate_hours(cfg: Any, folds: Sequence[int]) -> float:
    """Session hours on Kaggle's T4 x2 for ``folds`` of ``cfg`` on the real data (``plan``'s
    estimates, arranged as ``device_groups`` arranges the folds), plus half an hour of start-up,
    downloads and writing."""
    from shopee.plan import REAL_GROUPS, REAL_TRAIN_ROWS, estimate, measure

    n_classes = math.ceil(REAL_GROUPS * (cfg.n_folds - 1) / cfg.n_folds)
    machines = {m["machine"]: m for m in estimate(cfg, measure(cfg, n_classes), REAL_TRAIN_ROWS)["machines"]}
    one_gpu, both = machines["T4"]["fold_s"], machines["T4 x2 (Kaggle)"]["fold_s"]
    seconds = sum(
        (len(group) / 2 * one_gpu) if "," in gpus else len(group) * both
        for group, gpus in device_groups(folds, 2)
    )
    return seconds / 3600 + 0.5


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
) -> TrainingKernel:
    """Write the training notebook and its code dataset for ``folds`` of ``exp`` (a name or a file).

    ``data_dir``: the local competition data; its fold split goes into the dataset, and the
    notebook trains on that very split (so that the folds pull home and ensemble with local ones)."""
    from shopee.kernel.bundle import copy_package, file_list
    from shopee.launch import parse_folds
    from shopee.runner import load_experiment

    name, cfg = load_experiment(exp, list(overrides))
    exp_file = Path(exp) if Path(exp).suffix == ".py" else Path("exp") / f"{name}.py"
    folds = parse_folds(",".join(str(f) for f in folds), cfg.n_folds)
    slug = meta.check_slug(slug or f"{name}{TRAINING_SUFFIX}".replace("_", "-"))
    title = meta.kernel_title(slug, None)
    user = meta.kaggle_user(user)
    if resume_from is not None and (resume_from.count("/") != 1 or not all(resume_from.split("/"))):
        raise ShopeeError(f"--resume-from {resume_from!r}: expected a kernel as OWNER/SLUG")
    dataset_meta = meta.dataset_metadata(user, slug, title)
    kernel_meta = meta.kernel_metadata(user, slug, title, accelerator="NvidiaTeslaT4", private=True)
    kernel_meta["enable_internet"] = True  # training downloads its pretrained weights
    kernel_meta["kernel_sources"] = [resume_from] if resume_from else []
    hours = estimate_hours(cfg, folds)
    commit, changed = source_state(Path(shopee.__file__).resolve().parent)
    info = {
        "slug": slug,
        "kernel": kernel_meta["id"],
        "dataset": dataset_meta["id"],
        "exp": name,
        "folds": folds,
        "overrides": list(overrides),
        "debug": debug,
        "resume_from": resume_from,
        "estimate_hours": round(hours, 2),
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
        notebook_dir, dataset_dir, kernel_meta["id"], dataset_meta["id"], name, folds, hours
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
from shopee.kaggle_gpu.training import device_groups, write_run_record

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
stopped = ""
for folds, gpus in device_groups(FOLDS, GPUS):
    command = [sys.executable, "-m", "shopee", "train", str(CODE / "exp" / f"{EXP}.py")]
    command += ["--folds", ",".join(map(str, folds)), "--gpus", gpus, "--data", str(DATA)]
    command += ["--output", "output"]
    command += ["--resume", *(["--debug"] if DEBUG else []), *[a for s in OVERRIDES for a in ("--set", s)]]
    print(f"folds {folds} on {gpus}:", " ".join(command), flush=True)
    process = subprocess.Popen(command, start_new_session=True)
    try:
        process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:  # stop before Kaggle's limit: the version keeps its output
        os.killpg(process.pid, 15)
        process.wait()
        stopped = f"stopped at the session budget of {SESSION_HOURS} h"
        break
record = write_run_record(Path("output"), EXP, FOLDS, OVERRIDES, DEBUG, time.time() - started, stopped)
print(json.dumps(record))
"""


def _settings(info: dict[str, Any], dataset: str) -> str:
    return "\n".join(
        [
            f"SLUG = {info['slug']!r}",
            f"DATASET = {dataset!r}",
            f"EXP = {info['exp']!r}",
            f"FOLDS = {info['folds']!r}",
            f"OVERRIDES = {info['overrides']!r}  # --set KEY=VALUE",
            f"DEBUG = {info['debug']!r}",
            f"SESSION_HOURS = {SESSION_HOURS}  # Kaggle stops a GPU session at 12 h",
        ]
    )


def training_notebook(info: dict[str, Any], dataset: str) -> nbformat.NotebookNode:
    from shopee.kernel.environment import MINIMUM_VERSIONS

    needs = {**MINIMUM_VERSIONS, "pyarrow": "14.0", "tqdm": "4.60"}
    rounds = "; ".join(f"folds {f} on GPUs {g}" for f, g in device_groups(info["folds"], 2))
    intro = f"""\
# Train {info["exp"]} on Kaggle

Built by `python -m shopee kaggle train` at commit `{info["git_commit"]}` on {info["built_at"]}:
folds {info["folds"]} of `{info["exp"]}`{" (debug)" if info["debug"] else ""}, overrides
{info["overrides"] or "none"}. Internet on (pretrained weights download here), GPU T4 x2: {rounds}
(pairs side by side, an odd fold data-parallel over both). Estimated {info["estimate_hours"]:.1f} h
on the real data (`plan`). Each fold's outputs go to `output/{info["exp"]}/fold<k>/` exactly as local
training writes them; `python -m shopee kaggle pull {info["kernel"]}` brings them home. Training
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
def _unfinished_reason(output: Path, exp: str, fold: int) -> str:
    from shopee.outputs import partial_dir

    partial = partial_dir(output, exp, fold)
    metrics = partial / "metrics.json"
    if metrics.is_file():
        epochs = json.loads(metrics.read_text()).get("epochs", [])
        return f"unfinished after epoch {len(epochs)} (continue with --resume-from)"
    log = output / exp / "launch" / f"fold{fold}.log"
    if log.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["no output"])[-1][:200]
    return "not started"


def write_run_record(
    output: Path,
    exp: str,
    folds: Sequence[int],
    overrides: Sequence[str],
    debug: bool,
    seconds: float,
    stopped: str = "",
) -> dict[str, Any]:
    """``output/RUN_RECORD``: which of the requested folds finished, why the others did not."""
    from shopee.outputs import fold_dir, is_finished

    finished = [f for f in folds if is_finished(fold_dir(output, exp, f))]
    unfinished = {str(f): stopped or _unfinished_reason(output, exp, f) for f in folds if f not in finished}
    record = {
        "exp": exp,
        "folds": list(folds),
        "finished": finished,
        "unfinished": unfinished,
        "overrides": list(overrides),
        "debug": debug,
        "seconds": round(seconds, 1),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / RUN_RECORD, record)
    return record
