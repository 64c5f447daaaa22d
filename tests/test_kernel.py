"""build-kernel and run-kernel: the offline notebook, executed end to end against the demo data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from shopee.cli import main
from shopee.kernel import build as kernel_build
from shopee.kernel import open_bundle
from shopee.kernel.bundle import MANIFEST, sha256

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys, code: int = 0) -> str:
    assert main(argv) == code, capsys.readouterr().err
    captured = capsys.readouterr()
    return captured.out if code == 0 else captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_demo_dir: Path) -> tuple[Path, Path]:
    """exp001 (image + text) debug-trained on folds 0 and 1 of a copy of the small demo, whose first
    test image is broken, and the ensemble ``t`` tuned on them."""
    root = tmp_path_factory.mktemp("kernel")
    data = Path(shutil.copytree(small_demo_dir, root / "data"))
    first = pd.read_csv(data / "test.csv")["image"].iloc[0]
    (data / "test_images" / first).write_bytes(b"not a jpeg")
    out = root / "output"
    for fold in ("0", "1"):  # relative paths, as a user types them
        exp = [sys.executable, str(ROOT / "exp" / "exp001.py"), "--fold", fold, "--debug"]
        subprocess.run(
            [*exp, "--data", "data", "--output", "output"], check=True, capture_output=True, cwd=root
        )
    argv = ["optimize-ensemble", "exp001", "--data", "data", "--output", "output", "--name", "t"]
    here = os.getcwd()
    os.chdir(root)
    try:
        assert main([*argv, "--tfidf", "--blend-stages", "1"]) == 0
    finally:
        os.chdir(here)
    return out, data


@pytest.fixture(scope="module")
def kernel(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, _ = trained
    kernels = tmp_path_factory.mktemp("kernels")
    argv = ["build-kernel", "--ensemble", str(out / "ensembles" / "t.json"), "--name", "shopee-t1"]
    assert main([*argv, "--user", "tester", "--out", str(kernels), "--tta", "flip"]) == 0
    return kernels


def test_notebook_submission_equals_cli_predict(trained, kernel: Path, tmp_path: Path, capsys) -> None:
    out, data = trained
    printed = _run(
        ["run-kernel", str(kernel / "shopee-t1"), "--data", str(data), "--work", str(tmp_path)], capsys
    )
    submission = tmp_path / "working" / "submission.csv"
    assert json.loads(printed.strip().splitlines()[-1])["submission"] == str(submission)
    assert "CV mode False" in printed and "embed:exp001/fold0, exp001/fold1" in printed and "total" in printed

    # Row for row what the CLI's predict gives with the bundle's (slim) fold models.
    cli = tmp_path / "cli.csv"
    dataset = kernel / "shopee-t1-dataset"
    bundled = ["--ensemble", str(dataset / "ensemble.json"), "--output", str(dataset / "models")]
    _run(["predict", *bundled, "--data", str(data), "--out", str(cli), "--tta", "flip"], capsys)
    assert submission.read_text() == cli.read_text()

    rows = pd.read_csv(submission, dtype=str)
    test = pd.read_csv(data / "test.csv", dtype=str)
    assert list(rows["posting_id"]) == list(test["posting_id"])  # each posting once, the broken image too
    for pid, matches in zip(rows["posting_id"], rows["matches"], strict=True):
        assert matches.split(" ")[0] == pid

    # The executed notebook is kept, and says what it was built from.
    executed = json.loads((tmp_path / "working" / "shopee-t1.ipynb").read_text())
    intro = "".join(executed["cells"][0]["source"])
    commit = executed["metadata"]["shopee"]["git_commit"]
    assert "**t**" in intro and commit in intro and commit != ""


def _tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module, ``shopee_probe``."""
    wheel = folder / "shopee_probe-0.1-py3-none-any.whl"
    files = {
        "shopee_probe.py": "VALUE = 42\n",
        "shopee_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: shopee-probe\nVersion: 0.1\n",
        "shopee_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},," + "\n" for name in [*files, "shopee_probe-0.1.dist-info/RECORD"])
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in {**files, "shopee_probe-0.1.dist-info/RECORD": record}.items():
            zf.writestr(name, text)
    return wheel


