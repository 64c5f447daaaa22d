"""``python -m shopee kaggle train|status|pull|submit``: Kaggle's GPUs from the command line.

``train`` checks the kernel it resumes from (``check_resume_source``), builds the training kernel
(``training.build_training_kernel``), checks the weekly GPU quota, pushes its code dataset and then
the notebook; ``status`` says how a version is doing and shows the end of its log; ``pull``
downloads a version's output and installs its verified folds (``pull.pull``; ``--from DIR`` takes a
folder downloaded before, with no call to Kaggle); ``submit`` builds the inference kernel
(``shopee.kernel.build_kernel``, with ``build-kernel``'s own options), pushes it and, once a version
has run, submits it to the competition. Every call to Kaggle goes through the Kaggle CLI's own
client (``client``); each command ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from shopee.errors import ShopeeError
from shopee.kaggle_gpu import client

LOG_LINES = 20
_KERNEL = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9]+(?:-[a-z0-9]+)*)(?:/(\d+))?")


def kernel_ref(text: str, version: int | None = None) -> str:
    """``owner/slug`` or ``owner/slug/N`` checked; ``version`` appends ``/N``."""
    match = _KERNEL.fullmatch(text.strip())
    if not match:
        raise ShopeeError(f"{text!r}: expected a kernel as OWNER/SLUG (or OWNER/SLUG/VERSION)")
    if version is not None:
        if match.group(3):
            raise ShopeeError(f"{text}: give the version once (in the name or with --version)")
        return f"{match.group(1)}/{match.group(2)}/{version}"
    return text.strip()


def _base(kernel: str) -> str:
    return "/".join(kernel.split("/")[:2])


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _push(api, notebook_dir: Path, dataset_dir: Path, notes: str) -> tuple[client.Pushed, client.Pushed]:
    """The dataset first (created or a new version), once Kaggle has processed it the notebook."""
    dataset = client.push_dataset(api, dataset_dir, notes)
    print(
        f"dataset {dataset.ref}: {'created' if dataset.created else 'new version'} ({dataset.url})",
        flush=True,
    )
    print("waiting until Kaggle has processed it ...", flush=True)
    client.wait_for_dataset(api, dataset.ref)
    kernel = client.push_kernel(api, notebook_dir)
    print(f"kernel {kernel.ref}: version {kernel.version} queued ({kernel.url})", flush=True)
    return dataset, kernel


def _by_hand(notebook_dir: Path, dataset_dir: Path) -> None:
    from shopee.kernel.metadata import dataset_upload_command, kernel_push_command

    print("push them yourself with the Kaggle CLI:")
    print(f"  {dataset_upload_command(dataset_dir)}    # later: kaggle datasets version ... -m NOTE")
    print(f"  {kernel_push_command(notebook_dir)}")


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
def _check_quota(api, hours: float, debug: bool, ignore: bool) -> client.Quota | None:
    """Refuse a push whose estimated session hours exceed the week's GPU hours left."""
    quota = client.gpu_quota(api)
    if quota is None:
        print("GPU quota: this client or Kaggle does not tell (kaggle quota); not checked")
        return None
    refresh = f", refreshes {quota.refresh}" if quota.refresh else ""
    print(f"GPU quota: {quota.left_hours:.1f} h of {quota.total_hours:.1f} h left this week{refresh}")
    if quota.left_hours < hours and not debug and not ignore:
        raise ShopeeError(
            f"the run's estimated {hours:.1f} h on GPU T4 x2 exceed the {quota.left_hours:.1f} h of "
            "weekly GPU "
            "quota left: train fewer folds (--folds), wait for the refresh, or pass --ignore-quota"
        )
    return quota


