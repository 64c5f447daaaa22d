"""Kaggle naming rules and metadata fields for a kernel and its dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shopee.errors import ShopeeError
from shopee.kernel import metadata as meta


def test_default_title_reads_as_the_slug() -> None:
    for slug in ("shopee-v1", "abcde", "my-2nd-kernel-x"):
        assert meta.kaggle_slug(meta.kernel_title(slug, None)) == slug
    assert meta.kaggle_slug("Shopee: Lite0 + MiniLM!") == "shopee-lite0-minilm"


@pytest.mark.parametrize("slug", ["ab", "a" * 51, "Shopee", "shopee_v1", "-shopee", "shopee--v1", "shopee-"])
def test_bad_slugs(slug: str) -> None:
    with pytest.raises(ShopeeError, match="3 to 50 lower-case"):
        meta.check_slug(slug)


def test_titles() -> None:
    with pytest.raises(ShopeeError, match="5 to 50 characters"):
        meta.kernel_title("abcd", "Abcd")
    with pytest.raises(ShopeeError, match="would make it the slug 'other-name'"):
        meta.kernel_title("shopee-v1", "Other Name")
    assert meta.dataset_title("Shopee V1") == "Shopee V1 Dataset"
    long = "A" * 45
    assert meta.dataset_title(long) == long  # the suffix would pass 50 characters


def test_metadata_fields() -> None:
    kernel = meta.kernel_metadata("me", "shopee-v1", "Shopee V1")
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True and kernel["is_private"]
    assert kernel["machine_shape"] == "NvidiaTeslaT4"  # GPU T4 x2, not the P100 a bare GPU flag gets
    assert (
        meta.kernel_metadata("me", "shopee-v1", "Shopee V1", accelerator="NvidiaL4")["machine_shape"]
        == "NvidiaL4"
    )
    cpu = meta.kernel_metadata("me", "shopee-v1", "Shopee V1", accelerator="none")
    assert cpu["enable_gpu"] is False and "machine_shape" not in cpu
    with pytest.raises(ShopeeError, match="no kernels for the P100") as info:
        meta.kernel_metadata("me", "shopee-v1", "Shopee V1", accelerator="NvidiaTeslaP100")
    assert "\n" not in str(info.value)
    with pytest.raises(ShopeeError, match="use one of NvidiaTeslaT4, NvidiaL4, none"):
        meta.check_accelerator("TpuV5E8")
    assert kernel["dataset_sources"] == ["me/shopee-v1-dataset"]
    assert kernel["competition_sources"] == ["shopee-product-matching"]
    dataset = meta.dataset_metadata("me", "shopee-v1", "Shopee V1")
    assert dataset == {
        "title": "Shopee V1 Dataset",
        "id": "me/shopee-v1-dataset",
        "licenses": [{"name": "CC0-1.0"}],
    }
    with pytest.raises(ShopeeError, match="dataset slug"):
        meta.dataset_metadata("me", "a" * 45, "Shopee V1")


def test_user_from_flag_env_or_kaggle_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ShopeeError, match="--user"):
        meta.kaggle_user(None)
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "fromfile", "key": "x"}))
    assert meta.kaggle_user(None) == "fromfile"
    monkeypatch.setenv("KAGGLE_USERNAME", "fromenv")
    assert meta.kaggle_user(None) == "fromenv"
    assert meta.kaggle_user("flag") == "flag"
    with pytest.raises(ShopeeError, match="not a Kaggle user name"):
        meta.kaggle_user("bad name")


def test_kernel_minimums_are_the_kaggle_environment_pins() -> None:
    """The versions the notebook insists on are exactly those make kaggle-check runs it on."""
    from shopee.kernel.environment import MINIMUM_VERSIONS, PAIR_MODEL_MINIMUMS

    pins = {}
    for line in (Path(__file__).resolve().parents[1] / "requirements-kaggle.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    for dist, version in {**MINIMUM_VERSIONS, **PAIR_MODEL_MINIMUMS}.items():
        assert pins.get(dist.lower()) == version, dist


def test_environment_cell_stops_only_where_the_code_cannot_run(capsys) -> None:
    """Older than tested: a warning naming the library, and the notebook goes on; below a version
    known not to work, or missing: one error naming it and what to do, unless a wheel comes."""
    from shopee.kernel.environment import environment_cell, requirements

    untested = {**requirements(), "numpy": "99.0"}
    exec(compile(environment_cell([], untested), "cell", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^numpy\s+2\.\d+\.\d+\s+tested >= 99\.0  <- older than tested$", printed, re.M)
    assert re.search(
        r"^warning: numpy 2\.\d+\.\d+ is older than the 99\.0 this bundle was tested", printed, re.M
    )
    broken = {"numpy": "99.0", "python": "3.10"}
    with pytest.raises(
        RuntimeError, match=r"numpy 2\.\d+\.\d+: this kernel needs numpy >= 99\.0; rebuild it with --wheel"
    ):
        exec(compile(environment_cell([], untested, broken), "cell", "exec"), {})
    exec(compile(environment_cell(["numpy-99.0-cp312-none-any.whl"], untested, broken), "cell", "exec"), {})
    missing = {**requirements(), "no-such-dist": "1.0"}
    with pytest.raises(
        RuntimeError, match=r"no-such-dist is missing: this kernel needs no-such-dist >= 1\.0"
    ):
        exec(compile(environment_cell([], missing), "cell", "exec"), {})
    capsys.readouterr()
    exec(compile(environment_cell([], requirements()), "cell", "exec"), {})  # this environment is new enough
    assert "warning" not in capsys.readouterr().out