def test_cv_mode_and_bundled_wheels(trained, tmp_path: Path, capsys, monkeypatch) -> None:
    """With a 3-row test.csv the notebook also scores train; bundled wheels are pip-installed."""
    out, data = trained
    small = Path(shutil.copytree(data, tmp_path / "data"))
    pd.read_csv(small / "test.csv").head(3).to_csv(small / "test.csv", index=False)
    kernels = tmp_path / "kernels"
    argv = ["build-kernel", "--ensemble", str(out / "ensembles" / "t.json"), "--name", "shopee-t2"]
    _run([*argv, "--user", "tester", "--out", str(kernels), "--wheel", str(_tiny_wheel(tmp_path))], capsys)
    monkeypatch.setenv("PIP_TARGET", str(tmp_path / "site"))  # pip installs there, not into this venv
    printed = _run(["run-kernel", str(kernels / "shopee-t2"), "--data", str(small)], capsys)
    assert "1 wheels installed" in printed and (tmp_path / "site" / "shopee_probe.py").is_file()
    assert "CV mode True" in printed
    f1 = float(re.search(r"CV F1 ([0-9.]+) on \d+ train rows", printed).group(1))
    assert 0 < f1 <= 1
    assert len(pd.read_csv(kernels / "shopee-t2-run" / "working" / "submission.csv")) == 3


def test_a_damaged_bundle_fails_in_one_line(trained, tmp_path: Path, capsys) -> None:
    out, data = trained
    kernels = tmp_path / "kernels"
    argv = ["build-kernel", "--ensemble", str(out / "ensembles" / "t.json"), "--name", "shopee-t3"]
    _run([*argv, "--user", "tester", "--out", str(kernels)], capsys)
    (kernels / "shopee-t3-dataset" / "models" / "exp001" / "fold1" / "model.safetensors").unlink()
    err = _run(["run-kernel", str(kernels / "shopee-t3"), "--data", str(data)], capsys, code=2).strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert (
        "a cell failed (ShopeeError:" in err
        and "fold1/model.safetensors: listed in the manifest but missing" in err
    )
    assert (kernels / "shopee-t3-run" / "working" / "shopee-t3.ipynb").is_file()  # kept for reading
    assert not (kernels / "shopee-t3-run" / "working" / "submission.csv").exists()


