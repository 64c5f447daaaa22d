"""The methods of exp007-exp009 and the PCA member: their pieces against independent
computations, and every new experiment in a debug run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shopee.models.contrastive import bounded_kmeans, proto_nce, size_band
from shopee.models.tfidf_encoder import TfidfPcaEncoder
from shopee.projection import Projection, fit_projection

ROOT = Path(__file__).resolve().parents[1]
ENV_DEBUG = {"TQDM_DISABLE": "1", "SHOPEE_PROGRESS_MIN_SECONDS": "0"}


def _debug_fold(exp: str, fold: int, data: Path, output: Path) -> subprocess.CompletedProcess:
    """``python exp/EXP.py --fold FOLD --debug`` into ``output``, its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "exp" / f"{exp}.py"), "--fold", str(fold), "--data", str(data)]
        + ["--debug", "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV_DEBUG},
        timeout=600,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cluster_size_band_holds_after_every_reclustering(seed: int) -> None:
    """Lumpy data (a few dense blobs, many sparse points): plain k-means makes clusters far
    outside the band; after bounded_kmeans every size is within [2/3, 4/3] of the mean."""
    rng = np.random.default_rng(seed)
    blobs = rng.normal(size=(4, 16)) * 3
    x = np.concatenate(
        [blobs[rng.integers(0, 4, 700)] + 0.1 * rng.normal(size=(700, 16)), rng.normal(size=(300, 16))]
    )
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for k in (10, 37, 100):
        assign, centroids = bounded_kmeans(x, k, seed=seed)
        sizes = np.bincount(assign, minlength=k)
        low, high = size_band(len(x), k)
        assert low <= sizes.min() and sizes.max() <= high, (k, sizes.min(), sizes.max(), low, high)
        assert (low, high) == (int(np.floor(2 * len(x) / k / 3)), int(np.ceil(4 * len(x) / k / 3)))
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)


def test_proto_nce_is_the_two_cross_entropies() -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2, prototypes = (torch.randn(6, 4, generator=gen) for _ in range(3))
    targets = torch.tensor([0, 1, 2, 3, 4, 5]) % 6
    loss, inst_acc, proto_acc = proto_nce(
        z1, z2, targets, torch.nn.functional.normalize(prototypes, dim=1), 0.5
    )
    a, b = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    p = torch.nn.functional.normalize(prototypes, dim=1)
    expected = 0.0
    for i in range(6):  # -log softmax of the right column, row by row
        expected -= (
            torch.log_softmax(a[i] @ b.T / 0.5, 0)[i] + torch.log_softmax(a[i] @ p.T / 0.5, 0)[targets[i]]
        )
    assert torch.isclose(loss, expected / 6, atol=1e-5)
    assert inst_acc == float(((a @ b.T).argmax(1) == torch.arange(6)).float().mean())
    assert proto_acc == float(((a @ p.T).argmax(1) == targets).float().mean())


def test_tfidf_encoder_features_are_tfidf_then_pca() -> None:
    from sklearn.decomposition import PCA
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = "kopi susu bubuk sachet botol jumbo teh hijau merah gula kaleng mini isi pack".split()  # noqa: SIM905
    rng = np.random.default_rng(0)
    titles = [" ".join(rng.choice(words, size=4, replace=False)) + f" {10 * (i % 9)}gr" for i in range(120)]
    encoder = TfidfPcaEncoder(dim=8, hidden=16).fit(titles)
    x = TfidfVectorizer(dtype=np.float32).fit_transform(titles)
    expected = PCA(n_components=8, svd_solver="arpack", random_state=0).fit(x).transform(x)
    got = encoder.features(titles)
    for j in range(8):  # a PCA component's sign is arbitrary
        assert min(np.abs(got[:, j] - expected[:, j]).max(), np.abs(got[:, j] + expected[:, j]).max()) < 1e-4
    # the checkpoint carries vocabulary, IDF and PCA: a fresh encoder loads them and agrees
    again = TfidfPcaEncoder(dim=8, hidden=16)
    again.load_state_dict(encoder.state_dict())
    np.testing.assert_allclose(
        again.features(["kopi susu botol 3 gr", "unseen words"]),
        encoder.features(["kopi susu botol 3 gr", "unseen words"]),
        atol=1e-6,
    )


def test_a_projection_is_its_pca_applied_to_the_concatenation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = {"a:img": rng.normal(size=(50, 6)), "b:txt": rng.normal(size=(50, 4))}
    for whiten in (False, True):
        projection = fit_projection(parts, ["a:img", "b:txt"], 5, whiten)
        projection.save(tmp_path / "p.npz")
        loaded = Projection.load(tmp_path / "p.npz")
        x = np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True) for v in parts.values()], axis=1)
        from sklearn.decomposition import PCA

        reduced = PCA(n_components=5, svd_solver="full", whiten=whiten).fit_transform(x)
        reduced /= np.linalg.norm(reduced, axis=1, keepdims=True)
        np.testing.assert_allclose(np.abs(loaded(parts)), np.abs(reduced), atol=1e-4)  # up to the signs


