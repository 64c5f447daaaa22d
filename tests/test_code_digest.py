"""The code travels with the folds: the digest of the embedding-shaping code a fold records, and the
refusal of folds other code trained (``optimize-ensemble`` here; ``kaggle pull`` in
test_kaggle_gpu.py, ``build-kernel`` in test_kernel.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import shopee
from shopee import codedigest
from shopee.cli import main
from shopee.codedigest import CodeDigest, code_digest, merge_changes
from shopee.ensemble_file import EnsembleError, validate_ensemble
from shopee.oof import load_oof
from test_ensemble import fake_experiment

PACKAGE = Path(shopee.__file__).resolve().parent


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package whose files a test may change."""
    return Path(shutil.copytree(PACKAGE, tmp_path / "shopee", ignore=shutil.ignore_patterns("__pycache__")))


def _append(path: Path, text: str = "\n# changed\n") -> None:
    path.write_text(path.read_text() + text)


def test_the_digest_follows_the_files_that_shape_embeddings_only(package: Path) -> None:
    before = code_digest(package)
    assert before == code_digest(PACKAGE)  # bytes alone: where the package lies does not count
    assert {"models/pooling.py", "models/necks.py", "dataset.py", "data.py", "embed.py"} <= set(before.files)
    assert not {"models/heads.py", "augment.py", "config.py", "match/knn.py"} & set(before.files)

    for unrelated in ("match/knn.py", "models/heads.py", "augment.py", "ensemble.py"):
        _append(package / unrelated)
    assert code_digest(package) == before  # matching, training losses, tuning: not the embeddings

    _append(package / "models" / "pooling.py")
    _append(package / "dataset.py")
    after = code_digest(package)
    assert after.sha256 != before.sha256
    assert before.differing(after) == ["dataset.py", "models/pooling.py"]
    (package / "models" / "fusion.py").write_text("# a new module of the model\n")
    assert before.differing(code_digest(package)) == ["dataset.py", "models/fusion.py", "models/pooling.py"]
    assert CodeDigest.from_dict(after.to_dict()) == after


def _trained_by(fold: Path, digest: CodeDigest | None) -> None:
    """Record ``digest`` (None: none, as before digests were kept) in the fold's config.json."""
    config = fold / "config.json"
    meta = json.loads(config.read_text())
    meta.pop("code_digest", None)
    if digest is not None:
        meta["code_digest"] = digest.to_dict()
    config.write_text(json.dumps(meta))


def test_optimize_ensemble_refuses_a_fold_other_code_trained_unless_allowed(
    demo_copy: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "output"
    fake_experiment(out, "exp003", demo_copy, {"txt": 1.0}, seed=0, folds_trained=(0, 1))
    here = code_digest()
    other = CodeDigest("0" * 64, {**here.files, "models/pooling.py": "1" * 64})
    _trained_by(out / "exp003" / "fold0", other)
    _trained_by(out / "exp003" / "fold1", here)
    argv = ["optimize-ensemble", "exp003", "--data", str(demo_copy), "--name", "v1", "--output", str(out)]
    argv += ["--no-heldout", "--blend-stages", "0", "--no-by-size"]

    assert main(argv) == 2
    err = capsys.readouterr().err
    fold0 = out / "exp003" / "fold0"
    assert err == (
        f"error: {fold0}: trained by other code (models/pooling.py differs from this checkout); "
        "pass --allow-code-change to use it anyway\n"
    )
    assert not (out / "ensembles").exists()  # nothing written

    assert main([*argv, "--allow-code-change"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {fold0}: trained by other code (models/pooling.py); used anyway" in err
    ensemble = json.loads((out / "ensembles" / "v1.json").read_text())
    assert ensemble["code_changes"] == {"exp003:0": ["models/pooling.py"]}
    with pytest.raises(EnsembleError, match="code_changes: expected an object of fold -> list of files"):
        validate_ensemble({**ensemble, "code_changes": {"exp003:0": "models/pooling.py"}}, "v1.json")

    _trained_by(fold0, None)  # trained before digests were kept: accepted, said once
    assert load_oof(out, ["exp003"]).code_changes == {}
    err = capsys.readouterr().err
    assert (
        err == f"warning: {fold0}: records no code digest (trained before digests were kept): not checked\n"
    )

    monkeypatch.setattr(codedigest, "PACKAGE_ROOT", tmp_path / "elsewhere")  # no covered file there
    assert main(argv) == 2
    assert "fold1: trained by other code (data.py, dataset.py, embed.py, models/" in capsys.readouterr().err


def test_changes_found_at_tuning_and_at_building_merge_per_fold() -> None:
    assert merge_changes({"a:0": ["x.py"]}, {"a:0": ["w.py"], "b:full": ["y.py"]}) == {
        "a:0": ["w.py", "x.py"],
        "b:full": ["y.py"],
    }