def _resume_source_output(api, source: str, exp: str) -> str:
    """What the latest version of ``source`` left for ``exp`` to continue from: its
    ``output/<exp>/`` or at least a run record of ``exp`` ("" when neither). Listed, not downloaded
    (a training run's output holds gigabytes of weights); only a run record is fetched, to read it."""
    from shopee.kaggle_gpu.pull import RunRecord
    from shopee.kaggle_gpu.training import RUN_RECORD

    prefix = f"output/{exp}/"
    names = client.output_names(api, source, stop=lambda name: name.startswith(prefix))
    if any(name.startswith(prefix) for name in names):
        return prefix
    if f"output/{RUN_RECORD}" not in names:
        return ""
    with tempfile.TemporaryDirectory(prefix="shopee-run-record-") as folder:
        pattern = "^output/" + re.escape(RUN_RECORD) + "$"
        client.download_output(api, source, Path(folder), file_pattern=pattern)
        record = RunRecord.read(Path(folder) / "output" / RUN_RECORD)
    return f"output/{RUN_RECORD}" if record.exp == exp else ""


def check_resume_source(api, source: str, exp: str) -> None:
    """``--resume-from`` checked through the client before anything is pushed: Kaggle drops a
    kernel source it cannot attach only once the new version is queued, and that version then
    retrains every fold from scratch for up to a session. The source must exist, its latest version
    must have completed, and its output must hold this experiment's."""
    what = f"--resume-from {source}"
    try:
        status = client.kernel_status(api, source)
    except client.NotOnKaggle:
        raise ShopeeError(
            f"{what}: no such kernel on Kaggle (or not visible to these credentials); check the name "
            "(kaggle kernels list --mine)"
        ) from None
    if status.running:
        raise ShopeeError(
            f"{what}: its latest version is still {status.status}, and Kaggle attaches a version that "
            f"has finished: wait until python -m shopee kaggle status {source} says complete"
        )
    if status.status != "complete":
        failure = f" ({status.failure})" if status.failure else ""
        raise ShopeeError(
            f"{what}: its latest version ended {status.status}{failure}, and Kaggle attaches a completed "
            f"version's output: bring its finished folds home (python -m shopee kaggle pull {source} "
            "--data DIR) and train the others without --resume-from"
        )
    if not _resume_source_output(api, source, exp):
        raise ShopeeError(
            f"{what}: its latest version's output holds no output/{exp}/ and no run record of {exp}: "
            f"nothing of {exp} to continue from (another experiment's kernel?); drop --resume-from or "
            "name the kernel that trained it"
        )


def _cmd_train(args: argparse.Namespace) -> None:
    from shopee.data import find_data_dir
    from shopee.kaggle_gpu.training import (
        SESSION_HOURS,
        build_training_kernel,
        check_resume_from,
        parse_training_folds,
        training_slug,
    )
    from shopee.runner import load_experiment

    name, cfg = load_experiment(args.exp, args.set)
    folds, full = parse_training_folds(args.folds, cfg.n_folds)
    api, user = None, args.user
    if not args.no_push:  # credentials first: the build takes a while
        api = client.kaggle_api()
        user = user or client.username(api)
        if args.resume_from:  # before anything is built or pushed
            check_resume_from(args.resume_from, f"{user}/{training_slug(name, args.slug)}")
            check_resume_source(api, args.resume_from, name)
    kernel = build_training_kernel(
        args.exp,
        folds,
        user=user,
        out=Path(args.out),
        overrides=args.set,
        slug=args.slug,
        resume_from=args.resume_from,
        debug=args.debug,
        overwrite=args.overwrite,
        data_dir=find_data_dir(args.data),
        full=full,
    )
    what = f"folds {kernel.folds}" if kernel.folds else "no fold"
    print(
        f"notebook {kernel.notebook_dir} ({kernel.kernel_id}: GPU T4 x2, internet on, {name} {what}"
        f"{' and the full-data run' if kernel.full else ''}{' debug' if args.debug else ''}, "
        f"about {kernel.estimate_hours:.1f} h on the real data)"
    )
    print(f"dataset  {kernel.dataset_dir} ({kernel.dataset_id}: the package and exp/{name}.py)")
    if kernel.estimate_hours > SESSION_HOURS:
        print(
            f"note: more than one session ({SESSION_HOURS} h each); continue what is unfinished with "
            f"--resume-from {kernel.kernel_id} (and another --slug)"
        )
    result: dict[str, Any] = {
        "kernel": kernel.kernel_id,
        "dataset": kernel.dataset_id,
        "notebook_dir": str(kernel.notebook_dir),
        "dataset_dir": str(kernel.dataset_dir),
        "exp": name,
        "folds": kernel.folds,
        "full": kernel.full,
        "estimate_hours": round(kernel.estimate_hours, 2),
        "pushed": False,
    }
    if args.no_push:
        _by_hand(kernel.notebook_dir, kernel.dataset_dir)
        print(f"then: python -m shopee kaggle status {kernel.kernel_id}")
        _print_json(result)
        return
    quota = _check_quota(api, kernel.estimate_hours, args.debug, args.ignore_quota)
    requested = [*map(str, kernel.folds), *(["full"] if kernel.full else [])]
    notes = f"{name} folds {','.join(requested)}" + (f" --set {' '.join(args.set)}" if args.set else "")
    _, pushed = _push(api, kernel.notebook_dir, kernel.dataset_dir, notes)
    print(f"follow it: python -m shopee kaggle status {pushed.ref}")
    print(f"when it is complete: python -m shopee kaggle pull {pushed.ref} --data DIR")
    _print_json(
        {
            **result,
            "pushed": True,
            "version": pushed.version,
            "url": pushed.url,
            "quota_left_hours": round(quota.left_hours, 2) if quota else None,
        }
    )


