"""``python -m shopee fetch``: weights fetched into one folder load offline, found by SHOPEE_WEIGHTS
or under Kaggle's inputs; the offline error names the command.

No network: the hub is the mocked client of test_pretrained.py. timm's download serves the
random-init weights of a tiny timm model (``hf_hub_download`` mocked), and the text model's
snapshot is the packaged all-MiniLM-L6-v2 directory under another name (``snapshot_download``
mocked), so every tensor that comes back can be compared with the one served.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from shopee import fetch as fetch_module  # noqa: E402
from shopee import pretrained  # noqa: E402
from shopee.cli import main  # noqa: E402
from shopee.kernel.bundle import sha256  # noqa: E402
from shopee.pretrained import (  # noqa: E402
    REGISTRY_TEXT,
    WEIGHTS_MANIFEST,
    WeightsNotFound,
    create_image_backbone,
    create_text_encoder,
    kaggle_manifests,
    resolve_text_model,
)

IMAGE = "test_efficientnet"  # timm's tiny test model: published weights (timm/test_efficientnet.r160_in1k)
TEXT = "some-org/mini-lm"  # not a registry name: only the (mocked) hub has it
TEXT_DIR = "text/some-org__mini-lm"


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, object]:
    """What the mocked hub serves: a random timm checkpoint (with its classifier, as the hub's are)
    and a MiniLM snapshot directory."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(11)
    image_model = timm.create_model(IMAGE, pretrained=False)
    with torch.no_grad():
        for p in image_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # not timm's init: a default model cannot pass for it
    image_file = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in image_model.state_dict().items()}, str(image_file))
    snapshot = root / "snapshot"
    shutil.copytree(resolve_text_model("all-MiniLM-L6-v2"), snapshot)
    assert REGISTRY_TEXT.get(TEXT) is None
    return {"image_file": image_file, "image_state": _state(image_model), "snapshot": snapshot}


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Empty caches, no fetched folder, no Kaggle inputs: only what a test adds is there."""
    from huggingface_hub import constants

    mp.setattr(constants, "HF_HUB_CACHE", str(root / "hf"))
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.delenv(pretrained.WEIGHTS_ENV, raising=False)
    mp.setattr(pretrained, "KAGGLE_INPUT", root / "no-kaggle-input")


def _online(mp: pytest.MonkeyPatch, served: dict[str, object], asked: list[str]) -> None:
    """The hub answers: timm's download and the text snapshot come from ``served`` (mocked)."""
    import huggingface_hub
    import timm.models._hub as timm_hub
    from huggingface_hub import constants

    mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.delenv("TRANSFORMERS_OFFLINE", raising=False)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(pretrained, "_reachable", lambda host, *a, **k: True)

    def hf_hub_download(repo_id, filename, **kwargs):
        asked.append(f"timm {repo_id} {filename}")
        assert repo_id.startswith(f"timm/{IMAGE}.") and filename == "model.safetensors"
        return str(served["image_file"])

    class Api:
        def list_repo_files(self, repo_id):
            asked.append(f"list {repo_id}")
            return [p.name for p in Path(served["snapshot"]).iterdir()]

    def snapshot_download(repo_id, allow_patterns):
        asked.append(f"snapshot {repo_id}")
        assert repo_id == TEXT
        return str(served["snapshot"])

    mp.setattr(timm_hub, "hf_hub_download", hf_hub_download)
    mp.setattr(huggingface_hub, "HfApi", Api)
    mp.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def _offline(mp: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE set, and any probe or hub call fails the test."""
    import huggingface_hub
    import timm.models._hub as timm_hub

    def boom(*args, **kwargs):
        raise AssertionError("no network offline")

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(pretrained, "_reachable", boom)
    mp.setattr(timm_hub, "hf_hub_download", boom)
    mp.setattr(huggingface_hub, "snapshot_download", boom)


def _experiment(folder: Path) -> Path:
    path = folder / "exp900.py"
    path.write_text(
        "from shopee import Config\n\n"
        f"CFG = Config(image_model={IMAGE!r}, text_model={TEXT!r}, image_size=64, max_len=16)\n"
    )
    return path


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory) -> dict[str, object]:
    """One ``python -m shopee fetch EXP --out DIR`` with the hub answering (mocked)."""
    root = tmp_path_factory.mktemp("fetch")
    out = root / "weights"
    asked: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        _online(mp, served, asked)
        mp.setenv("KAGGLE_USERNAME", "someone")
        import contextlib
        import io

        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["fetch", str(_experiment(root)), "--out", str(out)])
    return {"out": out, "code": code, "stdout": stdout.getvalue(), "asked": asked}


def _manifest(out: Path) -> dict:
    return json.loads((out / WEIGHTS_MANIFEST).read_text())


# ------------------------------------------------------------------------------------------------
# the folder fetch writes
# ------------------------------------------------------------------------------------------------
def test_fetch_writes_folder_manifest_and_metadata(fetched):
    out = fetched["out"]
    assert fetched["code"] == 0, fetched["stdout"]
    assert any(a.startswith(f"timm timm/{IMAGE}.") for a in fetched["asked"])  # downloaded, not cached
    assert f"snapshot {TEXT}" in fetched["asked"]
    models = {(m["kind"], m["name"]): m for m in _manifest(out)["models"]}
    assert set(models) == {("image", IMAGE), ("text", TEXT)}
    image, text = models["image", IMAGE], models["text", TEXT]
    assert image["folder"] == f"image/{IMAGE}" and image["source"].startswith("timm download (timm/")
    assert text["folder"] == TEXT_DIR and text["source"] == f"hub download {TEXT}"
    assert [f["path"] for f in image["files"]] == ["model.safetensors"]
    names = {f["path"] for f in text["files"]}
    assert {"config.json", "tokenizer.json", "vocab.txt", "model.safetensors"} <= names
    assert not names & {"modules.json", "README.md", "1_Pooling"}  # sentence-transformers extras stay out
    for entry in models.values():
        for f in entry["files"]:
            path = out / entry["folder"] / f["path"]
            assert path.stat().st_size == f["bytes"] and sha256(path) == f["sha256"]
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/shopee-pretrained-dataset"
    assert 6 <= len(meta["title"]) <= 50 and meta["licenses"] == [{"name": "CC0-1.0"}]
    lines = fetched["stdout"].splitlines()
    assert any(line.startswith(f"image {IMAGE}: timm download") and line.endswith(" MB") for line in lines)
    assert any(line.startswith(f"text  {TEXT}: hub download") for line in lines)
    assert f"kaggle datasets create -p {out} --dir-mode zip" in fetched["stdout"]
    assert f"SHOPEE_WEIGHTS={out.resolve()}" in fetched["stdout"]
    assert json.loads(lines[-1])["dataset"] == meta["id"]


def test_fetched_text_folder_loads_with_automodel(fetched, served):
    model = transformers.AutoModel.from_pretrained(fetched["out"] / TEXT_DIR, local_files_only=True)
    reference = transformers.AutoModel.from_pretrained(served["snapshot"], local_files_only=True)
    assert _same(model.state_dict(), reference.state_dict())


# ------------------------------------------------------------------------------------------------
# the lookup finds it offline
# ------------------------------------------------------------------------------------------------
def test_lookup_loads_the_fetched_tensors_offline(fetched, served, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(fetched["out"]))
    out = fetched["out"]

    from shopee.models.encoders import ImageEncoder

    encoder = ImageEncoder(IMAGE, pretrained=True, weights="", pool="gem", gem_p=3.0)
    file = out / "image" / IMAGE / "model.safetensors"
    assert encoder.weights_source == f"fetched {file} (by name)"
    body = {k: v for k, v in served["image_state"].items() if not k.startswith("classifier.")}
    assert _same(_state(encoder.backbone), body)
    # the same folder as explicit image_weights, and with the classifier the folder lacks
    model, source = create_image_backbone(IMAGE, weights=str(file.parent), num_classes=0)
    assert source == f"file {file} (by name)" and _same(_state(model), body)
    model, source = create_image_backbone(IMAGE)
    assert source == f"fetched {file} (by name, classifier not loaded)"

    text_model, tokenizer, text_source = create_text_encoder(TEXT)
    assert text_source == str(out / TEXT_DIR)
    reference = transformers.AutoModel.from_pretrained(served["snapshot"], local_files_only=True)
    assert _same(text_model.state_dict(), reference.state_dict())
    assert tokenizer("red shoes")["input_ids"][0] == tokenizer.cls_token_id


def test_shopee_weights_takes_several_folders_and_skips_bad_ones(fetched, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    shutil.copytree(fetched["out"], other)
    (other / TEXT_DIR / "vocab.txt").write_text("[PAD]\n")  # changed since the fetch
    monkeypatch.setenv(
        pretrained.WEIGHTS_ENV,
        os.pathsep.join(map(str, [tmp_path / "missing", empty, other, fetched["out"]])),
    )
    assert resolve_text_model(TEXT) == str(fetched["out"] / TEXT_DIR)
    with pytest.raises(WeightsNotFound) as info:
        resolve_text_model("other-org/other-model")
    message = str(info.value)
    assert f"SHOPEE_WEIGHTS folder {tmp_path / 'missing'} (no such folder)" in message
    assert f"SHOPEE_WEIGHTS folder {empty} (no {WEIGHTS_MANIFEST})" in message
    assert f"fetched folder {fetched['out']} (no text model 'other-org/other-model' listed)" in message
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(other))
    with pytest.raises(WeightsNotFound, match=r"vocab.txt has 6 bytes, the manifest says \d+"):
        resolve_text_model(TEXT)


def test_kaggle_inputs_are_scanned_for_manifests(fetched, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)
    kaggle = tmp_path / "kaggle" / "input"
    dataset = kaggle / "datasets" / "someone" / "shopee-pretrained-dataset"
    shutil.copytree(fetched["out"], dataset)
    (kaggle / "competitions" / "shopee-product-matching" / "train_images").mkdir(parents=True)
    too_deep = kaggle / "a" / "b" / "c" / "d"
    too_deep.mkdir(parents=True)
    (too_deep / WEIGHTS_MANIFEST).write_text("{}")
    monkeypatch.setattr(pretrained, "KAGGLE_INPUT", kaggle)

    assert kaggle_manifests() == [dataset / WEIGHTS_MANIFEST]
    assert resolve_text_model(TEXT) == str(dataset / TEXT_DIR)
    model, source = create_image_backbone(IMAGE, num_classes=0)
    assert source == f"fetched {dataset / 'image' / IMAGE / 'model.safetensors'} (by name)"
    shutil.rmtree(dataset)
    with pytest.raises(WeightsNotFound, match=f"Kaggle inputs {kaggle} \\(no {WEIGHTS_MANIFEST} attached\\)"):
        create_image_backbone(IMAGE, num_classes=0)


# ------------------------------------------------------------------------------------------------
# a second fetch, errors
# ------------------------------------------------------------------------------------------------
def test_second_fetch_adds_and_keeps(served, tmp_path, monkeypatch, capsys):
    _isolate(monkeypatch, tmp_path)
    _online(monkeypatch, served, asked := [])
    out = tmp_path / "weights"
    assert main(["fetch", "--image-model", IMAGE, "--out", str(out), "--user", "me"]) == 0
    image_before = _manifest(out)["models"]
    assert [m["name"] for m in image_before] == [IMAGE]
    stamp = (out / "image" / IMAGE / "model.safetensors").stat().st_mtime_ns

    assert main(["fetch", "--text-model", TEXT, "--image-model", IMAGE, "--out", str(out)]) == 0
    models = _manifest(out)["models"]
    assert [(m["kind"], m["name"]) for m in models] == [("image", IMAGE), ("text", TEXT)]
    assert models[0] == image_before[0]  # kept as it was, not fetched again
    assert (out / "image" / IMAGE / "model.safetensors").stat().st_mtime_ns == stamp
    assert sum(a.startswith("timm ") for a in asked) == 1
    assert f"image {IMAGE}: already in {out}" in capsys.readouterr().out
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "me/shopee-pretrained-dataset"

    assert main(["fetch", "--image-model", IMAGE, "--out", str(out), "--refresh"]) == 0
    assert sum(a.startswith("timm ") for a in asked) == 2
    assert len(_manifest(out)["models"]) == 2
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))


def test_offline_error_names_the_fetch_command(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)
    with pytest.raises(WeightsNotFound) as info:
        create_image_backbone(IMAGE, num_classes=0)
    message = str(info.value)
    assert "\n" not in message and f"'{IMAGE}'" in message
    assert "fetched folders ($SHOPEE_WEIGHTS not set)" in message
    assert (
        f"python -m shopee fetch --image-model {IMAGE} --out weights, then set SHOPEE_WEIGHTS=weights"
        in message
    )
    assert "image_weights" in message and "image_pretrained=false" in message  # the other ways out stay
    with pytest.raises(WeightsNotFound) as info:
        resolve_text_model(TEXT)
    message = str(info.value)
    assert "\n" not in message and f"python -m shopee fetch --text-model {TEXT} --out weights" in message
    assert "text_weights" in message


def test_bad_out_is_one_error_line(tmp_path, monkeypatch, capsys):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)  # an --out error must come before any lookup
    monkeypatch.setattr(pretrained, "create_image_backbone", lambda *a, **k: pytest.fail("looked up"))
    file = tmp_path / "weights.txt"
    file.write_text("not a folder")
    assert main(["fetch", "--image-model", IMAGE, "--out", str(file)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {file}: is a file, not a folder\n"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["fetch", "--image-model", IMAGE, "--out", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {busy}: holds other files (notes.txt)") and err.count("\n") == 1
    assert main(["fetch", "--out", str(tmp_path / "new")]) == 2
    assert "nothing to fetch" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_fetch_offline_fails_with_the_lookup_line(tmp_path, monkeypatch, capsys):
    _isolate(monkeypatch, tmp_path)
    _offline(monkeypatch)
    out = tmp_path / "weights"
    assert main(["fetch", str(_experiment(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no pretrained weights for image model '{IMAGE}'") and err.count("\n") == 1
    assert not (out / WEIGHTS_MANIFEST).exists()


def test_experiment_without_pretrained_image_fetches_its_text_model_only(tmp_path):
    exp = _experiment(tmp_path)
    wanted = fetch_module.wanted_models([str(exp)], ["image_pretrained=false"], text_models=[TEXT, "x/y"])
    assert wanted == [fetch_module.Wanted("text", TEXT), fetch_module.Wanted("text", "x/y")]
    assert fetch_module.safe_name("FacebookAI/xlm-roberta-base") == "FacebookAI__xlm-roberta-base"
    assert fetch_module.safe_name("tf_efficientnet_b3.ns_jft_in1k") == "tf_efficientnet_b3.ns_jft_in1k"


# ------------------------------------------------------------------------------------------------
# hub revisions: recorded by fetch, pinned in downloads elsewhere
# ------------------------------------------------------------------------------------------------
def _hub_with_commits(mp: pytest.MonkeyPatch, served, root: Path, sha: str, asked: list) -> None:
    """The hub answers as in ``_online``, and serves the text snapshot from the Hugging Face cache's
    layout (``models--ORG--NAME/snapshots/<sha>/``) as ``snapshot_download`` does; every call's
    revision is recorded."""
    import huggingface_hub
    import timm.models._hub as timm_hub

    _online(mp, served, [])
    snapshot = root / "hf" / "models--some-org--mini-lm" / "snapshots" / sha

    class Api:
        def list_repo_files(self, repo_id, revision=None):
            asked.append(("list", repo_id, revision))
            return [p.name for p in Path(served["snapshot"]).iterdir()]

    def snapshot_download(repo_id, allow_patterns, revision=None):
        asked.append(("snapshot", repo_id, revision))
        if not snapshot.is_dir():
            shutil.copytree(served["snapshot"], snapshot)
        return str(snapshot)

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):
        asked.append(("timm", repo_id, revision))
        return str(served["image_file"])

    mp.setattr(huggingface_hub, "HfApi", Api)
    mp.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    mp.setattr(timm_hub, "hf_hub_download", hf_hub_download)


def test_fetch_records_hub_revisions_and_downloads_elsewhere_use_them(served, tmp_path, monkeypatch, capsys):
    _isolate(monkeypatch, tmp_path)
    sha = "1f" * 20
    asked: list = []
    _hub_with_commits(monkeypatch, served, tmp_path, sha, asked)
    out = tmp_path / "weights"
    assert main(["fetch", "--text-model", TEXT, "--out", str(out), "--user", "me"]) == 0
    entry = _manifest(out)["models"][0]
    assert (entry["repo"], entry["revision"]) == (TEXT, sha)  # the snapshot's commit
    pins = fetch_module.hub_revisions_of(_manifest(out))
    assert pins == {TEXT: sha}
    assert f"export SHOPEE_HUB_REVISIONS='{json.dumps(pins)}'" in capsys.readouterr().out

    # elsewhere (the training kernel: no fetched folder, an empty cache), the download is pinned
    shutil.rmtree(tmp_path / "hf")
    asked.clear()
    monkeypatch.setenv(pretrained.HUB_REVISIONS_ENV, json.dumps(pins))
    assert resolve_text_model(TEXT) == str(tmp_path / "hf" / "models--some-org--mini-lm" / "snapshots" / sha)
    assert asked == [("list", TEXT, sha), ("snapshot", TEXT, sha)]


def test_a_pinned_timm_download_asks_for_its_commit(served, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    sha = "2e" * 20
    asked: list = []
    _hub_with_commits(monkeypatch, served, tmp_path, sha, asked)
    repo = timm.models.get_pretrained_cfg(IMAGE).hf_hub_id  # timm/test_efficientnet.r160_in1k
    monkeypatch.setenv(pretrained.HUB_REVISIONS_ENV, json.dumps({repo: sha}))
    out = tmp_path / "weights"
    assert main(["fetch", "--image-model", IMAGE, "--out", str(out), "--user", "me"]) == 0
    assert asked == [("timm", repo, sha)]
    entry = _manifest(out)["models"][0]
    assert (entry["repo"], entry["revision"]) == (repo, sha) and entry[
        "source"
    ] == f"timm download ({repo}@{sha})"
