"""``python -m shopee train EXP --folds 0-4 --gpus 0,1,2,3``: folds side by side, one process each.

Every fold is its own process (``python exp/EXP.py --fold K``), run on a device group of its own:
``--gpus 0,1,2,3`` gives four groups of one GPU (``CUDA_VISIBLE_DEVICES``), ``--gpus 0+1,2+3``
two groups of two GPUs (each fold then trains data-parallel under ``torchrun``), ``--gpus cpu,cpu``
two CPU processes (threads shared out between them). Folds wait for a free group. Each fold's
output goes to ``<output>/<exp>/launch/fold<k>.log``; finished folds are skipped as always. One
summary at the end; the exit status is non-zero when any fold failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shopee.errors import ShopeeError


def parse_folds(spec: str, n_folds: int) -> list[int]:
    """``0-4``, ``0,2,3`` or ``all``."""
    if spec == "all":
        return list(range(n_folds))
    folds: list[int] = []
    try:
        for part in spec.split(","):
            low, _, high = part.partition("-")
            folds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise ShopeeError(f"--folds {spec!r}: expected fold numbers such as 0-4 or 0,2,3 or all") from None
    for fold in folds:
        if not 0 <= fold < n_folds:
            raise ShopeeError(f"--folds {spec}: fold {fold} is out of range 0..{n_folds - 1}")
    return sorted(set(folds))


def parse_groups(spec: str) -> list[list[str]]:
    """``0,1`` (one GPU each), ``0+1,2+3`` (two GPUs each) or ``cpu,cpu``."""
    groups = [part.split("+") for part in spec.split(",") if part]
    for group in groups:
        if group != ["cpu"] and not all(g.isdigit() for g in group):
            raise ShopeeError(f"--gpus {spec!r}: expected GPU numbers (0,1 or 0+1,2+3) or cpu")
    if not groups:
        raise ShopeeError("--gpus: no device group given")
    return groups


@dataclass
class Job:
    fold: int
    group: list[str]
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    result: dict | None = None  # the fold's summary line, when it finished

    @property
    def where(self) -> str:
        return "cpu" if self.group == ["cpu"] else "GPU " + "+".join(self.group)


def _command(exp_path: Path, fold: int, group: list[str], args: list[str]) -> list[str]:
    script = [str(exp_path), "--fold", str(fold), *args]
    if len(group) > 1:  # data parallel within the group
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={len(group)}",
            *script,
        ]
    return [sys.executable, *script]


def _environment(group: list[str], n_groups: int, parent: dict[str, str] | None = None) -> dict[str, str]:
    """A fold's environment: its GPUs (numbered among those the parent may use: a scheduler or a
    shared node may already have set ``CUDA_VISIBLE_DEVICES``) and its share of the CPU cores, for
    torch's threads (``OMP_NUM_THREADS``) and the loader's workers (``SHOPEE_CPUS``); folds side by
    side would otherwise each start a thread per core."""
    parent = dict(os.environ if parent is None else parent)
    env = {**parent, "PYTHONUNBUFFERED": "1"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // n_groups)
    env["SHOPEE_CPUS"] = str(share)
    processes = 1 if group == ["cpu"] else len(group)
    env["OMP_NUM_THREADS"] = str(max(1, share // processes))
    if group == ["cpu"]:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(_physical_gpus(group, parent.get("CUDA_VISIBLE_DEVICES")))
    return env


def _physical_gpus(group: list[str], visible: str | None) -> list[str]:
    """``--gpus`` numbers as the parent's ``CUDA_VISIBLE_DEVICES`` names them (GPU 1 of "4,5" is 5)."""
    if visible is None:
        return group
    names = [name.strip() for name in visible.split(",") if name.strip()]
    for g in group:
        if int(g) >= len(names):
            raise ShopeeError(
                f"--gpus {'+'.join(group)}: GPU {g} is not among the {len(names)} visible ones "
                f"(CUDA_VISIBLE_DEVICES={visible})"
            )
    return [names[int(g)] for g in group]


def _result(log: Path) -> dict | None:
    """The fold's summary: the last JSON line its run printed."""
    try:
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, ValueError):
        return None
    return None


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or [line for line in lines if line.strip()] or [""])[-1][:200]


def train_folds(
    exp_path: Path,
    exp: str,
    folds: list[int],
    groups: list[list[str]],
    output: Path,
    args: list[str],
    poll: float = 0.2,
) -> tuple[int, list[Job]]:
    """Run the folds over the device groups; (exit status, the jobs as they ended)."""
    logs = output / exp / "launch"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(folds)
    free = list(range(len(groups)))
    running: dict[int, Job] = {}  # group index -> its job
    done: list[Job] = []
    while pending or running:
        while pending and free:
            g = free.pop(0)
            fold = pending.pop(0)
            job = Job(fold, groups[g], logs / f"fold{fold}.log")
            with open(job.log, "w") as sink:
                job.process = subprocess.Popen(
                    _command(exp_path, job.fold, job.group, args),
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=_environment(job.group, len(groups)),
                )
            job.started = time.perf_counter()
            running[g] = job
            print(f"fold {job.fold}: started on {job.where} (log {job.log})", flush=True)
        time.sleep(poll)
        for g, job in list(running.items()):
            if job.process is not None and job.process.poll() is not None:
                job.returncode, job.seconds = job.process.returncode, time.perf_counter() - job.started
                job.result = _result(job.log) if job.returncode == 0 else None
                status = (
                    f"CV F1 {job.result['cv_f1']:.4f}"
                    if job.result
                    else f"FAILED (exit {job.returncode}): {_last_error(job.log)}"
                )
                print(f"fold {job.fold}: {status} ({job.seconds:.0f} s on {job.where})", flush=True)
                done.append(job)
                del running[g]
                free.append(g)
    failed = [job for job in done if job.returncode != 0]
    return (1 if failed else 0), sorted(done, key=lambda job: job.fold)


def print_summary(exp: str, jobs: list[Job]) -> None:
    print(f"{exp}: {len(jobs)} folds, {sum(job.returncode == 0 for job in jobs)} finished")
    print(f"  {'fold':<6}{'device':<10}{'status':<10}{'CV F1':>8}{'kind':>7}{'threshold':>11}{'seconds':>9}")
    rows = []
    for job in jobs:
        result = job.result
        ok = result is not None
        cv = f"{result['cv_f1']:.4f}" if ok else "-"
        kind = result["kind"] if ok else "-"
        threshold = f"{result['threshold']:.2f}" if ok else "-"
        status = "done" if ok else f"exit {job.returncode}"
        print(f"  {job.fold:<6}{job.where:<10}{status:<10}{cv:>8}{kind:>7}{threshold:>11}{job.seconds:>9.0f}")
        rows.append({"fold": job.fold, "device": job.where, "returncode": job.returncode, **(result or {})})
    print(
        json.dumps({"exp": exp, "folds": rows, "failed": [r["fold"] for r in rows if r["returncode"] != 0]})
    )