# ------------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------------
def _cmd_status(args: argparse.Namespace) -> None:
    kernel = kernel_ref(args.kernel)
    api = client.kaggle_api()
    status = client.kernel_status(api, kernel)
    print(f"{kernel}: {status.status}")
    if status.failure:
        print(f"failure: {status.failure}")
    try:  # a queued version has no log yet; the state above is the answer then
        tail = client.log_tail(api, kernel, args.lines)
    except ShopeeError as exc:
        tail = []
        print(f"no log ({exc})")
    if tail:
        print(f"last {len(tail)} lines of the log:")
        for line in tail:
            print(f"  {line}")
    if status.status == "complete":
        version = kernel.split("/")[2] if kernel.count("/") == 2 else "N"
        print(
            f"next: python -m shopee kaggle pull {kernel} --data DIR (a training kernel), or "
            f"python -m shopee kaggle submit ENSEMBLE --name {kernel.split('/')[1]} --version {version} "
            "(a submission kernel)"
        )
    elif status.running:
        print(f"still {status.status}: ask again later")
    else:
        print(f"folds it finished can still come home: python -m shopee kaggle pull {kernel} --data DIR")
    _print_json({"kernel": kernel, "status": status.status, "failure": status.failure, "log": tail})


# ------------------------------------------------------------------------------------------------
# pull
# ------------------------------------------------------------------------------------------------
def _download_and_pull(kernel: str, output: Path, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from shopee.kaggle_gpu.pull import pull

    api = client.kaggle_api()
    status = client.kernel_status(api, kernel)
    if status.running:
        raise ShopeeError(
            f"{kernel}: still {status.status}; its output comes when it ends "
            f"(python -m shopee kaggle status {kernel})"
        )
    if status.status != "complete":
        failure = f": {status.failure}" if status.failure else ""
        print(f"note: {kernel} ended {status.status}{failure}; pulling the folds it finished")
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output, prefix=".kaggle-pull-") as folder:
        files = client.download_output(api, kernel, Path(folder))
        print(f"downloaded {len(files)} files of {kernel}'s output")
        return pull(
            Path(folder),
            output,
            data_dir,
            Path(args.exp_dir),
            overwrite=args.overwrite,
            allow_code_change=args.allow_code_change,
        )


def _continue_hint(summary: dict[str, Any], kernel: str, data_dir: Path) -> str:
    """The command that trains the missing folds on Kaggle, on the same data and fold split."""
    from shopee.kaggle_gpu.training import next_slug

    folds = ",".join(summary["missing"])
    sets = "".join(f" --set {s}" for s in summary["overrides"])
    debug = " --debug" if summary["debug"] else ""
    base = _base(kernel)
    return (
        f"continue the missing folds: python -m shopee kaggle train {summary['exp']} "
        f"--folds {folds}{sets}{debug} --data {data_dir} "
        f"--resume-from {base} --slug {next_slug(base.split('/')[1])}"
    )


