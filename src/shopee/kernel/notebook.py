"""The submission notebook: short cells a person can read, all real work imported from ``shopee``.

Only the cell that finds the inputs is written out in full: it runs before the bundled package is
on ``sys.path``. Everything after it calls the same functions as ``python -m shopee predict``.
"""

from __future__ import annotations

from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from shopee.kernel.bundle import MANIFEST
from shopee.kernel.environment import environment_cell

FIND_INPUTS = '''\
import json
import os
import subprocess
import sys
from pathlib import Path

# Kaggle mounts the competition data and this kernel's dataset under /kaggle/input; for a local
# run, SHOPEE_INPUT names another input root (python -m shopee run-kernel sets it up).
INPUT_ROOT = Path(os.environ.get("SHOPEE_INPUT", "/kaggle/input"))


def find_bundle(root: Path, slug: str, max_depth: int = 4) -> Path:
    """The folder under root whose MANIFEST names this kernel (symlinks followed)."""
    for folder, subdirs, files in os.walk(root, followlinks=True):
        if len(Path(folder).relative_to(root).parts) >= max_depth:
            subdirs.clear()
        if "MANIFEST" in files:
            if json.loads(Path(folder, "MANIFEST").read_text()).get("slug") == slug:
                return Path(folder)
    raise FileNotFoundError(f"no MANIFEST of {slug!r} under {root}: add the dataset {DATASET} as an input")


BUNDLE = find_bundle(INPUT_ROOT, SLUG)
sys.path.insert(0, str(BUNDLE))  # the bundled shopee package comes first
wheels = sorted(str(p) for p in (BUNDLE / "wheels").glob("*.whl"))
if wheels:
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
    subprocess.run([*pip, *wheels], check=True)
print(f"bundle {BUNDLE}, {len(wheels)} wheels installed")
'''.replace("MANIFEST", MANIFEST)

LOAD = """\
import pandas as pd

import shopee
from shopee.data import find_data_dir
from shopee.kernel.bundle import open_bundle
from shopee.predict import predict, print_timings, score_on_train, write_submission

if not Path(shopee.__file__).resolve().is_relative_to(BUNDLE.resolve()):
    raise ImportError(f"shopee was imported from {shopee.__file__}, not from the bundle {BUNDLE}")
bundle = open_bundle(BUNDLE)  # every file checked against the manifest's sizes and checksums
print(bundle.describe())
DATA = find_data_dir(os.environ.get("SHOPEE_DATA") or INPUT_ROOT)
N_TEST = len(pd.read_csv(DATA / "test.csv", usecols=["posting_id"]))
CV_MODE = N_TEST <= 3  # the public test.csv has 3 rows: score a slice of train as well
print(f"data {DATA}: {N_TEST} test rows, CV mode {CV_MODE}")
"""

PREDICT = """\
def run(split: str, limit: int | None = None) -> pd.DataFrame:
    timings: dict[str, float] = {}
    rows = predict(
        bundle.ensemble_path,
        DATA,
        output=bundle.models,
        split=split,
        limit=limit,
        image_policy=IMAGE_POLICY,
        backend=BACKEND,
        tta=TTA,
        text_dirs=bundle.text_dirs,
        timings=timings,
    )
    print(f"{split}: {len(rows)} rows, seconds per stage:")
    print_timings(timings)
    return rows
"""

CV = """\
if CV_MODE:
    cv = run("train", CV_ROWS)
    score = score_on_train(cv, DATA)
    print(f"CV F1 {score.f1:.4f} on {len(cv)} train rows")
    print(f"precision {score.precision:.4f}, recall {score.recall:.4f}")
    print("(optimistic: the fold models were trained on most of these rows)")
"""

SUBMIT = """\
submission = run("test")
write_submission(submission, Path("submission.csv"))
print(f"wrote submission.csv: {len(submission)} rows")
submission.head()
"""


def _settings(slug: str, dataset: str, settings: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Chosen at build time; edit them here on Kaggle if you like.",
            f"SLUG = {slug!r}",
            f"DATASET = {dataset!r}",
            f"TTA = {settings['tta']!r}  # None or 'flip' (mirrored images too, embeddings averaged)",
            f"IMAGE_POLICY = {settings['image_policy']!r}  # unreadable image: blank keeps the row",
            f"BACKEND = {settings['backend']!r}  # kNN: torch, faiss, cuml or auto",
            f"CV_ROWS = {settings['cv_rows']!r}  # CV mode: train rows scored (whole groups); None = all",
        ]
    )


def make_notebook(
    info: dict[str, Any], dataset: str, folds: list[str], wheels: list[str] | None = None
) -> nbformat.NotebookNode:
    """The notebook for the kernel described by ``info`` (the manifest's build fields); ``wheels``
    are the names of the bundled wheels (the environment check counts on them)."""
    heldout = f"{info['cv_f1_heldout']:.4f}" if info.get("cv_f1_heldout") is not None else "not computed"
    thresholds = (
        "follow the test's row count (the size curve; the notebook prints them)"
        if info.get("by_size")
        else "as tuned"
    )
    if info.get("pair_model"):
        thresholds = "the pair model's probability threshold and min2, " + (
            "following the test's row count" if info.get("by_size") else "as tuned"
        )
    expected = info.get("expected_f1")
    expected = (
        f"{expected['f1']:.4f} +- {expected['se']:.4f} on {expected['rows']:,} rows of unseen groups "
        "(the CV's F1 by size, scored out of sample and extrapolated"
        + (f"; {expected['carried_over']})" if expected.get("carried_over") else ")")
        if expected
        else "not estimated (no size curve)"
    )
    models = "Fold models"
    of_folds = ", of the fold models it was tuned on" if info.get("models") == "full" else ""
    if info.get("models") == "full":
        models = "Full-data models (every train row; the thresholds are the fold models' carried over)"
    runtime = (
        f"{info['estimated_runtime_s'] / 60:.0f} min" if info.get("estimated_runtime_s") else "not estimated"
    )
    intro = f"""\
# {info["title"]}

Submission notebook for Kaggle's *Shopee - Price Match Guarantee*, built by
`python -m shopee build-kernel` from the ensemble **{info["ensemble"]}** at commit
`{info["git_commit"]}` on {info["built_at"]}.

* Ensemble CV F1 {info["cv_f1"]:.4f} ({info["objective"]} objective{of_folds}), held-out estimate {heldout}.
* CV F1 expected on the test: {expected}.
* Thresholds: {thresholds}.
* {models}: {", ".join(folds)}; matching members: {", ".join(info["members"])}.
* Estimated runtime on 70,000 test rows (GPU T4 x2, on paper): {runtime}.
* Inputs: the competition data and the dataset `{dataset}` (internet off).
* Accelerator: {info["accelerator"]}; the fold models are spread over every GPU it has.
* The first cell checks the image's libraries against the versions the bundle was tested with.
* With 3 test rows or fewer (the public `test.csv`) it also scores a slice of train and prints the F1.
* Run it locally with `python -m shopee run-kernel kernels/{info["slug"]} --data DIR`.
"""
    nb = new_notebook(
        cells=[
            new_markdown_cell(intro),
            new_code_cell(environment_cell(wheels or [], info["requirements"])),
            new_code_cell(_settings(info["slug"], dataset, info["settings"])),
            new_code_cell(FIND_INPUTS),
            new_code_cell(LOAD),
            new_code_cell(PREDICT),
            new_code_cell(CV),
            new_code_cell(SUBMIT),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "shopee": dict(info),
        },
    )
    nbformat.validate(nb)
    return nb
