"""The demo kernel on Kaggle's library versions: ``make kaggle-check`` (skipped otherwise).

``make kaggle-check`` installs requirements-kaggle.txt (Kaggle's 2026 GPU image as far as it is
known) into a second virtual environment with Python 3.12 and points ``SHOPEE_KAGGLE_PYTHON`` at
it. Models are trained, tuned and bundled here; only the notebook runs there, as on Kaggle.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from shopee.cli import main
from shopee.kernel.environment import MINIMUM_VERSIONS
from shopee.metrics import score_files

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_PYTHON = os.environ.get("SHOPEE_KAGGLE_PYTHON")
pytestmark = pytest.mark.skipif(not KAGGLE_PYTHON, reason="run by make kaggle-check (SHOPEE_KAGGLE_PYTHON)")


def test_demo_kernel_runs_on_kaggles_libraries(small_demo_dir: Path, tmp_path: Path, capsys) -> None:
    data = Path(shutil.copytree(small_demo_dir, tmp_path / "data"))
    out = tmp_path / "output"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for exp in ("exp001", "exp003"):
        for fold in ("0", "1"):
            cmd = [sys.executable, str(ROOT / "exp" / f"{exp}.py"), "--fold", fold, "--debug"]
            subprocess.run(
                [*cmd, "--data", str(data), "--output", str(out)], check=True, capture_output=True, env=env
            )
    opt = ["optimize-ensemble", "exp001", "exp003", "--data", str(data), "--output", str(out), "--name", "k"]
    assert main([*opt, "--blend-stages", "1"]) == 0  # embeddings only: the models must run there
    kernels = tmp_path / "kernels"
    build = ["build-kernel", "--ensemble", str(out / "ensembles" / "k.json"), "--name", "shopee-kaggle-check"]
    assert main([*build, "--user", "tester", "--out", str(kernels)]) == 0
    capsys.readouterr()

    run = ["run-kernel", str(kernels / "shopee-kaggle-check"), "--data", str(data), "--python", KAGGLE_PYTHON]
    code = main(run)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "embed:exp001/fold0, exp001/fold1" in printed.out  # image + text fold models ran there
    versions = dict(re.findall(r"^(\S+)\s+(\S+)\s+tested >= ", printed.out, flags=re.MULTILINE))
    assert versions["python"].startswith("3.12")
    for dist, oldest in MINIMUM_VERSIONS.items():  # ran on exactly the oldest versions supported
        assert versions[dist].split("+")[0] == oldest, (dist, versions[dist])

    # The same submission, give or take a borderline pair, as this environment's predict.
    submission = kernels / "shopee-kaggle-check-run" / "working" / "submission.csv"
    here = tmp_path / "here.csv"
    dataset = kernels / "shopee-kaggle-check-dataset"
    bundled = ["--ensemble", str(dataset / "ensemble.json"), "--output", str(dataset / "models")]
    assert main(["predict", *bundled, "--data", str(data), "--out", str(here)]) == 0
    kaggle_f1 = score_files(submission, data / "test_labels.csv")[0].f1
    here_f1 = score_files(here, data / "test_labels.csv")[0].f1
    a, b = pd.read_csv(submission), pd.read_csv(here)
    same = (a["matches"].str.split().map(set) == b["matches"].str.split().map(set)).mean()
    seconds = re.search(r"notebook ran in ([0-9.]+) s", printed.out).group(1)
    with capsys.disabled():
        print(f"\nkaggle-check: {', '.join(f'{k} {v}' for k, v in versions.items())}")
        print(
            f"kaggle-check: notebook ran in {seconds} s; test F1 {kaggle_f1:.4f} there, {here_f1:.4f} here; "
            f"{same:.1%} rows identical"
        )
    assert abs(kaggle_f1 - here_f1) < 0.01 and same > 0.95
