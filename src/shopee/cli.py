"""``python -m shopee <command>``: the pipeline's command line.

Every command turns a user mistake (``ShopeeError``) into one ``error: ...`` line on stderr and
exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from shopee.cli_args import (
    DATA_HELP,
    add_allow_code_change,
    add_backend,
    add_exact_blending,
    add_kernel_options,
    add_models,
    add_tta,
    kernel_options,
    positive_int,
)
from shopee.constants import (
    FOLD_COMBINATIONS,
    IMAGE_POLICIES,
    OBJECTIVES,
    PREDICT_IMAGE_POLICIES,
    TEST_ROWS,
)
from shopee.data import SPLITS, find_data_dir, read_split
from shopee.errors import ShopeeError, exit_code
from shopee.fetch import add_fetch_parser
from shopee.kaggle_gpu.commands import add_kaggle_parser
from shopee.plan import add_plan_parser


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from shopee.demo import generate_demo

    summary = generate_demo(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        image_size=args.image_size,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print(
        f"wrote {args.out}: {summary['train_rows']} train rows in {summary['train_groups']} groups, "
        f"{summary['test_rows']} test rows in {summary['test_groups']} groups, "
        f"{summary['images']} images, in {summary['seconds']} s"
    )
    print(json.dumps(summary))


def _cmd_check_data(args: argparse.Namespace) -> None:
    data_dir = find_data_dir(args.data)
    summary: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        if not (data_dir / f"{split}.csv").is_file():
            print(f"{split}.csv: absent")
            continue
        df = read_split(data_dir, split, image_policy=args.image_policy)
        info = {
            "rows": len(df),
            "images_checked": int((df["image_path"] != "").sum()),
            "images_blank": int((~df["image_ok"] & (df["image_path"] != "")).sum()),
            "titles_changed_by_normalization": int((df["title"] != df["title_raw"]).sum()),
        }
        if "label_group" in df:
            info["groups"] = int(df["label_group"].nunique())
        summary[split] = info
        images = f"{info['images_checked']} images checked" if info["images_checked"] else "no image folder"
        groups = f", {info['groups']} groups" if "groups" in info else ""
        print(
            f"{split}.csv: {info['rows']} rows{groups}, {images}, "
            f"{info['titles_changed_by_normalization']} titles normalized"
        )
    print(f"{data_dir}: ok")
    if args.json:
        print(json.dumps(summary))


def _cmd_baselines(args: argparse.Namespace) -> None:
    from shopee.baselines import format_baselines, run_baselines
    from shopee.folds import load_folds

    started = time.perf_counter()
    data_dir = find_data_dir(args.data)
    train = read_split(data_dir, "train", check_images=False)
    folds = load_folds(data_dir, train, args.n_folds)
    result = run_baselines(train, folds)
    print(
        f"baselines on {data_dir / 'train.csv'} ({len(train)} rows, {train['label_group'].nunique()} groups)"
    )
    print(format_baselines(result, len(train), args.n_folds))
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.json:
        print(json.dumps(result))


def _cmd_train(args: argparse.Namespace) -> None:
    import torch

    from shopee.launch import parse_folds, parse_groups, print_summary, train_folds
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    folds = parse_folds(args.folds, cfg.n_folds)
    default = ",".join(str(i) for i in range(torch.cuda.device_count())) or "cpu"
    groups = parse_groups(args.gpus or default)
    exp_path = Path(args.exp) if Path(args.exp).suffix else Path("exp") / f"{args.exp}.py"
    passed = ["--output", args.output, *(["--data", args.data] if args.data else [])]
    flags = {
        "--debug": args.debug,
        "--resume": args.resume,
        "--overwrite": args.overwrite,
        "--slim-weights": args.slim_weights,
    }
    passed += [flag for flag, on in flags.items() if on]
    for assignment in args.set:
        passed += ["--set", assignment]
    print(f"{exp}: folds {folds} over {len(groups)} device group(s): {args.gpus or default}", flush=True)
    code, jobs = train_folds(exp_path.resolve(), exp, folds, groups, Path(args.output), passed)
    print_summary(exp, jobs)
    if code:
        raise ShopeeError(
            f"{sum(job.returncode != 0 for job in jobs)} of {len(jobs)} folds failed (see their logs)"
        )


def _cmd_runs(args: argparse.Namespace) -> None:
    from shopee.runs import print_runs

    print_runs(Path(args.output))


def _cmd_optimize_ensemble(args: argparse.Namespace) -> None:
    from shopee.ensemble import optimize_ensemble
    from shopee.ensemble_file import read_ensemble, summary_table

    output = Path(args.output)
    result = optimize_ensemble(
        args.experiments,
        find_data_dir(args.data),
        args.name,
        output,
        use_tfidf=args.tfidf,
        use_phash=args.phash,
        objective=args.objective,
        backend=args.backend,
        blend_stages=args.blend_stages,
        heldout_estimate=args.heldout,
        by_size=args.by_size,
        pair_model=args.pair_model or args.force_pair_model,
        pca_dims=_dims(args.pca),
        pca_whiten=args.pca_whiten,
        force_pair_model=args.force_pair_model,
        test_rows=args.test_rows,
        fold_combination=args.fold_combination,
        exact_blending=args.exact_blending,
        allow_code_change=args.allow_code_change,
    )
    ensemble = read_ensemble(output / "ensembles" / f"{args.name}.json")
    print(summary_table(ensemble).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    folder = output / "ensembles"
    print(f"wrote {folder / (args.name + '.json')} and its report in {folder / args.name}")
    print(json.dumps(result))


def _cmd_predict(args: argparse.Namespace) -> None:
    from shopee.predict import predict, print_timings, score_on_train, write_submission
    from shopee.runtime import parse_devices

    started = time.perf_counter()
    timings: dict[str, float] = {}
    data_dir = find_data_dir(args.data)
    submission = predict(
        Path(args.ensemble),
        data_dir,
        output=Path(args.output) if args.output else None,
        split=args.split,
        limit=args.limit,
        image_policy=args.image_policy,
        backend=args.backend,
        tta=None if args.tta == "none" else args.tta,
        timings=timings,
        devices=parse_devices(args.devices),
        by_size=not args.fixed_thresholds,
        models=args.models,
    )
    write_submission(submission, Path(args.out))
    print_timings(timings)
    sizes = submission["matches"].str.count(" ") + 1
    print(f"wrote {args.out}: {len(submission)} rows, {sizes.mean():.2f} matches per row on average")
    result = {
        "out": str(args.out),
        "rows": len(submission),
        "mean_matches": round(float(sizes.mean()), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.split == "train":  # labels at hand: score it (optimistic, the models saw most rows)
        score = score_on_train(submission, data_dir)
        print(f"F1 on train {score.f1:.4f} (precision {score.precision:.4f}, recall {score.recall:.4f})")
        result["f1"] = score.f1
    print(json.dumps(result))


def _cmd_build_kernel(args: argparse.Namespace) -> None:
    from shopee.kernel import build_kernel
    from shopee.kernel import metadata as meta
    from shopee.kernel.bundle import size_mib

    kernel = build_kernel(Path(args.ensemble), args.name, **kernel_options(args))
    m = kernel.manifest
    size = size_mib(m)
    print(f"notebook {kernel.notebook} (kernel {m['kernel']}, accelerator {args.accelerator}, internet off)")
    print(f"dataset  {kernel.dataset_dir}: {len(m['files'])} files, {size:.1f} MiB, {len(m['folds'])} folds")
    print("upload (a new version of the dataset later: kaggle datasets version ... -m NOTE):")
    print(f"  {meta.dataset_upload_command(kernel.dataset_dir)}")
    print(f"  {meta.kernel_push_command(kernel.notebook_dir)}")
    print(f"try it here first: python -m shopee run-kernel {kernel.notebook_dir} --data DIR")
    print(
        json.dumps(
            {
                "notebook": str(kernel.notebook),
                "dataset": str(kernel.dataset_dir),
                "files": len(m["files"]),
                "mib": round(size, 1),
                "git_commit": m["git_commit"],
            }
        )
    )


def _cmd_run_kernel(args: argparse.Namespace) -> None:
    from shopee.kernel import run_kernel
    from shopee.kernel.local import cell_outputs

    working, nb, seconds = run_kernel(
        Path(args.kernel),
        find_data_dir(args.data),
        work=Path(args.work) if args.work else None,
        dataset_dir=Path(args.dataset) if args.dataset else None,
        timeout=args.timeout,
        python=Path(args.python) if args.python else None,
    )
    print(cell_outputs(nb))
    print(f"notebook ran in {seconds:.1f} s; outputs in {working}")
    submission = working / "submission.csv"
    print(json.dumps({"working": str(working), "submission": str(submission), "seconds": round(seconds, 1)}))


def _cmd_demo_summary(args: argparse.Namespace) -> None:
    from shopee.demo.summary import demo_summary

    demo_summary(Path(args.ensemble), Path(args.submission), Path(args.labels), Path(args.kernel))


def _cmd_score(args: argparse.Namespace) -> None:
    from shopee.metrics import score_files

    score, n_labels = score_files(Path(args.submission), Path(args.labels))
    print(
        f"{args.submission}: F1 {score.f1:.4f}, precision {score.precision:.4f}, recall {score.recall:.4f} "
        f"on {n_labels} rows"
    )
    print(
        json.dumps({"f1": score.f1, "precision": score.precision, "recall": score.recall, "rows": n_labels})
    )


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ShopeeError(f"--pca {text!r}: expected dimensions such as 64,128") from None
    if any(d < 2 for d in dims):
        raise ShopeeError(f"--pca {text!r}: a dimension must be at least 2")
    return dims


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shopee",
        description="Train, match and submit for Kaggle's Shopee - Price Match Guarantee.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo-data", help="write the synthetic demo dataset (competition layout)")
    demo.add_argument("--out", default="input/shopee-demo", help="output directory [%(default)s]")
    demo.add_argument("--n-train", type=int, default=3000, help="train rows [%(default)s]")
    demo.add_argument("--n-test", type=int, default=1000, help="test rows [%(default)s]")
    demo.add_argument("--image-size", type=int, default=256, help="image side in pixels [%(default)s]")
    demo.add_argument("--seed", type=int, default=0, help="random seed [%(default)s]")
    demo.add_argument("--workers", type=int, default=None, help="processes rendering images [all cores]")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    demo.set_defaults(func=_cmd_demo_data)

    check = sub.add_parser("check-data", help="validate a competition directory (CSVs and images)")
    check.add_argument("--data", default=None, help=DATA_HELP)
    check.add_argument(
        "--image-policy",
        choices=IMAGE_POLICIES,
        default="error",
        help="missing or unreadable images: stop, skip the row, or use a blank image [%(default)s]",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    check.set_defaults(func=_cmd_check_data)

    base = sub.add_parser("baselines", help="F1 of self-only, phash and TF-IDF matching on train")
    base.add_argument(
        "--data",
        default=None,
        help="competition directory or Kaggle input root [$SHOPEE_DATA, /kaggle/input]",
    )
    base.add_argument("--n-folds", type=int, default=5, help="GroupKFold folds [%(default)s]")
    base.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    base.set_defaults(func=_cmd_baselines)

    train = sub.add_parser(
        "train", help="train folds of an experiment side by side, one process per device group"
    )
    train.add_argument("exp", help="experiment name (exp/NAME.py) or path")
    train.add_argument("--folds", default="all", help="folds: 0-4, 0,2,3 or all [%(default)s]")
    train.add_argument(
        "--gpus",
        default=None,
        help="device groups, one fold each at a time: 0,1,2,3 (a GPU each), 0+1,2+3 (two GPUs each, "
        "data parallel under torchrun), cpu,cpu (two CPU processes) [every visible GPU, else cpu]",
    )
    train.add_argument("--data", default=None, help=DATA_HELP)
    train.add_argument("--output", default="output", help="output root [%(default)s]")
    train.add_argument("--debug", action="store_true", help="smoke runs")
    train.add_argument("--resume", action="store_true", help="continue interrupted folds")
    train.add_argument("--overwrite", action="store_true", help="train finished folds again")
    train.add_argument(
        "--slim-weights", action="store_true", help="finished folds keep float16 weights without heads"
    )
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.set_defaults(func=_cmd_train)

    runs = sub.add_parser("runs", help="every finished fold and ensemble in the output folder, best first")
    runs.add_argument("--output", default="output", help="output root [%(default)s]")
    runs.set_defaults(func=_cmd_runs)

    opt = sub.add_parser("optimize-ensemble", help="search matching thresholds and rules on CV F1")
    opt.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names (output/EXP/foldK)")
    opt.add_argument("--data", default=None, help=DATA_HELP)
    opt.add_argument("--name", required=True, help="ensemble name: writes OUTPUT/ensembles/NAME.json")
    opt.add_argument("--output", default="output", help="output root [%(default)s]")
    opt.add_argument("--tfidf", action="store_true", help="TF-IDF on titles as a member")
    opt.add_argument("--phash", action="store_true", help="image phash as a member")
    opt.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="dense",
        help="maximize F1 on: dense (each fold's validation rows among its training rows too, at "
        "train's density), fold (within each fold), all (all OOF rows, folds' spaces mixed) [%(default)s]",
    )
    add_exact_blending(opt)
    opt.add_argument(
        "--heldout",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the search once per left-out fold and report its F1 there [on]",
    )
    opt.add_argument(
        "--pca",
        default="",
        metavar="DIMS",
        help="also try PCA of every embedding concatenated, to these dimensions (e.g. 64,128), as members",
    )
    opt.add_argument("--pca-whiten", action="store_true", help="whiten those PCA components")
    opt.add_argument(
        "--pair-model",
        action="store_true",
        help="train a second stage: LightGBM on candidate pairs of the dense sets; predict uses it when "
        "it beats the thresholds on the held-out CV",
    )
    opt.add_argument(
        "--force-pair-model", action="store_true", help="ship the pair model even when it loses on CV"
    )
    opt.add_argument(
        "--test-rows",
        type=positive_int,
        default=TEST_ROWS,
        help="report the CV F1 expected at this many test rows [%(default)s]",
    )
    opt.add_argument(
        "--fold-combination",
        choices=FOLD_COMBINATIONS,
        default=FOLD_COMBINATIONS[0],
        help="how predict combines an experiment's fold models: the mean of their embeddings, or of "
        "their cosines (each fold's space kept) [%(default)s]",
    )
    opt.add_argument(
        "--by-size",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the thresholds against the number of rows, for predict to follow the test's size [on]",
    )
    opt.add_argument(
        "--blend-stages",
        type=int,
        default=2,
        help="neighbourhood-blending stages to try per embedding member; each tried threshold costs one "
        "kNN search per fold (0 skips blending) [%(default)s]",
    )
    add_backend(opt, default="auto")  # faiss searches about 1.5x faster than torch on CPU
    add_allow_code_change(opt)
    opt.set_defaults(func=_cmd_optimize_ensemble)

    pred = sub.add_parser("predict", help="embed and match a split with a tuned ensemble; write a submission")
    pred.add_argument("--ensemble", required=True, help="OUTPUT/ensembles/NAME.json")
    pred.add_argument("--data", default=None, help=DATA_HELP)
    pred.add_argument("--out", default="submission.csv", help="submission file [%(default)s]")
    pred.add_argument("--output", default=None, help="experiments' output root [the folder above ensembles/]")
    pred.add_argument(
        "--split", choices=("test", "train"), default="test", help="rows to predict [%(default)s]"
    )
    pred.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N rows (whole groups on train)"
    )
    pred.add_argument(
        "--image-policy",
        choices=PREDICT_IMAGE_POLICIES,
        default="blank",
        help="a test image that will not open: blank keeps the submission complete [%(default)s]",
    )
    pred.add_argument(
        "--fixed-thresholds",
        action="store_true",
        help="use the thresholds as tuned, not the size curve evaluated at the number of rows",
    )
    pred.add_argument(
        "--devices",
        default=None,
        metavar="LIST",
        help="devices sharing the fold models, e.g. cuda:0,cuda:1 [every visible GPU, else the CPU]",
    )
    add_tta(pred)
    add_models(pred)
    add_backend(pred)
    pred.set_defaults(func=_cmd_predict)

    kern = sub.add_parser(
        "build-kernel", help="an offline Kaggle notebook and its dataset from a tuned ensemble"
    )
    kern.add_argument("--ensemble", required=True, help="OUTPUT/ensembles/NAME.json")
    kern.add_argument("--name", required=True, help="kernel slug: writes OUT/NAME and OUT/NAME-dataset")
    add_kernel_options(kern)
    kern.set_defaults(func=_cmd_build_kernel)

    runk = sub.add_parser("run-kernel", help="execute a built notebook here, offline, as Kaggle would")
    runk.add_argument("kernel", help="the notebook folder (kernels/NAME)")
    runk.add_argument("--data", default=None, help=DATA_HELP)
    runk.add_argument("--dataset", default=None, help="its dataset folder [KERNEL-dataset beside it]")
    runk.add_argument("--work", default=None, help="run folder (input/ and working/) [KERNEL-run beside it]")
    runk.add_argument("--timeout", type=positive_int, default=None, help="seconds per cell [no limit]")
    runk.add_argument(
        "--python",
        default=None,
        metavar="PATH",
        help="run the notebook on this interpreter (with ipykernel), e.g. .venv-kaggle/bin/python for "
        "Kaggle's library versions [this one]",
    )
    runk.set_defaults(func=_cmd_run_kernel)

    score = sub.add_parser(
        "score", help="F1 of a submission against labels (e.g. the demo's test_labels.csv)"
    )
    score.add_argument("--submission", required=True, help="posting_id,matches CSV")
    score.add_argument("--labels", required=True, help="posting_id,label_group CSV")
    score.set_defaults(func=_cmd_score)

    summary = sub.add_parser("demo-summary", help="the closing table of make demo")
    summary.add_argument("--ensemble", required=True, help="OUTPUT/ensembles/NAME.json")
    summary.add_argument("--submission", required=True, help="the kernel's submission.csv")
    summary.add_argument("--labels", required=True, help="the demo's test_labels.csv")
    summary.add_argument("--kernel", required=True, help="the kernel's notebook folder")
    summary.set_defaults(func=_cmd_demo_summary)

    add_plan_parser(sub)
    add_fetch_parser(sub)
    add_kaggle_parser(sub)
    try:  # a Kaggle bundle leaves the benchmarks out
        from shopee.bench.cli import add_bench_parser
    except ImportError:
        pass
    else:
        add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: args.func(args))