@pytest.mark.parametrize("exp", ["exp007", "exp008", "exp009"])
def test_new_experiments_run_in_debug(exp: str, demo_copy: Path, tmp_path: Path) -> None:
    proc = _debug_fold(exp, 0, demo_copy, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["exp"] == exp and 0 < summary["cv_f1"] <= 1
    metrics = json.loads((tmp_path / exp / "fold0" / "metrics.json").read_text())
    if exp == "exp009":  # instance and prototype accuracy logged for the ProtoNCE epoch
        assert "instance_acc" in metrics["epochs"][0] and "proto_acc" in metrics["epochs"][0]
        assert "protonce: instance accuracy" in proc.stdout


def test_tfidf_fold_reloads_to_its_oof_embeddings(demo_copy: Path, tmp_path: Path) -> None:
    """exp008's fold rebuilt from its checkpoint alone (vocabulary, IDF and PCA inside) embeds its
    validation rows as training stored them."""
    from shopee.data import read_split
    from shopee.embed import embed_rows
    from shopee.outputs import FoldRecord
    from shopee.runtime import Runtime

    _debug_fold("exp008", 1, demo_copy, tmp_path).check_returncode()
    record = FoldRecord.open(tmp_path / "exp008" / "fold1")
    rows = (
        read_split(demo_copy, "train", check_images=False)
        .set_index("posting_id")
        .loc[record.oof_index()["posting_id"]]
    )
    (again,) = embed_rows(
        [record.build_model()], record.config, rows.reset_index(), Runtime(torch.device("cpu"))
    )
    np.testing.assert_allclose(again["txt"], record.oof("txt"), atol=1e-5)
    # the kernel's slim fp16 copy: the MLP in fp16, the fitted TF-IDF and PCA in their own dtype
    from shopee.kernel.bundle import _copy_folds

    (slim,) = _copy_folds([record], tmp_path / "bundle", "fp16")
    model = slim.build_model()
    components = model.text.components
    assert components.dtype == torch.float32 and components.numel() > 4096
    (bundled,) = embed_rows([model], slim.config, rows.reset_index(), Runtime(torch.device("cpu")))
    cosine = (bundled["txt"] * record.oof("txt")).sum(axis=1)
    assert cosine.min() > 0.9999, cosine.min()


def test_pca_in_predict_equals_pca_in_the_search(demo_copy: Path, tmp_path: Path, capsys) -> None:
    """exp008 on two folds, an ensemble with a PCA member: predict's sources (the projection read
    back from beside the ensemble file) matched with the ensemble's params within each fold give
    the F1 the search reported for those rows."""
    from shopee.cli import main
    from shopee.data import read_split
    from shopee.ensemble_file import read_ensemble
    from shopee.match import match
    from shopee.metrics import score_pairs
    from shopee.oof import load_oof
    from shopee.predict import with_derived_sources

    for fold in (0, 1):
        _debug_fold("exp008", fold, demo_copy, tmp_path).check_returncode()
    argv = ["optimize-ensemble", "exp008", "--data", str(demo_copy), "--output", str(tmp_path), "--name", "p"]
    options = ["--pca", "16", "--blend-stages", "0", "--no-heldout", "--no-by-size", "--objective", "fold"]
    assert main([*argv, *options]) == 0
    ensemble = read_ensemble(tmp_path / "ensembles" / "p.json")
    capsys.readouterr()
    if "pca16:all" not in {m["source"] for m in ensemble["params"]["members"] if m["type"] == "embedding"}:
        pytest.skip("the search did not keep the PCA member on this data")
    assert ensemble["projections"]["pca16:all"]["parts"] == ["exp008:txt"]
    oof = load_oof(tmp_path, ["exp008"])
    titles = read_split(demo_copy, "train", check_images=False).set_index("posting_id")
    per_fold = []
    for fold in oof.folds:
        rows = np.flatnonzero(oof.index["fold"].to_numpy() == fold)
        sources = with_derived_sources(
            ensemble, {k: v[rows] for k, v in oof.embeddings.items()}, tmp_path / "ensembles"
        )
        ids = oof.index["posting_id"].to_numpy()[rows]
        pairs = match(
            ensemble["params"],
            len(rows),
            embeddings=sources,
            titles=titles.loc[ids, "title"].to_numpy(),
            phashes=titles.loc[ids, "image_phash"].to_numpy(),
        )
        per_fold.append(score_pairs(*pairs.with_self(), oof.labels[rows]).mean().f1)
    assert np.mean(per_fold) == pytest.approx(ensemble["cv_f1_fold"], abs=1e-6)
