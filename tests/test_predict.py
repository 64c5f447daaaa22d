"""predict and score: a submission from trained folds and a tuned ensemble, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shopee.cli import main
from shopee.data import read_split
from shopee.embed import embed_rows
from shopee.ensemble_file import read_ensemble
from shopee.outputs import FoldRecord
from shopee.predict import ensemble_embeddings, ensemble_records
from shopee.runtime import Runtime

CPU = Runtime(torch.device("cpu"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, small_demo_dir: Path) -> tuple[Path, Path]:
    """exp003 debug-trained on folds 0 and 1 of a copy of the small demo, and an ensemble on them."""
    root = tmp_path_factory.mktemp("predict")
    data = Path(shutil.copytree(small_demo_dir, root / "data"))
    out = root / "output"
    for fold in ("0", "1"):
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "exp" / "exp003.py"),
                "--fold",
                fold,
                "--data",
                str(data),
                "--debug",
                "--output",
                str(out),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    assert (
        main(
            [
                "optimize-ensemble",
                "exp003",
                "--data",
                str(data),
                "--output",
                str(out),
                "--name",
                "t",
                "--tfidf",
            ]
        )
        == 0
    )
    return out, data


def _predict_argv(ensemble: Path, data: Path, out: Path) -> list[str]:
    return ["predict", "--ensemble", str(ensemble), "--data", str(data), "--out", str(out)]


def test_predict_writes_a_complete_submission(tuned: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out, data = tuned
    sub_path = tmp_path / "submission.csv"
    assert (
        main(
            [
                "predict",
                "--ensemble",
                str(out / "ensembles" / "t.json"),
                "--data",
                str(data),
                "--out",
                str(sub_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    sub = pd.read_csv(sub_path, dtype=str)
    test = pd.read_csv(data / "test.csv", dtype=str)
    assert list(sub.columns) == ["posting_id", "matches"]
    # how many it matched a row, beside what the tuning rows' groups hold (counted here from the
    # OOF index, every fold's validation rows once)
    per_row = (sub["matches"].str.split().str.len().sum() - len(sub)) / len(sub)
    oof = pd.concat(pd.read_parquet(f) for f in sorted((out / "exp003").glob("fold*/oof_index.parquet")))
    sizes = oof["label_group"].map(oof["label_group"].value_counts())
    assert f"{per_row:.2f} matches a row (the tuning rows have {(sizes - 1).mean():.2f} others" in printed
    assert list(sub["posting_id"]) == list(test["posting_id"])  # each test posting exactly once
    ids = set(test["posting_id"])
    for pid, matches in zip(sub["posting_id"], sub["matches"], strict=True):
        items = matches.split(" ")
        assert items[0] == pid and len(items) == len(set(items)) <= 51 and set(items) <= ids
    assert summary["rows"] == len(test)

    # Deterministic, and the score command reads it.
    sub_path2 = tmp_path / "again.csv"
    assert (
        main(
            [
                "predict",
                "--ensemble",
                str(out / "ensembles" / "t.json"),
                "--data",
                str(data),
                "--out",
                str(sub_path2),
            ]
        )
        == 0
    )
    assert sub_path.read_text() == sub_path2.read_text()
    capsys.readouterr()
    assert main(["score", "--submission", str(sub_path), "--labels", str(data / "test_labels.csv")]) == 0
    score = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < score["f1"] <= 1


def test_fold_model_reloads_to_its_oof_embeddings(tuned: tuple[Path, Path]) -> None:
    """A fold model rebuilt from its files embeds its validation rows as training stored them."""
    out, data = tuned
    record = FoldRecord.open(out / "exp003" / "fold0")
    index = record.oof_index()
    train = read_split(data, "train", check_images=False).set_index("posting_id").loc[index["posting_id"]]
    (emb,) = embed_rows([record.build_model()], record.config, train.reset_index(), CPU)
    np.testing.assert_allclose(emb["txt"], record.oof("txt"), atol=1e-5)


def test_folds_share_one_pass_with_the_same_embeddings(tuned: tuple[Path, Path]) -> None:
    """The fold models of an experiment embed in one pass over the data, as if run one by one."""
    out, data = tuned
    cpu = torch.device("cpu")
    df = read_split(data, "test", image_policy="blank")
    timings: dict[str, float] = {}
    ensemble = read_ensemble(out / "ensembles" / "t.json")
    member = {
        "name": "exp003_txt",
        "type": "embedding",
        "source": "exp003:txt",
        "threshold": 0.5,
        "blend": [],
    }
    ensemble["params"]["members"] = [member]  # the tuned rule may use TF-IDF alone on this tiny data
    records = ensemble_records(ensemble, out)
    together = ensemble_embeddings(ensemble, records, df, [cpu], "blank", timings)
    assert [k for k in timings if k.startswith("embed:")] == ["embed:exp003/fold0, exp003/fold1"]
    total = sum(
        embed_rows([r.build_model()], r.config, df, CPU, image_policy="blank")[0]["txt"] for r in records
    )
    expected = total / np.linalg.norm(total, axis=1, keepdims=True)
    np.testing.assert_allclose(together["exp003:txt"], expected, atol=1e-6)


def test_predict_bad_input(tuned: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out, data = tuned
    ensemble_path = out / "ensembles" / "t.json"
    ensemble = json.loads(ensemble_path.read_text())

    def run(path: Path, data_dir: Path = data) -> str:
        assert (
            main(
                [
                    "predict",
                    "--ensemble",
                    str(path),
                    "--data",
                    str(data_dir),
                    "--output",
                    str(out),
                    "--out",
                    str(tmp_path / "s.csv"),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**ensemble, "experiments": {"exp003": [0, 3]}}))
    assert "fold3" in run(missing)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({key: v for key, v in ensemble.items() if key != "format"}))
    assert "run optimize-ensemble again" in run(old)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**ensemble, "data": {**ensemble["data"], "train_sha256": "0" * 64}}))
    assert "trained on other data" in run(other)
    empty = Path(shutil.copytree(data, tmp_path / "empty"))
    (empty / "test.csv").write_text("posting_id,image,image_phash,title\n")
    assert "no rows" in run(ensemble_path, empty)
    assert not (tmp_path / "s.csv").exists()  # nothing written on failure


def test_score_rejects_an_incomplete_submission(tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"posting_id": ["a", "b", "c"], "label_group": [1, 1, 2]}).to_csv(labels, index=False)
    sub = tmp_path / "sub.csv"
    pd.DataFrame({"posting_id": ["a", "b"], "matches": ["a b", "b a"]}).to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--labels", str(labels)]) == 2
    assert "'c'" in capsys.readouterr().err
    pd.DataFrame({"posting_id": ["a", "b", "c"], "matches": ["a b", "b", "c"]}).to_csv(sub, index=False)
    assert main(["score", "--submission", str(sub), "--labels", str(labels)]) == 0
    # rows: a -> {a,b} vs {a,b}: 1; b -> {b} vs {a,b}: 2/3; c -> {c} vs {c}: 1
    assert np.isclose(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["f1"], (1 + 2 / 3 + 1) / 3)


def test_a_moved_data_directory_still_predicts(tuned: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Folds know their data by content: moving it is fine, another train.csv is refused."""
    out, data = tuned
    moved = tmp_path / "moved"
    hidden = data.with_name(data.name + "-away")
    data.rename(hidden)  # the directory the folds were trained from is gone ...
    try:
        shutil.copytree(hidden, moved)  # ... and lives here now
        argv = ["predict", "--ensemble", str(out / "ensembles" / "t.json"), "--out", str(tmp_path / "s.csv")]
        assert main([*argv, "--data", str(moved)]) == 0, capsys.readouterr().err
        assert len(pd.read_csv(tmp_path / "s.csv")) == len(pd.read_csv(moved / "test.csv"))

        train = pd.read_csv(moved / "train.csv", dtype=str)
        train.loc[0, "label_group"] = "123456789"  # one posting in another group: another train.csv
        train.to_csv(moved / "train.csv", index=False)
        (tmp_path / "s.csv").unlink()
        assert main([*argv, "--data", str(moved)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and "train.csv: not the train.csv the ensemble's models were trained on" in err[0]
        )
        assert not (tmp_path / "s.csv").exists()
    finally:
        hidden.rename(data)


def test_skip_is_refused_for_a_submission(tuned: tuple[Path, Path]) -> None:
    from shopee.errors import ShopeeError
    from shopee.predict import predict

    out, data = tuned
    with pytest.raises(ShopeeError, match="skip would leave rows out of the submission"):
        predict(out / "ensembles" / "t.json", data, image_policy="skip")


def test_two_devices_give_the_submission_of_one(
    tuned: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    """The split path of a T4 x2 kernel, run over two CPU "devices": each embeds its share of the
    fold models from the same batches, and the submission is that of one device."""
    from shopee.ensemble_file import write_ensemble
    from shopee.predict import predict

    out, data = tuned
    ensemble = read_ensemble(out / "ensembles" / "t.json")
    member = {
        "name": "exp003_txt",
        "type": "embedding",
        "source": "exp003:txt",
        "threshold": 0.6,
        "blend": [0.7],
    }
    ensemble["params"]["members"] = [member, {"name": "tfidf", "type": "tfidf", "threshold": 0.7}]
    ensemble["params"]["min2"] = {"member": "exp003_txt", "threshold": 0.3}
    path = out / "ensembles" / "two.json"
    write_ensemble(path, ensemble)
    placed: list[tuple[str, str]] = []
    build, to_device = FoldRecord.build_model, Runtime.to_device
    moved_to: dict[int, str] = {}  # a batch moved by a runtime -> that runtime's device
    fed: list[tuple[str, str]] = []  # (model's device, the device its batch was moved to)

    def moving(self, batch):
        out = to_device(self, batch)
        moved_to[id(out)] = str(self.device)
        return out

    def spy(self, device="cpu", text_dirs=None):
        placed.append((self.name, str(device)))
        model = build(self, device, text_dirs)
        forward = model.forward

        def checked(batch):  # on CPU every "device" is the same memory: check where it was sent
            fed.append((str(device), moved_to.get(id(batch), "not moved")))
            return forward(batch)

        model.forward = checked
        return model

    monkeypatch.setattr(FoldRecord, "build_model", spy)
    monkeypatch.setattr(Runtime, "to_device", moving)
    one = predict(path, data, devices=[torch.device("cpu")])
    assert placed == [("exp003/fold0", "cpu"), ("exp003/fold1", "cpu")]
    fed.clear()
    two = predict(path, data, devices=[torch.device("cpu", 0), torch.device("cpu", 1)])
    assert placed[2:] == [("exp003/fold0", "cpu:0"), ("exp003/fold1", "cpu:1")]
    assert fed and {model for model, _ in fed} == {"cpu:0", "cpu:1"}
    assert all(model == batch for model, batch in fed), [f for f in fed if f[0] != f[1]][:3]
    pd.testing.assert_frame_equal(one, two)
    assert (one["matches"].str.count(" ") > 0).any()


def test_predict_follows_the_test_size(tuned: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """The ensemble's thresholds are evaluated at the number of rows predicted, and printed;
    --fixed-thresholds uses them as tuned."""
    import math

    from shopee.size_curve import describe

    out, data = tuned
    ensemble = read_ensemble(out / "ensembles" / "t.json")
    assert ensemble["objective"] == "dense" and ensemble["size_curve"]["rows"]
    n_test = len(pd.read_csv(data / "test.csv"))
    argv = _predict_argv(out / "ensembles" / "t.json", data, tmp_path / "s.csv")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    line = next(
        x for x in printed.splitlines() if x.startswith(f"matching with thresholds for {n_test} rows: ")
    )
    for m in ensemble["params"]["members"]:  # each threshold as a + b ln(n) within [min, max] +- 0.1
        if m["type"] == "phash":
            continue
        c = ensemble["size_curve"]["fit"][f"members.{m['name']}.threshold"]
        expected = min(max(c["a"] + c["b"] * math.log(n_test), c["min"] - 0.1), c["max"] + 0.1)
        assert f"{m['name']} >= {round(expected, 4):g}" in line, (line, expected)
    assert main([*argv, "--fixed-thresholds"]) == 0
    assert (
        f"fixed thresholds (tuned), on {n_test} rows: {describe(ensemble['params'])}"
        in capsys.readouterr().out
    )


def test_runs_lists_folds_and_ensembles_best_first_per_objective(
    tuned: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    """``runs`` groups the ensembles by objective (dense first) before ranking them: a fold-tuned
    CV F1 is higher but scored on sparser rows, so it must not outrank a dense one."""
    from shopee.ensemble_file import write_ensemble
    from shopee.runs import print_runs

    out, _ = tuned
    shutil.copytree(out / "exp003", tmp_path / "exp003")
    ensemble = read_ensemble(out / "ensembles" / "t.json")
    for name, objective, cv in (("a", "dense", 0.61), ("b", "fold", 0.9), ("c", "dense", 0.7)):
        write_ensemble(
            tmp_path / "ensembles" / f"{name}.json",
            {**ensemble, "name": name, "objective": objective, "cv_f1": cv},
        )
    listed = print_runs(tmp_path)
    assert [(r["ensemble"], r["objective"]) for r in listed["ensembles"]] == [
        ("c", "dense"),
        ("a", "dense"),
        ("b", "fold"),
    ]
    assert [(r["exp"], r["fold"]) for r in listed["folds"]] == sorted(
        [("exp003", 0), ("exp003", 1)],
        key=lambda r: -FoldRecord.open(tmp_path / "exp003" / f"fold{r[1]}").summary["cv_f1"],
    )
    assert "best first within each objective" in capsys.readouterr().out


def test_the_pair_model_ships_on_its_figure_at_the_tests_size(
    tuned: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    """Rule and pair model compared by their CV F1 at --test-rows; what ships gives the ensemble's
    cv_f1_at_rows, the result line's and the report's headline; predict matches with it, at the
    probability threshold for its row count."""
    from shopee.pairwise.model import pair_thresholds_at
    from shopee.size_curve import f1_at

    out, data = tuned
    argv = ["optimize-ensemble", "exp003", "--data", str(data), "--output", str(out), "--name", "pm"]
    assert main([*argv, "--tfidf", "--blend-stages", "0", "--pair-model", "--test-rows", "5000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ensemble = read_ensemble(out / "ensembles" / "pm.json")
    pairs = ensemble["pair_model"]
    rule_at, pair_at = f1_at(ensemble["size_curve"], 5000), f1_at(pairs["size_curve"], 5000)
    assert pairs["decision"] == {
        "on": "CV F1 at 5000 rows",
        "pair_model": pair_at["f1"],
        "rule": rule_at["f1"],
    }
    assert pairs["shipped"] == (pair_at["f1"] > rule_at["f1"])
    shipped_at = pair_at if pairs["shipped"] else rule_at
    assert ensemble["cv_f1_at_rows"]["f1"] == result["cv_f1_at_rows"] == shipped_at["f1"]
    assert ensemble["cv_f1_at_rows_rule"]["f1"] == result["cv_f1_at_rows_rule"] == rule_at["f1"]
    assert result["shipped"] == ("pair model" if pairs["shipped"] else "thresholds")
    report = (out / "ensembles" / "pm" / "report.md").read_text()
    assert f"**Shipped: the {'pair model' if pairs['shipped'] else 'thresholds'}**" in report
    assert pairs["size_curve"]["f1_scored"].startswith("out of sample")

    assert main(_predict_argv(out / "ensembles" / "pm.json", data, tmp_path / "s.csv")) == 0
    printed = capsys.readouterr().out
    n_test = len(pd.read_csv(data / "test.csv"))
    if pairs["shipped"]:
        threshold, min2 = pair_thresholds_at(pairs, n_test)
        assert (
            f"matching with the pair model on {n_test} rows: probability >= {threshold}, min2 {min2}"
            in printed
        )
    else:
        assert f"matching with thresholds for {n_test} rows" in printed