def test_metadata_and_manifest(trained, kernel: Path) -> None:
    out, _ = trained
    meta = json.loads((kernel / "shopee-t1" / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/shopee-t1" and meta["code_file"] == "shopee-t1.ipynb"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # GPU T4 x2 (without it: a P100, unusable in 2026)
    assert meta["competition_sources"] == ["shopee-product-matching"]
    assert meta["dataset_sources"] == ["tester/shopee-t1-dataset"]
    assert meta["kernel_type"] == "notebook" and meta["language"] == "python"
    assert meta["title"] == "Shopee T1"
    dataset = kernel / "shopee-t1-dataset"
    dmeta = json.loads((dataset / "dataset-metadata.json").read_text())
    assert dmeta["id"] == "tester/shopee-t1-dataset" and 6 <= len(dmeta["title"]) <= 50
    assert dmeta["licenses"] == [{"name": "CC0-1.0"}]

    manifest = json.loads((dataset / MANIFEST).read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(listed) == on_disk
    for name in ("shopee/predict.py", "ensemble.json", "models/exp001/fold1/model.safetensors"):
        assert listed[name]["sha256"] == sha256(dataset / name)
        assert listed[name]["bytes"] == (dataset / name).stat().st_size
    assert not any(p.startswith(("shopee/bench/", "shopee/demo/")) for p in listed)  # never run there
    assert "shopee/cli.py" in listed and "shopee/match/rules.py" in listed
    # the fold files travel as training wrote them (no path rewritten: folds know data by content)
    for name in ("config.json", "metrics.json"):
        assert (dataset / "models/exp001/fold0" / name).read_bytes() == (
            out / "exp001/fold0" / name
        ).read_bytes()
    text = [p for p in listed if p.startswith("pretrained/")]
    assert any(p.endswith("/tokenizer.json") for p in text) and any(p.endswith("/config.json") for p in text)
    assert not any(p.endswith((".safetensors", ".bin")) for p in text)  # weights come from the folds
    assert manifest["ensemble"] == "t" and manifest["settings"]["tta"] == "flip"

    bundle = open_bundle(dataset)
    (dataset / "shopee" / "predict.py").write_text("# tampered\n")
    with pytest.raises(Exception, match="differs from the manifest"):
        open_bundle(dataset)
    shutil.copy2(ROOT / "src" / "shopee" / "predict.py", dataset / "shopee" / "predict.py")
    assert open_bundle(dataset).manifest == bundle.manifest


def test_build_errors(trained, tmp_path: Path, capsys, monkeypatch) -> None:
    out, _ = trained
    ensemble_path = out / "ensembles" / "t.json"
    ensemble = json.loads(ensemble_path.read_text())
    base = [
        "build-kernel",
        "--ensemble",
        str(ensemble_path),
        "--user",
        "tester",
        "--out",
        str(tmp_path / "k"),
        "--output",
        str(out),
    ]

    monkeypatch.setattr(kernel_build, "source_state", lambda _: ("abc123", []))  # a clean checkout

    def fails(*extra: str) -> str:
        err = _run([*base, *extra], capsys, code=2).strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "kernel title 'Shop'" in fails("--name", "shop", "--title", "Shop")
    assert "would make it the slug" in fails("--name", "shopee-v1", "--title", "Another Title")
    assert "slug" in fails("--name", "Shopee_V1")
    assert "dataset slug" in fails("--name", "a" * 45)

    untrained = tmp_path / "untrained.json"
    untrained.write_text(json.dumps({**ensemble, "experiments": {**ensemble["experiments"], "exp999": [0]}}))
    assert "exp999/fold0: not trained" in _run(
        [*base, "--name", "shopee-x", "--ensemble", str(untrained)], capsys, code=2
    )
    broken = Path(shutil.copytree(out, tmp_path / "output"))
    (broken / "exp001" / "fold1" / "model.safetensors").unlink()
    err = _run([*base, "--name", "shopee-x", "--output", str(broken)], capsys, code=2)
    assert "fold1: no model.safetensors" in err
    assert not (tmp_path / "k" / "shopee-x").exists()

    # Another kernel in the way is kept unless --overwrite; a rebuild of the same one is fine.
    other = tmp_path / "k" / "shopee-y"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    assert "not a kernel built here" in fails("--name", "shopee-y")
    assert (other / "notes.txt").read_text() == "mine"
    _run([*base, "--name", "shopee-y", "--overwrite"], capsys)
    assert not (other / "notes.txt").exists()
    _run([*base, "--name", "shopee-y"], capsys)  # same slug, same ensemble: rebuilt
    renamed = tmp_path / "u.json"
    renamed.write_text(json.dumps({**ensemble, "name": "u"}))
    assert "of ensemble 't'" in _run(
        [*base, "--name", "shopee-y", "--ensemble", str(renamed)], capsys, code=2
    )

    # Uncommitted changes: a warning, or a refusal with --strict.
    monkeypatch.setattr(kernel_build, "source_state", lambda _: ("abc123", ["src/shopee/x.py"]))
    assert "--strict: uncommitted changes" in fails("--name", "shopee-z", "--strict")
    _run([*base, "--name", "shopee-z"], capsys)
    assert (
        json.loads((tmp_path / "k" / "shopee-z-dataset" / MANIFEST).read_text())["git_commit"]
        == "abc123-dirty"
    )


def test_build_kernel_refuses_a_fold_other_code_trained_unless_allowed(
    trained, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The bundle ships this checkout's code: a fold whose recorded code digest differs is refused
    in one line and nothing is written; with --allow-code-change the manifest names it, with the
    folds the ensemble was tuned on although other code trained them."""
    out, _ = trained
    output = Path(shutil.copytree(out, tmp_path / "output"))
    config = output / "exp001" / "fold0" / "config.json"
    meta = json.loads(config.read_text())
    meta["code_digest"]["files"]["embed.py"] = "0" * 64
    meta["code_digest"]["sha256"] = "1" * 64
    config.write_text(json.dumps(meta))
    ensemble_path = output / "ensembles" / "t.json"
    ensemble = json.loads(ensemble_path.read_text())
    ensemble_path.write_text(json.dumps({**ensemble, "code_changes": {"exp001:1": ["data.py"]}}))
    monkeypatch.setattr(kernel_build, "source_state", lambda _: ("abc123", []))  # a clean checkout
    kernels = tmp_path / "k"
    argv = ["build-kernel", "--ensemble", str(ensemble_path), "--name", "shopee-c", "--user", "tester"]
    argv += ["--out", str(kernels)]

    err = _run(argv, capsys, code=2)
    assert err == (
        f"error: {output / 'exp001' / 'fold0'}: trained by other code (embed.py differs from this "
        "checkout); pass --allow-code-change to use it anyway\n"
    )
    assert not kernels.exists()
    _run([*argv, "--allow-code-change"], capsys)
    manifest = json.loads((kernels / "shopee-c-dataset" / MANIFEST).read_text())
    assert manifest["code_changes"] == {"exp001:0": ["embed.py"], "exp001:1": ["data.py"]}


def test_image_and_text_fold_reloads_to_its_oof_embeddings(trained) -> None:
    """The rebuilt exp001 model reads its validation rows through the same dataset as training
    (images and titles) and gives back the stored OOF embeddings of every kind."""
    import numpy as np
    import torch

    from shopee.data import read_split
    from shopee.embed import embed_rows
    from shopee.outputs import FoldRecord
    from shopee.runtime import Runtime

    out, data = trained
    record = FoldRecord.open(out / "exp001" / "fold1")
    index = record.oof_index()
    rows = read_split(data, "train").set_index("posting_id").loc[index["posting_id"]].reset_index()
    (again,) = embed_rows([record.build_model()], record.config, rows, Runtime(torch.device("cpu")))
    assert set(again) == {"img", "txt", "fused"}
    for kind, array in again.items():
        np.testing.assert_allclose(array, record.oof(kind), atol=1e-5, err_msg=kind)


def test_slim_bundle_weights_embed_like_the_full_ones(trained, kernel: Path) -> None:
    """Bundled weights are for inference: no margin head, large tensors in fp16, and embeddings
    that agree with the full fp32 checkpoint (cosine >= 0.999 on every row and kind)."""
    import safetensors.torch
    import torch

    from shopee.data import read_split
    from shopee.embed import embed_rows
    from shopee.outputs import FoldRecord
    from shopee.runtime import Runtime

    out, data = trained
    full = FoldRecord.open(out / "exp001" / "fold0")
    slim = FoldRecord.open(kernel / "shopee-t1-dataset" / "models" / "exp001" / "fold0")
    state = safetensors.torch.load_file(str(slim.path / "model.safetensors"))
    assert state and not any(key.startswith("heads.") for key in state)
    assert {t.dtype for t in state.values() if t.numel() >= 4096} == {torch.float16}
    full_mb = (full.path / "model.safetensors").stat().st_size / 2**20
    slim_mb = (slim.path / "model.safetensors").stat().st_size / 2**20
    assert slim_mb < 0.6 * full_mb

    rows = read_split(data, "test", image_policy="blank")
    cpu = Runtime(torch.device("cpu"))
    (a,) = embed_rows([full.build_model()], full.config, rows, cpu, image_policy="blank")
    (b,) = embed_rows([slim.build_model()], slim.config, rows, cpu, image_policy="blank")
    for kind in ("img", "txt", "fused"):
        cosine = (a[kind] * b[kind]).sum(axis=1)
        assert cosine.min() >= 0.999, (kind, float(cosine.min()))
    assert not slim.build_model().with_heads


def test_the_kaggle_cli_accepts_what_it_would_upload(
    kernel: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The Kaggle CLI's own client pushes the built kernel and creates its dataset; only the
    network calls are replaced, and the requests they would send are checked."""
    from unittest import mock

    import requests

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the Kaggle client tried the network")

    monkeypatch.setattr(requests.Session, "send", no_network)
    from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk.datasets.services.dataset_api_service import DatasetApiClient
    from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse
    from kagglesdk.kernels.services.kernels_api_service import KernelsApiClient
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelResponse

    api = KaggleApi()
    api.authenticate()
    sent: dict = {"uploads": []}

    def save_kernel(self, request):
        sent["kernel"] = request
        response = ApiSaveKernelResponse()
        response.version_number, response.url = 1, "https://www.kaggle.com/code/tester/shopee-t1"
        return response

    def upload_blob(self, path, quiet, blob_type, upload_context, content_type=None):
        sent["uploads"].append(Path(path).name)
        return f"token-{Path(path).name}"

    def dataset_status(self, dataset, format=None):
        raise requests.exceptions.HTTPError("404: a new dataset")

    def create_dataset(self, request):
        sent["dataset"] = request
        response = ApiCreateDatasetResponse()
        response.ref, response.url = f"{request.owner_slug}/{request.slug}", "u"
        return response

    with (
        mock.patch.object(KernelsApiClient, "save_kernel", save_kernel),
        mock.patch.object(KaggleApi, "_upload_blob", upload_blob),
        mock.patch.object(KaggleApi, "dataset_status", dataset_status),
        mock.patch.object(DatasetApiClient, "create_dataset", create_dataset),
    ):
        created = api.dataset_create_new(str(kernel / "shopee-t1-dataset"), dir_mode="zip", quiet=True)
        api.kernels_push(str(kernel / "shopee-t1"))
    assert not created.error
    assert "does not resolve to the specified id" not in capsys.readouterr().out  # title reads as the slug

    push = sent["kernel"]
    assert push.slug == "tester/shopee-t1" and push.new_title == "Shopee T1"
    assert push.language == "python" and push.kernel_type == "notebook" and push.is_private
    assert push.enable_internet is False  # the CLI's own default is True
    assert push.enable_gpu is True and push.machine_shape == "NvidiaTeslaT4"
    assert push.competition_data_sources == ["shopee-product-matching"]
    assert "find_bundle" in push.text and "TESTED" in push.text  # the notebook's cells

    dataset = sent["dataset"]
    assert push.dataset_data_sources == [f"{dataset.owner_slug}/{dataset.slug}"]  # the dataset just built
    assert dataset.license_name == "CC0-1.0" and dataset.is_private
    # folders travel zipped (--dir-mode zip), the metadata file stays out
    assert {"shopee.zip", "models.zip", "pretrained.zip", "ensemble.json", MANIFEST} <= set(sent["uploads"])
    assert "dataset-metadata.json" not in sent["uploads"]
    assert {f.token for f in dataset.files} == {f"token-{name}" for name in sent["uploads"]}


def test_a_kernel_with_a_pair_model_runs_offline_and_equals_predict(trained, tmp_path: Path, capsys) -> None:
    out, data = trained
    argv = ["optimize-ensemble", "exp001", "--data", str(data), "--output", str(out), "--name", "pm"]
    printed = _run(
        [*argv, "--tfidf", "--phash", "--blend-stages", "0", "--force-pair-model", "--no-by-size"], capsys
    )
    summary = json.loads(printed.strip().splitlines()[-1])
    assert 0 < summary["cv_f1_pair_model"] <= 1 and 0 < summary["cv_f1_pair_model_heldout"] <= 1
    ensemble = json.loads((out / "ensembles" / "pm.json").read_text())
    assert (out / "ensembles" / ensemble["pair_model"]["file"]).is_file()
    assert ensemble["pair_model"]["shipped"]  # forced, whether it won on CV or not
    won = ensemble["pair_model"]["cv_f1_heldout"] > ensemble["cv_f1_heldout"]
    assert ("forced" in ensemble["pair_model"]["why"]) != won
    assert "Pair model (second stage)" in (out / "ensembles" / "pm" / "report.md").read_text()

    kernels = tmp_path / "kernels"
    build = ["build-kernel", "--ensemble", str(out / "ensembles" / "pm.json"), "--name", "shopee-pm"]
    _run([*build, "--user", "tester", "--out", str(kernels)], capsys)
    dataset = kernels / "shopee-pm-dataset"
    assert (dataset / "pm.pairs.txt").is_file()
    notebook = _run(
        ["run-kernel", str(kernels / "shopee-pm"), "--data", str(data), "--work", str(tmp_path / "run")],
        capsys,
    )
    assert "matching with the pair model on" in notebook and "lightgbm" in notebook
    cli = tmp_path / "cli.csv"
    bundled = ["--ensemble", str(dataset / "ensemble.json"), "--output", str(dataset / "models")]
    _run(["predict", *bundled, "--data", str(data), "--out", str(cli)], capsys)
    assert (tmp_path / "run" / "working" / "submission.csv").read_text() == cli.read_text()


def test_a_pair_model_that_lost_on_cv_is_not_shipped(trained, tmp_path: Path, capsys) -> None:
    """The ensemble keeps a pair model that did not beat the rule as tried: predict matches with the
    rule, and the kernel neither bundles it nor asks for LightGBM."""
    out, data = trained
    argv = ["optimize-ensemble", "exp001", "--data", str(data), "--output", str(out), "--name", "lost"]
    _run([*argv, "--tfidf", "--blend-stages", "0", "--force-pair-model", "--no-by-size"], capsys)
    path = out / "ensembles" / "lost.json"
    ensemble = json.loads(path.read_text())
    ensemble["pair_model"]["shipped"] = False  # as optimize-ensemble writes it when the rule wins
    path.write_text(json.dumps(ensemble))
    printed = _run(
        ["predict", "--ensemble", str(path), "--data", str(data), "--out", str(tmp_path / "s.csv")], capsys
    )
    assert "matching with fixed thresholds (tuned), on" in printed and "pair model" not in printed
    kernels = tmp_path / "kernels"
    _run(
        [
            "build-kernel",
            "--ensemble",
            str(path),
            "--name",
            "shopee-lost",
            "--user",
            "t",
            "--out",
            str(kernels),
        ],
        capsys,
    )
    dataset = kernels / "shopee-lost-dataset"
    assert not (dataset / "lost.pairs.txt").exists()
    assert "lightgbm" not in json.loads((dataset / "shopee-bundle.json").read_text())["requirements"]


def test_a_kernel_of_full_data_models(trained, tmp_path: Path, capsys, monkeypatch) -> None:
    """--models full ships each experiment's full-data model with the rule tuned on its folds; the
    notebook embeds with it; a bundle over Kaggle's time limit is refused unless forced."""
    from shopee.kernel import runtime

    out, data = trained
    output = Path(shutil.copytree(out, tmp_path / "output"))
    ensemble = output / "ensembles" / "t.json"
    base = ["build-kernel", "--ensemble", str(ensemble), "--user", "tester", "--out", str(tmp_path / "k")]
    base += ["--models", "full", "--name", "shopee-full"]
    err = _run(base, capsys, code=2)
    assert "exp001/full: not trained" in err and "python exp/exp001.py --fold full" in err
    exp = [sys.executable, str(ROOT / "exp" / "exp001.py"), "--fold", "full", "--debug"]
    subprocess.run([*exp, "--data", str(data), "--output", str(output)], check=True, capture_output=True)

    monkeypatch.setattr(runtime, "KAGGLE_LIMIT_S", 60)
    err = _run(base, capsys, code=2).strip().splitlines()
    assert len(err) == 1 and "exceeds Kaggle's 2 hours" in err[0] and "--allow-over-time" in err[0]
    assert not (tmp_path / "k" / "shopee-full").exists()
    printed = _run([*base, "--allow-over-time"], capsys)
    assert "estimated runtime on 70,000 test rows, GPU T4 x2" in printed
    carried = "the fold models' estimate, carried over to the full-data models: no CV scores them"
    assert "CV F1 expected at 70000 rows: " in printed and carried in printed  # no CV measured them

    dataset = tmp_path / "k" / "shopee-full-dataset"
    manifest = json.loads((dataset / MANIFEST).read_text())
    assert manifest["folds"] == ["exp001/full"] and manifest["models"] == "full"
    assert manifest["expected_f1"]["carried_over"] == carried
    assert manifest["estimated_runtime_s"] > 60
    bundled = json.loads((dataset / "ensemble.json").read_text())
    tuned = json.loads(ensemble.read_text())
    assert (
        bundled["experiments"] == {"exp001": ["full"]} and bundled["tuned_on_folds"] == tuned["experiments"]
    )
    assert bundled["params"] == tuned["params"]  # the thresholds tuned on the folds, carried over
    intro = "".join(
        json.loads((tmp_path / "k" / "shopee-full" / "shopee-full.ipynb").read_text())["cells"][0]["source"]
    )
    assert "Full-data models" in intro and "exp001/full" in intro
    assert carried in intro and "objective, of the fold models it was tuned on)" in intro

    work = tmp_path / "run"
    printed = _run(
        ["run-kernel", str(tmp_path / "k" / "shopee-full"), "--data", str(data), "--work", str(work)], capsys
    )
    assert "embed:exp001/full" in printed
    assert carried in printed  # predict's own line in the notebook
    cli = tmp_path / "cli.csv"
    bundle = ["--ensemble", str(dataset / "ensemble.json"), "--output", str(dataset / "models")]
    _run(["predict", *bundle, "--data", str(data), "--out", str(cli)], capsys)
    assert (work / "working" / "submission.csv").read_text() == cli.read_text()
