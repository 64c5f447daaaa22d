"""``python -m shopee bench WHAT``: the benchmarks' command line (none of it ships in a Kaggle
bundle; each benchmark prints figures and ends with one JSON line)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shopee.cli_args import DATA_HELP, add_backend, add_exact_blending, add_set, positive_int
from shopee.constants import TEST_ROWS
from shopee.data import find_data_dir
from shopee.errors import ShopeeError


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from shopee.bench.train import bench_train
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    result = bench_train(cfg, find_data_dir(args.data), batches=args.batches)
    print(f"{exp} on {result['device']}, batch {result['batch_size']}, {result['num_workers']} workers:")
    for what in ("train", "embed"):
        print(
            f"  {what:<6} real loader {result[f'{what}_loader_per_s']:8.1f} samples/s   "
            f"ready tensors {result[f'{what}_tensors_per_s']:8.1f} samples/s   "
            f"ratio {result[f'{what}_ratio']:.3f}"
        )
    print(json.dumps({"exp": exp, **result}))


def _cmd_bench_embed(args: argparse.Namespace) -> None:
    from shopee.bench.embed import bench_embed, print_bench_embed
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    try:
        sizes = [int(v) for v in args.image_sizes.split(",")]
    except ValueError:
        raise ShopeeError(f"--image-sizes {args.image_sizes!r}: expected sizes like 128,256,384") from None
    print(f"{exp}:")
    print_bench_embed(
        bench_embed(cfg, sizes, batches=args.batches, batch_size=args.batch_size, source_px=args.source_px)
    )


def _cmd_bench_match(args: argparse.Namespace) -> None:
    from shopee.bench.match import run_bench

    run_bench(
        args.n,
        args.dim,
        search=args.search,
        pair_model=args.pair_model,
        train_rows=args.train_rows,
        search_rows=args.search_rows,
        search_phases=args.phases,
        blend_stages=args.blend_stages,
        seed=args.seed,
        backend=args.backend,
        exact_blending=args.exact_blending,
    )


def _cmd_bench_gpu(args: argparse.Namespace) -> None:
    import torch

    from shopee.bench.gpu import bench_gpu, print_bench_gpu
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    device = (
        torch.device(args.device)
        if args.device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ShopeeError(
            "bench gpu: no CUDA device here (use --device cpu to run the same steps on the CPU)"
        )
    result = bench_gpu(
        cfg,
        device,
        image_size=args.image_size,
        steps=args.steps,
        embed_batches=args.embed_batches,
        knn_rows=args.knn_rows,
        knn_dim=args.knn_dim,
        kernel=Path(args.kernel) if args.kernel else None,
        data=find_data_dir(args.data) if args.kernel else None,
        labels=Path(args.labels) if args.labels else None,
    )
    print_bench_gpu({"exp": exp, **result})


def _cmd_bench_gpu_check(args: argparse.Namespace) -> None:
    import torch

    from shopee.bench.gpu_check import CheckOptions, gpu_check, no_gpu_line, parse_steps

    steps = parse_steps(args.steps)
    if args.device == "cpu":
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(no_gpu_line(), flush=True)  # nothing to check, and nothing wrong
        return
    else:
        device = torch.device("cuda", 0)
    gpu_check(
        CheckOptions(
            out=Path(args.out),
            device=device,
            steps=steps,
            recipe=args.recipe,
            overrides=tuple(args.set),
            knn_rows=args.knn_rows,
        )
    )


def _cmd_bench_density(args: argparse.Namespace) -> None:
    from shopee.bench.density import bench_density
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    sizes, folds = _ints(args.sizes, "--sizes"), _ints(args.folds, "--folds")
    bench_density(
        find_data_dir(args.data),
        exp,
        cfg,
        Path(args.work),
        tune_rows=args.tune_rows,
        sizes=sizes,
        folds=folds,
        tfidf=args.tfidf,
        phash=args.phash,
    )


def _cmd_bench_unseen(args: argparse.Namespace) -> None:
    from shopee.bench.unseen import bench_unseen
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    bench_unseen(
        find_data_dir(args.data),
        exp,
        cfg,
        Path(args.work),
        tune_share=args.tune_share,
        folds=_ints(args.folds, "--folds"),
        seed=args.seed,
        tfidf=args.tfidf,
        phash=args.phash,
        pair_model=args.pair_model,
        blend_stages=args.blend_stages,
        exact_blending=args.exact_blending,
    )


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ShopeeError(f"{flag} {text!r}: expected comma-separated integers") from None


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures (not tests)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_train = bench_sub.add_parser(
        "train", help="training and embedding throughput: real loader vs tensors"
    )
    bench_train.add_argument("--data", default=None, help=DATA_HELP)
    bench_train.add_argument("--exp", required=True, help="experiment name (exp/NAME.py) or path")
    bench_train.add_argument("--batches", type=int, default=10, help="timed batches [%(default)s]")
    add_set(bench_train)
    bench_train.set_defaults(func=_cmd_bench_train)
    bench_embed = bench_sub.add_parser(
        "embed",
        help="per-item inference costs: JPEG decode, image and text forward, GFLOPs, model loading",
    )
    bench_embed.add_argument("--exp", required=True, help="experiment name (exp/NAME.py) or path")
    bench_embed.add_argument(
        "--image-sizes", default="128,256,384,512", help="comma-separated sizes [%(default)s]"
    )
    bench_embed.add_argument("--source-px", type=positive_int, default=640, help="JPEG side [%(default)s]")
    bench_embed.add_argument("--batches", type=positive_int, default=5, help="timed batches [%(default)s]")
    bench_embed.add_argument("--batch-size", type=positive_int, default=32, help="[%(default)s]")
    add_set(bench_embed)
    bench_embed.set_defaults(func=_cmd_bench_embed)
    bench_gpu = bench_sub.add_parser(
        "gpu",
        help="the GPU check: training steps in every precision the card has, embedding throughput, "
        "kNN backends against torch, optionally a kernel run; one JSON line",
    )
    bench_gpu.add_argument("--exp", default="exp001", help="experiment name or path [%(default)s]")
    bench_gpu.add_argument("--device", default=None, help="cuda, cuda:1 or cpu [cuda]")
    bench_gpu.add_argument("--image-size", type=positive_int, default=256, help="[%(default)s]")
    bench_gpu.add_argument(
        "--steps", type=positive_int, default=10, help="timed training steps [%(default)s]"
    )
    bench_gpu.add_argument("--embed-batches", type=positive_int, default=10, help="[%(default)s]")
    bench_gpu.add_argument("--knn-rows", type=positive_int, default=TEST_ROWS, help="[%(default)s]")
    bench_gpu.add_argument("--knn-dim", type=positive_int, default=512, help="[%(default)s]")
    bench_gpu.add_argument("--kernel", default=None, help="a built kernel folder to run here (run-kernel)")
    bench_gpu.add_argument("--data", default=None, help=DATA_HELP)
    bench_gpu.add_argument("--labels", default=None, help="test labels to score the kernel's submission")
    add_set(bench_gpu)
    bench_gpu.set_defaults(func=_cmd_bench_gpu)
    check = bench_sub.add_parser(
        "gpu-check",
        help="the first run on a GPU (make gpu-check): the CUDA tests, a debug fold, a recipe's training "
        "step in fp16/bf16, data parallel, predict over every GPU, kNN backends, bench gpu; one JSON report",
    )
    check.add_argument("--out", default="output/gpu-check", help="report and work folder [%(default)s]")
    check.add_argument("--steps", default="all", help="which steps, e.g. 2,5 or 1-3 [%(default)s]")
    check.add_argument(
        "--recipe", default="exp051", help="step 3's experiment, built with random weights [%(default)s]"
    )
    check.add_argument("--knn-rows", type=positive_int, default=TEST_ROWS, help="step 6's rows [%(default)s]")
    check.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)  # tests
    check.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for step 3's recipe and step 7's exp001",
    )
    check.set_defaults(func=_cmd_bench_gpu_check)
    bench_density = bench_sub.add_parser(
        "density",
        help="thresholds tuned on a subset's folds (fixed, dense, size-following) against the best ones on "
        "larger sets of other groups",
    )
    bench_density.add_argument(
        "--data", default=None, help=DATA_HELP + "; a large demo, e.g. --n-train 25000"
    )
    bench_density.add_argument("--exp", default="exp003", help="experiment name or path [%(default)s]")
    bench_density.add_argument(
        "--work", default="output/bench-density", help="its own output folder [%(default)s]"
    )
    bench_density.add_argument("--tune-rows", type=positive_int, default=5000, help="[%(default)s]")
    bench_density.add_argument("--sizes", default="5000,10000,20000", help="evaluation sizes [%(default)s]")
    bench_density.add_argument("--folds", default="0,1", help="folds trained on the subset [%(default)s]")
    bench_density.add_argument("--tfidf", action=argparse.BooleanOptionalAction, default=True, help="[on]")
    bench_density.add_argument("--phash", action=argparse.BooleanOptionalAction, default=True, help="[on]")
    add_set(bench_density)
    bench_density.set_defaults(func=_cmd_bench_density)
    unseen = bench_sub.add_parser(
        "unseen",
        help="CV against a test of unseen groups: tune on a third of train's groups, predict the rest "
        "as the notebook would, per rule: dense, held-out and expected CV, F1 there, best F1 there",
    )
    unseen.add_argument("--data", default=None, help=DATA_HELP + "; a large demo, e.g. --n-train 30000")
    unseen.add_argument("--exp", default="exp003", help="experiment name or path [%(default)s]")
    unseen.add_argument("--work", default="output/bench-unseen", help="its own output folder [%(default)s]")
    unseen.add_argument(
        "--tune-share", type=float, default=1 / 3, help="share of the rows tuned on (T) [a third]"
    )
    unseen.add_argument("--folds", default="0,1", help="folds trained on T [%(default)s]")
    unseen.add_argument("--seed", type=int, default=0, help="the split's seed [%(default)s]")
    unseen.add_argument("--blend-stages", type=int, default=2, help="[%(default)s]")
    add_exact_blending(unseen)
    for flag in ("tfidf", "phash", "pair-model"):
        unseen.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=True, help="[on]")
    add_set(unseen)
    unseen.set_defaults(func=_cmd_bench_unseen)
    bench_match = bench_sub.add_parser(
        "match",
        help="matching speed on synthetic data: the rule's stages against bare top-k, post-processing; "
        "--search times the threshold search instead",
    )
    bench_match.add_argument("--n", type=int, default=TEST_ROWS, help="synthetic postings [%(default)s]")
    bench_match.add_argument("--dim", type=int, default=512, help="embedding dimensions [%(default)s]")
    bench_match.add_argument("--search", action="store_true", help="time the threshold search on OOF rows")
    bench_match.add_argument(
        "--phases", action="store_true", help="with --search: also the held-out searches and the size curve"
    )
    bench_match.add_argument(
        "--pair-model",
        action="store_true",
        help="time the second stage (candidates, features, LightGBM) on --n rows; with --search "
        "--phases: also train it as optimize-ensemble --pair-model does, timed",
    )
    bench_match.add_argument(
        "--train-rows",
        type=positive_int,
        default=6000,
        help="synthetic rows the pair model trains on [%(default)s]",
    )
    bench_match.add_argument(
        "--search-rows", type=int, default=34000, help="OOF rows for --search [%(default)s]"
    )
    bench_match.add_argument(
        "--blend-stages", type=int, default=None, help="blending stages --search tries [the search's default]"
    )
    add_exact_blending(bench_match, "with --search: ")
    bench_match.add_argument("--seed", type=int, default=0, help="random seed [%(default)s]")
    add_backend(bench_match)
    bench_match.set_defaults(func=_cmd_bench_match)
