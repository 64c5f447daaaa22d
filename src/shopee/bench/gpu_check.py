"""``bench gpu-check`` (``make gpu-check``): the one prepared command for the first minutes on a GPU.

Nothing in this project had run on CUDA when it was written. A lent GPU machine comes for a few
minutes, so one command has to tell everything, and one step that breaks must not hide the others:
each step below is timed and caught on its own (a failed step keeps its error's last line and the
traceback's tail), the report is rewritten after every step, and the exit status is non-zero when
any step failed.

1. the tests that need CUDA (``pytest -m cuda`` with ``SHOPEE_TEST_GPU=1``);
2. a ``--debug`` fold of exp003 on a small generated demo, on cuda:0: its CV F1, time, precision;
3. a competition recipe's real architecture (exp051, random weights, offline) through the real
   training step (``shopee.train.Stepper``) in fp16 with the GradScaler, and bf16 from sm_80;
4. the data-parallel path: ``torchrun`` on up to two GPUs of a probe (``--dist-probe`` below) that
   calls ``Dist``'s collectives and takes one DDP step whose gradients it checks;
5. ``predict``'s embeddings over every visible GPU against one device (the fold of step 2);
6. kNN backends against torch at test scale (``bench gpu``'s ``knn_agreement``);
7. ``bench gpu`` itself (exp001 at 256 px).

Writes ``OUT/gpu-check.json`` and prints a table. Without a GPU it prints one line and does
nothing. ``--device cpu`` (hidden, for tests) runs the same steps on the CPU, step 1 skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopee.atomic import write_json
from shopee.constants import TEST_ROWS
from shopee.errors import ShopeeError

REPORT_FILE = "gpu-check.json"
FOLD_EXP = "exp003"  # step 2's experiment: text only, the demo's quickest to train
DEMO_TRAIN_ROWS, DEMO_TEST_ROWS = 400, 200  # step 2's demo: seconds to generate, a fold of ~80 rows
# step 3, per precision: timed training steps after warm-up ones (fp16's GradScaler skips the first
# updates while it halves its scale from 2^16: the weights must still have moved by the end)
RECIPE_STEPS, RECIPE_WARMUP = 4, 4
BENCH_IMAGE_SIZE = 256  # step 7: bench gpu's default size
BENCH_KNN_ROWS = 10_000  # step 7's own kNN: small, step 6 does the test-scale search
KNN_DIM = 512
KNN_MIN_AGREEMENT = 0.99  # share of rows whose neighbour list equals torch's (ties may differ)
EMBED_TOLERANCE = 2e-3  # step 5: max |difference| of normalized fp16/bf16 embeddings between devices
MAX_DIST_PROCS = 2  # step 4: a Kaggle T4 x2 has two; more adds nothing to the check
TAIL_CHARS = 2000  # of a failed step's traceback or a subprocess's output, kept in the report

# Seconds each step should take at most on a T4-class card (far less on an H100/H200): together
# 8 minutes. A step run as a subprocess (1, 2, 4) is stopped at its budget (a hung NCCL
# collective would otherwise wait 30 minutes); an in-process step over it is flagged in the report.
BUDGET_S = {
    "cuda tests": 120,
    "debug fold": 75,
    "recipe training step": 90,
    "data parallel": 45,
    "predict over GPUs": 30,
    "kNN backends": 45,
    "bench gpu": 75,
}


class StepFailed(Exception):
    """A step that ran but whose result is wrong: its figures are kept, ``detail`` is the output
    (a subprocess's) that says why."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.figures = figures or {}
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """What to check and how big. The defaults are the GPU check; tests shrink them."""

    out: Path
    device: torch.device
    steps: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    recipe: str = "exp051"
    bench_exp: str = "exp001"
    overrides: tuple[str, ...] = ()  # --set, for the recipe's and bench gpu's configs
    knn_rows: int = TEST_ROWS
    bench_image_size: int = BENCH_IMAGE_SIZE
    bench_knn_rows: int = BENCH_KNN_ROWS

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclasses.dataclass(frozen=True)
class Step:
    """One check: its number and name (the report's keys), the function that runs it, and whether
    it means anything without CUDA."""

    number: int
    name: str
    run: Callable[[CheckOptions, float], dict[str, Any]]  # (options, budget seconds) -> figures
    needs_cuda: bool = False  # skipped on the CPU

    @property
    def budget_s(self) -> int:
        return BUDGET_S[self.name]


# --- helpers ----------------------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout the package runs from (``src/shopee/bench/`` is three folders down)."""
    return Path(__file__).resolve().parents[3]


def exp_file(spec: str) -> Path:
    """An experiment file from ``exp051``, ``exp/exp051.py`` or a path, from the working directory
    or the checkout's ``exp/``."""
    path = Path(spec) if Path(spec).suffix else Path("exp") / f"{spec}.py"
    for candidate in (path, repo_root() / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ShopeeError(f"{path}: no such experiment file")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the check and its subprocesses: architectures are built from
    shipped configs, weights come from local packages, and a machine without internet must not
    wait on the hub's retries."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _child_env(opts: CheckOptions, **extra: str) -> dict[str, str]:
    """A subprocess's environment: unbuffered, no progress bars, and no GPU when checking the CPU."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **extra}
    if not opts.on_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_child(
    cmd: Sequence[str], what: str, timeout_s: float, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the checkout, output captured; running past ``timeout_s`` becomes
    ``StepFailed`` with the output's tail (the caller judges the exit status)."""
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, env=env, timeout=max(timeout_s, 1), cwd=repo_root()
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise StepFailed(
            f"{what}: stopped at its budget of {timeout_s:.0f} s", detail=output[-TAIL_CHARS:]
        ) from None


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Give cached GPU memory back between models (a T4 has 16 GB for the lot)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- step 1: the tests that need CUDA ---------------------------------------------------------

PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_counts(summary: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 1, ...}`` from pytest's last line (``3 passed, 1 skipped in 2.1s``)."""
    counts: dict[str, int] = {}
    for number, what in PYTEST_COUNT.findall(summary):
        key = "errors" if what.startswith("error") else what
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def failing_tests(output: str) -> list[str]:
    """The test ids of pytest's ``-ra`` summary lines ``FAILED tests/x.py::test_y - why``."""
    return [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def step_cuda_tests(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """The tests marked ``cuda`` (conftest keeps every test on the CPU unless SHOPEE_TEST_GPU=1)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "tests"]
    proc = run_child(cmd, "pytest -m cuda", budget_s, _child_env(opts, SHOPEE_TEST_GPU="1"))
    summary = last_line(proc.stdout)
    counts = pytest_counts(summary)
    figures: dict[str, Any] = {
        **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "errors")},
        "summary": summary,
        "failing": failing_tests(proc.stdout)[:10],
    }
    if proc.returncode == 5:  # pytest: nothing collected, i.e. no test is marked cuda
        return {**figures, "headline": "no test is marked cuda"}
    if proc.returncode != 0:
        raise StepFailed(
            f"pytest -m cuda: {summary or f'exit status {proc.returncode}'}",
            figures,
            (proc.stdout + proc.stderr)[-TAIL_CHARS:],
        )
    return {**figures, "headline": summary}


# --- step 2: a debug fold of exp003 -----------------------------------------------------------

RUNTIME_PHRASE = re.compile(r"; ([^;]*(?:float32|autocast)[^;]*);")


def runtime_phrase(log_text: str) -> str:
    """``cuda:0 (Tesla T4, sm_75), fp16 autocast + GradScaler`` from a fold's train.log."""
    match = RUNTIME_PHRASE.search(log_text)
    return match.group(1) if match else ""


def demo_dir(opts: CheckOptions) -> Path:
    return opts.out / "demo"


def train_output(opts: CheckOptions) -> Path:
    return opts.out / "train"


def step_debug_fold(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """``python exp/exp003.py --fold 0 --debug`` on a fresh small demo, on cuda:0 (the default
    device of a process outside torchrun)."""
    from shopee.demo import generate_demo
    from shopee.outputs import fold_dir

    started = time.perf_counter()
    generate_demo(
        demo_dir(opts),
        n_train=DEMO_TRAIN_ROWS,
        n_test=DEMO_TEST_ROWS,
        image_size=64,
        seed=3,
        workers=1,
        overwrite=True,
    )
    demo_s = time.perf_counter() - started
    cmd = [sys.executable, str(exp_file(FOLD_EXP)), "--fold", "0", "--debug", "--overwrite"]
    cmd += ["--data", str(demo_dir(opts)), "--output", str(train_output(opts))]
    proc = run_child(cmd, f"{FOLD_EXP} --debug", budget_s - demo_s, _child_env(opts))
    if proc.returncode != 0:
        raise StepFailed(
            f"{FOLD_EXP} --debug: {last_line(proc.stderr) or f'exit status {proc.returncode}'}",
            detail=(proc.stdout + proc.stderr)[-TAIL_CHARS:],
        )
    result = json.loads(last_line(proc.stdout))
    log = fold_dir(train_output(opts), FOLD_EXP, 0) / "train.log"
    runtime = runtime_phrase(log.read_text(encoding="utf-8")) if log.is_file() else ""
    headline = f"CV F1 {result['cv_f1']:.4f} in {result['seconds']:.0f} s; {runtime or 'no runtime logged'}"
    return {
        "cv_f1": result["cv_f1"],
        "kind": result["kind"],
        "fold_seconds": result["seconds"],
        "demo_seconds": round(demo_s, 1),
        "runtime": runtime,
        "headline": headline,
    }


# --- step 3: a recipe's architecture through the real training step ---------------------------


def _norms(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.stack([p.detach().float().norm() for p in params]).cpu()


def recipe_steps(cfg: Any, device: torch.device, precision: str, steps: int, warmup: int) -> dict[str, Any]:
    """Samples/s, peak memory, the last loss and the share of trained tensors that moved, for
    ``steps`` calls of ``Stepper`` (after ``warmup``) on one synthetic batch of ``cfg.batch_size``."""
    from shopee.bench.gpu import TRAIN_FOLD_CLASSES, _batch, _peak_mb
    from shopee.config import stages_of
    from shopee.models import ShopeeModel
    from shopee.optim import build_optimizer, freeze_batchnorm_stats, set_trainable
    from shopee.runtime import Runtime
    from shopee.train import Stepper

    runtime = Runtime(device, precision, bool(cfg.channels_last and device.type == "cuda"))
    torch.manual_seed(0)
    model = runtime.prepare(ShopeeModel(cfg, TRAIN_FOLD_CLASSES)).train()
    optimizer = build_optimizer(model, cfg)  # before the stage's freezing, as training does
    set_trainable(model, stages_of(cfg)[0])
    freeze_batchnorm_stats(model)
    stepper = Stepper(model, optimizer, runtime.grad_scaler(), cfg, runtime)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = _norms(trained)
    batch = _batch(cfg, model, cfg.batch_size, device, labels=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[Any] = []
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        # the loss comes back as a tensor left on the device (or a float): read once, at the end
        losses.append(stepper(batch, update=True))
    _sync(device)
    seconds = time.perf_counter() - started
    loss = float(torch.as_tensor(losses[-1]))
    changed = float((_norms(trained) != before).float().mean())
    scaler = stepper.scaler
    return {
        "precision": runtime.precision,
        "runtime": runtime.describe(),
        "samples_per_s": round(cfg.batch_size * steps / seconds, 2),
        "peak_mb": _peak_mb(device),
        "loss": round(loss, 4),
        "finite": bool(np.isfinite(loss)),
        "weights_changed": round(changed, 3),
        "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
    }


def step_recipe(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """The recipe built offline with random weights, trained a few steps in each precision the
    card computes natively in besides fp32 (fp16 + GradScaler; bf16 from sm_80)."""
    from shopee.bench.gpu import precisions
    from shopee.runner import load_experiment

    name, cfg = load_experiment(
        str(exp_file(opts.recipe)), [*opts.overrides, "image_pretrained=false", "text_pretrained=false"]
    )
    wanted = [p for p in precisions(opts.device) if p != "fp32"] or ["fp32"]  # the CPU has fp32 only
    rows: list[dict[str, Any]] = []
    for precision in wanted:
        try:
            rows.append(recipe_steps(cfg, opts.device, precision, RECIPE_STEPS, RECIPE_WARMUP))
        except Exception as exc:  # noqa: BLE001 - one precision's failure must not hide the other's
            rows.append({"precision": precision, "error": _one_line(exc)})
        _free(opts.device)
    figures: dict[str, Any] = {"recipe": name, "batch_size": cfg.batch_size, "precisions": rows}
    figures["headline"] = ", ".join(_recipe_cell(r) for r in rows)
    bad = [r["precision"] for r in rows if "error" in r or not r["finite"] or r["weights_changed"] < 0.5]
    if bad:
        raise StepFailed(f"{name}: training step wrong in {', '.join(bad)}: {_recipe_problem(rows)}", figures)
    return figures


def _recipe_cell(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['precision']} FAILED"
    peak = f", {row['peak_mb'] / 1024:.1f} GB" if row["peak_mb"] is not None else ""
    return f"{row['precision']} {row['samples_per_s']:.1f}/s{peak}"


def _recipe_problem(rows: list[dict[str, Any]]) -> str:
    for row in rows:
        if "error" in row:
            return row["error"]
        if not row["finite"]:
            return f"loss {row['loss']} in {row['precision']}"
        if row["weights_changed"] < 0.5:
            return f"only {row['weights_changed']:.0%} of the trained tensors changed in {row['precision']}"
    return ""


def _one_line(exc: BaseException) -> str:
    """``RuntimeError: CUDA error: ...``: the traceback's last line, cut to the message's first
    (CUDA errors go on with hints about CUDA_LAUNCH_BLOCKING)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# --- step 4: the data-parallel path -----------------------------------------------------------


def dist_procs(opts: CheckOptions) -> int:
    """Processes for the probe: one per visible GPU, 1 to 2; on the CPU two (gloo)."""
    if not opts.on_cuda:
        return 2
    return max(1, min(MAX_DIST_PROCS, torch.cuda.device_count()))


def step_data_parallel(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """``torchrun --standalone`` of this module's ``--dist-probe`` on every GPU (at most two);
    every rank must report right values."""
    procs = dist_procs(opts)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd += ["-m", "shopee.bench.gpu_check", "--dist-probe"]
    proc = run_child(cmd, "torchrun --dist-probe", budget_s, _child_env(opts))
    reports = rank_reports(proc.stdout)
    figures = {
        "processes": procs,
        "backend": reports[0]["backend"] if reports else None,
        "ranks": reports,
        "headline": f"{len(reports)} of {procs} ranks right"
        + (f", {reports[0]['backend']}" if reports else ""),
    }
    right = [r for r in reports if r["ok"]]
    if proc.returncode != 0 or len(right) != procs:
        why = probe_problem(reports) or last_line(proc.stderr) or f"exit status {proc.returncode}"
        raise StepFailed(
            f"data parallel on {procs} processes: {len(right)} of {procs} ranks right; {why}",
            figures,
            (proc.stdout + proc.stderr)[-TAIL_CHARS:],
        )
    return figures


def probe_problem(reports: list[dict[str, Any]]) -> str:
    """``wrong: mean (RuntimeError: ...), ddp_step``: the checks some rank failed, the first error."""
    wrong = sorted({name for r in reports for name, ok in r["checks"].items() if not ok})
    errors = {name: line for r in reports for name, line in r.get("errors", {}).items()}
    named = [f"{name} ({errors[name]})" if name in errors else name for name in wrong]
    return f"wrong: {', '.join(named)}" if named else ""


PROBE_MARK = '{"rank"'  # how a probe's report starts (its first key)


def rank_reports(output: str) -> list[dict[str, Any]]:
    """The probe's JSON objects in ``output``, by rank (ranks share one stdout: read objects, not
    lines, in case two writes interleave)."""
    decoder, reports = json.JSONDecoder(), []
    start = output.find(PROBE_MARK)
    while start != -1:
        try:
            report, end = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            end = start + 1
        else:
            reports.append(report)
        start = output.find(PROBE_MARK, end)
    return sorted(reports, key=lambda r: r["rank"])


def _probe_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)


def _probe_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def ddp_step(rank: int, world: int, device: torch.device) -> tuple[bool, float, bool]:
    """One DDP step on this rank's rows: (gradients equal the whole global batch's, weight
    checksum after the update, weights moved). Every rank rebuilds every rank's rows to know
    the gradient the all-reduce must give (equal shares: the mean of the ranks' means)."""
    from torch.nn.functional import cross_entropy
    from torch.nn.parallel import DistributedDataParallel

    model = _probe_model(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x, y = _probe_batch(rank)
    cross_entropy(ddp(x.to(device)), y.to(device)).backward()
    reference = _probe_model(device)
    xs, ys = zip(*(_probe_batch(r) for r in range(world)), strict=True)
    cross_entropy(reference(torch.cat(xs).to(device)), torch.cat(ys).to(device)).backward()
    grads_right = all(
        torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-2)  # TF32 matmuls, if on, stay within
        for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return grads_right, checksum, moved


def _attempt(checks: dict[str, bool], errors: dict[str, str], name: str, check: Callable[[], Any]) -> None:
    """Record one probe check (a bool, or a dict of named bools); an exception fails it with its
    line, and the later checks still run (so one broken collective does not hide the others)."""
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - reported in the rank's JSON line
        checks[name], errors[name] = False, _one_line(exc)
    else:
        checks.update(result if isinstance(result, dict) else {name: bool(result)})


def _probe_mean(dist: Any, device: torch.device, world: int) -> bool:
    """``Dist.mean`` of a tensor on the rank's device (NCCL serves CUDA tensors only)."""
    mean = dist.mean(torch.tensor([dist.rank + 1.0], device=device))
    return abs(float(torch.as_tensor(mean).reshape(-1)[0]) - (world + 1) / 2) < 1e-9


def _probe_gather(dist: Any, world: int) -> bool:
    n = 2 * world + 1  # blocks of uneven rows: the last one padded
    block = dist.row_block(n)
    rows = dist.gather_rows(np.stack([block, 10 * block], axis=1).astype(np.float32), n)
    return rows.shape == (n, 2) and np.array_equal(rows[:, 0], np.arange(n))


def _probe_same(dist: Any, world: int) -> bool:
    """A number equal everywhere is seen so; the ranks' own numbers differ (unless there is one)."""
    return dist.same_everywhere(3.25) and dist.same_everywhere(float(dist.rank)) == (world == 1)


def _probe_ddp(dist: Any, world: int, device: torch.device) -> dict[str, bool]:
    grads_right, checksum, moved = ddp_step(dist.rank, world, device)
    return {"ddp_gradients": grads_right, "ddp_step": moved and dist.same_everywhere(checksum)}


def dist_probe() -> int:
    """One rank of step 4 (under torchrun): ``Dist``'s public API and a DDP step; prints one JSON
    line. A single process still joins a process group of its own, so that NCCL runs."""
    import torch.distributed as tdist

    from shopee.distributed import Dist

    started = time.perf_counter()
    dist = Dist.from_env()
    device = dist.device()
    own_group = not dist.enabled
    if own_group:  # Dist does nothing collective in one process; DDP needs a group all the same
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = tdist.get_world_size()
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    _attempt(checks, errors, "mean", lambda: _probe_mean(dist, device, world))
    _attempt(checks, errors, "gather_rows", lambda: _probe_gather(dist, world))
    _attempt(checks, errors, "same_everywhere", lambda: _probe_same(dist, world))
    _attempt(checks, errors, "barrier", lambda: dist.barrier() is None)
    _attempt(checks, errors, "ddp_step", lambda: _probe_ddp(dist, world, device))
    report = {
        "rank": dist.rank,
        "world": world,
        "device": str(device),
        "backend": str(tdist.get_backend()),
        "checks": checks,
        "errors": errors,
        "ok": all(checks.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (json.dumps(report) + "\n").encode())  # one write: lines stay whole
    if own_group:
        tdist.destroy_process_group()
    else:
        dist.close()
    return 0 if report["ok"] else 1


# --- step 5: predict over every GPU -----------------------------------------------------------


def step_predict_devices(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """Step 2's fold embeds the demo's test rows through ``predict.fold_embeddings`` twice, as
    two fold models of one pass: on cuda:0 alone, then shared round-robin over ``--devices``'
    default (every visible GPU). The embeddings must agree."""
    from shopee.data import read_split
    from shopee.outputs import FoldRecord, fold_dir, is_finished
    from shopee.predict import fold_embeddings
    from shopee.runtime import Runtime, parse_devices

    path = fold_dir(train_output(opts), FOLD_EXP, 0)
    if not is_finished(path):
        raise StepFailed(f"{path}: no finished debug fold to embed with (step 2 trains it)")
    record = FoldRecord.open(path)
    df = read_split(demo_dir(opts), "test", image_policy="blank")  # as predict reads a split
    # the smallest ensemble predict reads: one embedding member per kind the fold makes
    ensemble = {
        "params": {"members": [{"type": "embedding", "source": f"{record.exp}:{k}"} for k in record.kinds]}
    }
    one = parse_devices("cuda:0" if opts.on_cuda else "cpu")
    every = parse_devices(None if opts.on_cuda else "cpu,cpu")
    alone = fold_embeddings(ensemble, [record, record], df, one, "blank")
    shared = fold_embeddings(ensemble, [record, record], df, every, "blank")
    diff = max(
        float(np.abs(a - b).max()) for key in alone for a, b in zip(alone[key], shared[key], strict=True)
    )
    placed = [str(every[i % len(every)]) for i in range(2)]
    figures = {
        "rows": len(df),
        "precision": Runtime.for_config(record.config, one[0]).precision,
        "one_device": [str(d) for d in one],
        "every_device": [str(d) for d in every],
        "placed": placed,
        "max_abs_diff": diff,
        "note": "one GPU: both fold models on cuda:0" if len(set(placed)) == 1 and opts.on_cuda else "",
        "headline": f"max |diff| {diff:.1e} over {', '.join(placed)} vs {one[0]}",
    }
    if not diff <= EMBED_TOLERANCE:
        raise StepFailed(
            f"embeddings differ by {diff:.2e} between devices (tolerance {EMBED_TOLERANCE})", figures
        )
    return figures


# --- steps 6 and 7: bench gpu's parts ---------------------------------------------------------


def step_knn(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """torch, faiss and cuml (where importable) at test scale; each must find torch's neighbours."""
    from shopee.bench.gpu import knn_agreement

    result = knn_agreement(opts.knn_rows, KNN_DIM, opts.device)
    ran = {b: r for b, r in result.items() if b in ("torch", "faiss", "cuml") and r is not None}
    result["headline"] = ", ".join(
        f"{b} {r['seconds']:.1f} s" + ("" if b == "torch" else f" ({r['rows_equal_to_torch']:.2%})")
        for b, r in ran.items()
    )
    low = [b for b, r in ran.items() if r["rows_equal_to_torch"] < KNN_MIN_AGREEMENT]
    if low:
        raise StepFailed(f"kNN {', '.join(low)}: under {KNN_MIN_AGREEMENT:.0%} of rows as torch", result)
    return result


def step_bench_gpu(opts: CheckOptions, budget_s: float) -> dict[str, Any]:
    """``bench gpu`` of exp001: training steps in every precision, embedding throughput, a kNN."""
    from shopee.bench.gpu import bench_gpu
    from shopee.runner import load_experiment

    _, cfg = load_experiment(str(exp_file(opts.bench_exp)), list(opts.overrides))
    result = bench_gpu(cfg, opts.device, image_size=opts.bench_image_size, knn_rows=opts.bench_knn_rows)
    train = ", ".join(f"{r['precision']} {r['samples_per_s']:.0f}/s" for r in result["train"])
    result["headline"] = f"train {train}; embed {result['embed']['items_per_s']:.0f}/s"
    infinite = [r["precision"] for r in result["train"] if not r["finite"]]
    if infinite:
        raise StepFailed(f"bench gpu: loss not finite in {', '.join(infinite)}", result)
    return result


STEPS = (
    Step(1, "cuda tests", step_cuda_tests, needs_cuda=True),
    Step(2, "debug fold", step_debug_fold),
    Step(3, "recipe training step", step_recipe),
    Step(4, "data parallel", step_data_parallel),
    Step(5, "predict over GPUs", step_predict_devices),
    Step(6, "kNN backends", step_knn),
    Step(7, "bench gpu", step_bench_gpu),
)


# --- the runner -------------------------------------------------------------------------------


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _nvidia_driver() -> str | None:
    """The driver's version (torch knows only the CUDA it was built with)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return last_line(out) or None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the check: GPUs, driver and CUDA, the libraries' versions."""
    info: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "timm": _version("timm"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "faiss": _version("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss"),
        "cuml": _version("cuml", "cuml-cu12", "cuml-cu11"),
    }
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
        info["driver"] = _nvidia_driver()
        info["gpus"] = [
            {
                "index": i,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gb": round(props.total_memory / 2**30, 1),
            }
            for i, props in (
                (i, torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count())
            )
        ]
    return info


def skip_reason(step: Step, opts: CheckOptions) -> str:
    """Why ``step`` does not run here ("" when it does)."""
    if step.number not in opts.steps:
        return "not selected (--steps)"
    if step.needs_cuda and not opts.on_cuda:
        return "needs a CUDA device"
    return ""


def run_step(step: Step, opts: CheckOptions) -> dict[str, Any]:
    """One step timed and caught: what it measured, or the error's last line and its tail."""
    row: dict[str, Any] = {"step": step.number, "name": step.name, "budget_s": step.budget_s}
    skipped = skip_reason(step, opts)
    if skipped:
        return {**row, "ok": None, "seconds": 0.0, "skipped": skipped}
    started = time.perf_counter()
    try:
        figures = step.run(opts, float(step.budget_s))
        row.update(ok=True, figures=figures, error=None)
    except Exception as exc:  # noqa: BLE001 - a failed step is reported, the next one still runs
        detail = exc.detail if isinstance(exc, StepFailed) and exc.detail else traceback.format_exc()
        figures = exc.figures if isinstance(exc, StepFailed) else {}
        row.update(ok=False, figures=figures, error={"message": _one_line(exc), "tail": detail[-TAIL_CHARS:]})
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["over_budget"] = row["seconds"] > step.budget_s
    _free(opts.device)
    return row


def run_check(opts: CheckOptions, steps: Sequence[Step] | None = None) -> dict[str, Any]:
    """Every step in order, the report rewritten after each (a killed run leaves what it had)."""
    steps = STEPS if steps is None else steps
    opts.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "options": {
            "device": str(opts.device),
            "steps": list(opts.steps),
            "recipe": opts.recipe,
            "bench_exp": opts.bench_exp,
            "overrides": list(opts.overrides),
            "knn_rows": opts.knn_rows,
        },
        "machine": machine_info(opts.device),
        "steps": [],
    }
    path = opts.out / REPORT_FILE
    started = time.perf_counter()
    with hub_offline():
        for step in steps:
            if not skip_reason(step, opts):
                print(
                    f"gpu-check: step {step.number}/{len(steps)} {step.name} (budget {step.budget_s} s) ...",
                    flush=True,
                )
            row = run_step(step, opts)
            report["steps"].append(row)
            _say_done(row, len(steps))
            report["ok"] = not any(r["ok"] is False for r in report["steps"])
            report["seconds"] = round(time.perf_counter() - started, 1)
            write_json(path, report)
    return report


def _say_done(row: dict[str, Any], total: int) -> None:
    if row["ok"] is None:
        return
    what = (
        f"ok in {row['seconds']} s"
        if row["ok"]
        else f"FAILED in {row['seconds']} s: {row['error']['message']}"
    )
    print(f"gpu-check: step {row['step']}/{total} {what}", flush=True)


def _cell(row: dict[str, Any]) -> str:
    if row["ok"] is None:
        return f"skipped: {row['skipped']}"
    if row["ok"]:
        return str(row["figures"].get("headline", ""))
    return row["error"]["message"]


def print_report(report: dict[str, Any], path: Path) -> None:
    """The table: step, result, seconds against the budget, key figures."""
    machine = report["machine"]
    gpus = machine.get("gpus") or []
    where = (
        ", ".join(f"{g['name']} (sm_{g['capability'].replace('.', '')})" for g in gpus) or machine["device"]
    )
    print(f"gpu-check on {where}, torch {machine['torch']} (CUDA build {machine['cuda_build']}):")
    print(f"  {'step':<25} {'result':<8} {'seconds':>8} {'budget':>7}  figures")
    for row in report["steps"]:
        result = "-" if row["ok"] is None else "ok" if row["ok"] else "FAILED"
        late = "!" if row.get("over_budget") else " "
        print(
            f"  {row['step']} {row['name']:<23} {result:<8} {row['seconds']:>8.1f} "
            f"{row['budget_s']:>6}{late}  {_cell(row)}"
        )
    print(f"report: {path}", flush=True)


def parse_steps(text: str) -> tuple[int, ...]:
    """``--steps all`` or ``2,5`` or ``1-3``: step numbers of ``STEPS``."""
    if text == "all":
        return tuple(s.number for s in STEPS)
    numbers: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            numbers += range(int(low), int(high or low) + 1)
    except ValueError:
        raise ShopeeError(f"--steps {text!r}: expected 'all' or step numbers like 2,5 or 1-3") from None
    known = {s.number for s in STEPS}
    if not numbers or not set(numbers) <= known:
        raise ShopeeError(f"--steps {text!r}: steps are numbered {min(known)} to {max(known)}")
    return tuple(sorted(set(numbers)))


def no_gpu_line() -> str:
    return (
        f"gpu-check: no CUDA device here (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}); nothing to check"
    )


def gpu_check(opts: CheckOptions) -> dict[str, Any]:
    """Run the check, print its table; a failed step makes it a ``ShopeeError`` (exit status 2)."""
    report = run_check(opts)
    path = opts.out / REPORT_FILE
    print_report(report, path)
    failed = [r for r in report["steps"] if r["ok"] is False]
    if failed:
        names = ", ".join(f"{r['step']} {r['name']}" for r in failed)
        raise ShopeeError(
            f"gpu-check: {len(failed)} of {len(report['steps'])} steps failed ({names}); see {path}"
        )
    return report


if __name__ == "__main__":
    if sys.argv[1:] == ["--dist-probe"]:
        raise SystemExit(dist_probe())
    raise SystemExit(
        "usage: torchrun ... -m shopee.bench.gpu_check --dist-probe "
        "(the check itself: python -m shopee bench gpu-check)"
    )