def _cmd_pull(args: argparse.Namespace) -> None:
    from shopee.data import find_data_dir
    from shopee.kaggle_gpu.pull import describe, pull
    from shopee.outputs import fold_name

    kernel = kernel_ref(args.kernel, args.version)
    data_dir = find_data_dir(args.data)
    output = Path(args.output)
    if args.from_dir:
        summary = pull(
            Path(args.from_dir),
            output,
            data_dir,
            Path(args.exp_dir),
            overwrite=args.overwrite,
            allow_code_change=args.allow_code_change,
        )
    else:
        summary = _download_and_pull(kernel, output, data_dir, args)
    for line in describe(summary):
        print(line)
    if summary["missing"]:
        print(_continue_hint(summary, kernel, data_dir))
    _print_json({"kernel": kernel, **summary})
    problems = [f"{fold_name(f)} refused ({why})" for f, why in summary["refused"].items()]
    problems += [
        f"{fold_name(f)} kept (the local fold differs; --overwrite replaces it)" for f in summary["kept"]
    ]
    if problems:
        raise ShopeeError(f"{summary['exp']}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# submit
# ------------------------------------------------------------------------------------------------
def _submit_version(args: argparse.Namespace, message: str) -> None:
    """Submit a version that ran: Kaggle runs its notebook again on the hidden test."""
    from shopee.constants import COMPETITION
    from shopee.kernel.metadata import check_slug

    api = client.kaggle_api()
    kernel = f"{args.user or client.username(api)}/{check_slug(args.name)}"
    status = client.kernel_status(api, f"{kernel}/{args.version}")
    if status.status != "complete":
        failure = f" ({status.failure})" if status.failure else ""
        raise ShopeeError(
            f"{kernel} version {args.version} is {status.status}{failure}: Kaggle submits a version that ran "
            f"to the end (python -m shopee kaggle status {kernel}/{args.version})"
        )
    answer = client.submit(api, kernel, args.version, message)
    print(f"submitted {kernel} version {args.version} to {COMPETITION}: {answer}")
    print(
        "Kaggle now runs the notebook on the hidden test; the score appears under "
        f"https://www.kaggle.com/competitions/{COMPETITION}/submissions"
    )
    _print_json(
        {"kernel": kernel, "version": args.version, "submitted": True, "message": message, "answer": answer}
    )


def _cmd_submit(args: argparse.Namespace) -> None:
    from shopee.cli_args import kernel_options
    from shopee.constants import FULL_FOLD
    from shopee.ensemble_file import read_ensemble
    from shopee.kernel import build_kernel

    ensemble = read_ensemble(args.ensemble)
    cv = f"CV F1 {float(ensemble['cv_f1']):.4f}"
    if args.models == FULL_FOLD:  # no CV scores full-data models: the figure is their folds'
        cv = f"full-data models; the fold models' {cv}"
    message = args.message or f"{ensemble['name']} ({cv})"
    if args.version is not None:
        _submit_version(args, message)
        return
    api, user = None, args.user
    if not args.no_push:
        api = client.kaggle_api()
        user = user or client.username(api)
    kernel = build_kernel(Path(args.ensemble), args.name, **{**kernel_options(args), "user": user})
    kernel_id = kernel.manifest["kernel"]
    models = "full-data models" if args.models == FULL_FOLD else "fold models"
    print(f"notebook {kernel.notebook_dir} ({kernel_id}: offline, accelerator {args.accelerator})")
    print(
        f"dataset  {kernel.dataset_dir} ({kernel.manifest['dataset']}: "
        f"{len(kernel.manifest['folds'])} {models})"
    )
    result: dict[str, Any] = {
        "kernel": kernel_id,
        "notebook_dir": str(kernel.notebook_dir),
        "dataset_dir": str(kernel.dataset_dir),
        "pushed": False,
        "submitted": False,
    }
    later = f"python -m shopee kaggle submit {args.ensemble} --name {args.name} --version N"
    if args.no_push:
        _by_hand(kernel.notebook_dir, kernel.dataset_dir)
        print(f"once version N has run: {later}")
        _print_json(result)
        return
    _, pushed = _push(api, kernel.notebook_dir, kernel.dataset_dir, f"ensemble {ensemble['name']}")
    later = later.replace("--version N", f"--version {pushed.version}")
    print("not submitted yet: Kaggle submits a version that has run to the end. Wait until")
    print(f"  python -m shopee kaggle status {pushed.ref}/{pushed.version}")
    print(f"says complete, then: {later}")
    _print_json({**result, "pushed": True, "version": pushed.version, "url": pushed.url, "next": later})


# ------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------
def add_kaggle_parser(sub: argparse._SubParsersAction) -> None:
    from shopee.cli_args import DATA_HELP, add_allow_code_change, add_kernel_options, add_set, positive_int

    group = sub.add_parser(
        "kaggle",
        help="train on Kaggle's GPUs, follow a run, pull its folds home, submit (the Kaggle CLI's client)",
    )
    actions = group.add_subparsers(dest="kaggle_command", required=True, metavar="{train,status,pull,submit}")
    user_help = "Kaggle user owning the kernel [the credentials' user]"

    train = actions.add_parser("train", help="push a kernel that trains an experiment's folds on GPU T4 x2")
    train.add_argument("exp", help="experiment name or file (exp055)")
    train.add_argument(
        "--folds",
        default="all",
        help="0-4, 0,2 or all, and full for a full-data run after them (all,full or full alone) "
        "[%(default)s]",
    )
    add_set(train)
    train.add_argument("--user", default=None, help=user_help)
    train.add_argument("--out", default="kernels", help="where the two folders go [%(default)s]")
    train.add_argument("--slug", default=None, help="the kernel's slug [EXP-train]")
    train.add_argument(
        "--resume-from",
        default=None,
        metavar="OWNER/SLUG",
        help="attach that kernel's output: its finished folds are kept, its unfinished ones continue",
    )
    train.add_argument(
        "--data", default=None, help=DATA_HELP + "; its fold split is shipped, so that the folds pull home"
    )
    train.add_argument("--debug", action="store_true", help="a smoke run: a few batches per fold")
    train.add_argument(
        "--no-push", action="store_true", help="build the folders only and say how to push them"
    )
    train.add_argument(
        "--ignore-quota", action="store_true", help="push even if the estimate exceeds the quota left"
    )
    train.add_argument("--overwrite", action="store_true", help="replace folders holding something else")
    train.set_defaults(func=_cmd_train)

    status = actions.add_parser("status", help="a kernel version's state, failure message and last log lines")
    status.add_argument("kernel", metavar="OWNER/SLUG[/VERSION]")
    status.add_argument("--lines", type=int, default=LOG_LINES, help="log lines to show [%(default)s]")
    status.set_defaults(func=_cmd_status)

    pull = actions.add_parser("pull", help="download a version's output and install its verified folds")
    pull.add_argument("kernel", metavar="OWNER/SLUG")
    pull.add_argument("--version", type=positive_int, default=None, help="that version [the latest]")
    pull.add_argument(
        "--data", default=None, help=DATA_HELP + "; the folds are checked against its train.csv"
    )
    pull.add_argument("--output", default="output", help="output root the folds go into [%(default)s]")
    pull.add_argument("--exp-dir", default="exp", help="where the experiment files are [%(default)s]")
    pull.add_argument("--overwrite", action="store_true", help="replace local folds that differ")
    add_allow_code_change(pull)
    pull.add_argument(
        "--from",
        dest="from_dir",
        default=None,
        metavar="DIR",
        help="a version's output downloaded before (kaggle kernels output OWNER/SLUG -p DIR): "
        "no call to Kaggle",
    )
    pull.set_defaults(func=_cmd_pull)

    submit = actions.add_parser(
        "submit", help="build and push the inference kernel of an ensemble; submit a version that ran"
    )
    submit.add_argument("ensemble", help="OUTPUT/ensembles/NAME.json")
    submit.add_argument("--name", required=True, help="kernel slug (kernels/NAME and kernels/NAME-dataset)")
    add_kernel_options(submit)  # build-kernel's own, --user defaulting to the credentials' user
    submit.add_argument("--message", default=None, help="submission description [ensemble name and CV F1]")
    submit.add_argument(
        "--no-push", action="store_true", help="build the folders only and say how to push them"
    )
    submit.add_argument(
        "--version",
        type=positive_int,
        default=None,
        help="submit this version of OWNER/NAME, which must have run to the end (no build, no push)",
    )
    submit.set_defaults(func=_cmd_submit)
