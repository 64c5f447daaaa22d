"""CUDA's rules, tested on the CPU: each test stands for a GPU behaviour the CPU never shows.

Nothing here needs a GPU. Each test names, in its docstring, the rule of CUDA (or of NCCL, cuDNN,
torch.amp, transformers on a GPU) it stands for, and fails on code that breaks that rule:

- NCCL serves CUDA tensors only                       test_collectives_get_a_backend_for_their_tensors
- timm's BatchNormAct2d under SyncBatchNorm           test_sync_batchnorm_keeps_timm_activations
- DDP all-reduces on every backward unless no_sync()  test_ddp_all_reduces_once_per_update
- fp16 / bf16 autocast with an enabled GradScaler     test_mixed_precision_steps_through_the_real_stepper
- a disabled GradScaler's state in an enabled one     test_resume_from_a_checkpoint_of_another_precision
- transformers 5 loads in the config's dtype          test_a_float16_text_config_trains_in_float32
- BatchNorm cannot train on one row a process         test_one_row_a_process_is_refused_before_training
- cuDNN picks algorithms per input size               test_cudnn_benchmarks_fixed_size_inputs_on_cuda
- a host read synchronises with the GPU               test_a_training_step_reads_nothing_back
- CUDA autocast runs pow in fp32, CPU's does not      test_gem_pools_float16_features_without_overflow
- GPU groups share the CPU, CUDA_VISIBLE_DEVICES nests test_gpu_folds_get_a_share_of_cores_and_their_gpus
- loader workers (more on a GPU machine)              test_loader_workers_change_speed_not_augmentation
- a lone fold on two T4s                              test_a_lone_fold_goes_data_parallel_only_when_it_pays

The tests marked ``cuda`` at the end run the same steps on a real GPU (``make gpu-check``).
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import Backend, BackendConfig

from conftest import tiny_text_config
from shopee.config import Config, ConfigError
from shopee.distributed import Dist
from shopee.models import ShopeeModel
from shopee.optim import build_optimizer
from shopee.runtime import Runtime


def _batch(model: ShopeeModel, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.text.model.config.vocab_size
    return {
        "input_ids": torch.randint(5, vocab, (n, 16), generator=gen),
        "attention_mask": torch.ones(n, 16, dtype=torch.long),
        "label": torch.arange(n) % 4,
    }


# ------------------------------------------------------------------------------------------------
# NCCL
# ------------------------------------------------------------------------------------------------
def test_collectives_get_a_backend_for_their_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL serves CUDA tensors only: a CPU tensor in ``all_reduce`` raises "No backend type
    associated with device type cpu". The group a GPU rank joins must serve every device its
    collectives use (the per-step losses, Python objects, barriers): checked with torch's own
    parser of the backend string, and fake collectives that refuse what NCCL refuses."""
    joined: dict[str, str] = {}

    def init(backend: str, **kwargs) -> None:
        joined.update(BackendConfig(Backend(backend)).get_device_backend_map())

    def served(tensor: torch.Tensor) -> None:
        if tensor.device.type not in joined:
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: served(tensor))

    group = Dist.from_env()
    assert (group.rank, group.world, group.local_rank) == (1, 2, 1)
    assert joined["cuda"] == "nccl"  # CUDA tensors (DDP's gradients) still go over NCCL
    loss = torch.tensor(0.5)  # a value on the CPU: objects and barriers pickle to CPU tensors too
    assert float(group.mean(loss)) == 0.25  # summed by this rank alone here, then / 2


# ------------------------------------------------------------------------------------------------
# SyncBatchNorm
# ------------------------------------------------------------------------------------------------
def test_sync_batchnorm_keeps_timm_activations() -> None:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns timm's ``BatchNormAct2d`` into a
    plain SyncBatchNorm and drops its activation; the project's conversion (timm's) keeps them: in
    eval mode (running statistics) the converted network computes what the original does."""
    import timm

    from shopee.distributed import convert_sync_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        original = model(images)
        torchs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()(images)
        ours = convert_sync_batchnorm(copy.deepcopy(model)).eval()
        converted = ours(images)
    assert not torch.allclose(torchs, original, atol=1e-3)  # the rule: activations lost
    torch.testing.assert_close(converted, original)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in ours.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in ours.modules())


# ------------------------------------------------------------------------------------------------
# DDP and gradient accumulation
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def one_process_group(tmp_path: Path):
    """A real gloo group of one process (DDP runs its reducer and comm hooks as with many)."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduces_once_per_update(one_process_group, text_dir: Path) -> None:
    """DDP all-reduces the gradients on every backward unless inside ``no_sync()``: with
    ``accum_steps=2`` the Stepper must cross the wire once per update, not once per batch (each
    all-reduce of exp051's gradients moves 0.74 GiB over the two T4s' PCIe)."""
    from shopee.train import Stepper

    cfg = tiny_text_config(text_dir, accum_steps=2)
    torch.manual_seed(0)
    model = ShopeeModel(cfg, 4)
    runtime = Runtime(torch.device("cpu"))
    # world=2 makes the Stepper wrap in DDP; the group it runs in has one process
    stepper = Stepper(model, build_optimizer(model, cfg), runtime.grad_scaler(), cfg, runtime, Dist(0, 2))
    stepper.wrap()
    buckets: list[int] = []

    def counting(state, bucket):
        buckets.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    stepper.ddp.register_comm_hook(None, counting)
    all_reduces = []
    for step in range(4):
        before = len(buckets)
        stepper(_batch(model, seed=step), update=step % 2 == 1)
        all_reduces.append(len(buckets) > before)
    assert all_reduces == [False, True, False, True]


# ------------------------------------------------------------------------------------------------
# Mixed precision and the GradScaler
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_steps_through_the_real_stepper(text_dir: Path, precision: str) -> None:
    """A T4 trains in fp16 autocast with an enabled GradScaler (scale, unscale for the clip, step,
    update), an A100/H100 in bf16 without one: the real Stepper, forced into each policy on the
    CPU, updates finite weights in float32 and returns the loss on the device."""
    from shopee.train import Stepper

    cfg = tiny_text_config(text_dir, grad_clip=1.0)
    torch.manual_seed(0)
    model = ShopeeModel(cfg, 4)
    runtime = Runtime(torch.device("cpu"), precision)
    scaler = runtime.grad_scaler()
    assert scaler.is_enabled() == (precision == "fp16")
    stepper = Stepper(model, build_optimizer(model, cfg), scaler, cfg, runtime)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [stepper(_batch(model, seed=step), update=True) for step in range(3)]
    assert all(loss.device == runtime.device and loss.dim() == 0 for loss in losses)
    assert all(torch.isfinite(loss) for loss in losses)
    after = list(model.parameters())
    assert all(p.dtype == torch.float32 for p in after)  # master weights stay float32
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() <= 2.0**16


def _interrupt_second_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    import shopee.train

    real = shopee.train._one_epoch
    calls = []

    def one_epoch(run, e, *args):
        calls.append(e)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(run, e, *args)

    monkeypatch.setattr(shopee.train, "_one_epoch", one_epoch)


def test_resume_from_a_checkpoint_of_another_precision(
    demo_copy: Path, text_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GradScaler's state saved while disabled (CPU, bf16 on an A100, ``amp=off``) is empty, and
    an enabled scaler (fp16 on a T4) refuses to load it ("The source state dict is empty"): a fold
    begun in one precision must resume in another, its scaler starting afresh."""
    import shopee.train
    from shopee.train import train_fold

    cfg = tiny_text_config(text_dir, epochs=2)
    output = tmp_path / "output"
    _interrupt_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, "prec", 0, demo_copy, output)  # epoch 1 in float32, then killed
    checkpoint = torch.load(output / "prec" / "fold0.partial" / "last.pt", weights_only=False)
    assert checkpoint["scaler"] == {}  # fp32 on the CPU: no scaler
    monkeypatch.undo()

    fp16 = Runtime(torch.device("cpu"), "fp16")
    monkeypatch.setattr(shopee.train.Runtime, "for_config", classmethod(lambda cls, cfg, device=None: fp16))
    summary = train_fold(cfg, "prec", 0, demo_copy, output, resume=True)
    log = (output / "prec" / "fold0" / "train.log").read_text()
    assert "resuming prec fold 0 after epoch 1/2" in log
    assert "made in fp32 without a GradScaler; fp16 starts one" in log
    metrics = json.loads((output / "prec" / "fold0" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and summary["cv_f1"] > 0
    assert checkpoint["precision"] == "fp32"


# ------------------------------------------------------------------------------------------------
# transformers 5
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pretrained", [True, False])
def test_a_float16_text_config_trains_in_float32(text_dir: Path, tmp_path: Path, pretrained: bool) -> None:
    """transformers 5 builds a model in the dtype its config declares (``dtype="auto"``), in
    ``from_pretrained`` and ``from_config``: a checkpoint saved in float16 would train float16
    master weights ("Attempting to unscale FP16 gradients" on a T4)."""
    import shutil

    import transformers

    from shopee.pretrained import create_text_encoder

    half = Path(shutil.copytree(text_dir, tmp_path / "half"))
    config = transformers.AutoConfig.from_pretrained(half)
    model = transformers.AutoModel.from_config(config).half()
    model.save_pretrained(half)  # weights and config in float16
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    built, _, _ = create_text_encoder(str(half), pretrained=pretrained)
    assert {p.dtype for p in built.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------------
# BatchNorm, cuDNN, host synchronisation, GeM
# ------------------------------------------------------------------------------------------------
def test_one_row_a_process_is_refused_before_training(text_dir: Path) -> None:
    """BatchNorm cannot train on one row ("Expected more than 1 value per channel"): a global batch
    that leaves one row a process fails at step 1 on every GPU; it is refused with one line first."""
    from shopee.train import check_rows_per_process

    cfg = tiny_text_config(text_dir, batch_size=4)
    check_rows_per_process(cfg, Dist(0, 2))  # 2 rows a process
    with pytest.raises(ConfigError, match=r"batch_size=4 over 4 processes leaves one row a process"):
        check_rows_per_process(cfg, Dist(0, 4))
    with pytest.raises(ConfigError, match="batch_size=1"):
        Config(batch_size=1).validate()


def test_cudnn_benchmarks_fixed_size_inputs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN times its convolution algorithms per input size when ``benchmark`` is on: with one
    image size for every batch, a CUDA runtime turns it on; the CPU's leaves it as it is."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    Runtime(torch.device("cpu")).set_backend_flags()
    assert torch.backends.cudnn.benchmark is False
    Runtime(torch.device("cuda", 0), "fp16").set_backend_flags()  # touches no GPU
    assert torch.backends.cudnn.benchmark is True


def test_a_training_step_reads_nothing_back(text_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a CUDA tensor on the host (``.item()``, ``bool(t)``, ``.tolist()``) waits for the GPU
    to finish: a step that does it stalls the queue twice a step. Steps return the loss on the
    device; the epoch reads the losses every ``HOST_SYNC_EVERY`` steps."""
    from shopee.train import HOST_SYNC_EVERY, Stepper, check_losses

    cfg = tiny_text_config(text_dir, grad_clip=1.0)
    torch.manual_seed(0)
    model = ShopeeModel(cfg, 4)
    runtime = Runtime(torch.device("cpu"))
    stepper = Stepper(model, build_optimizer(model, cfg), runtime.grad_scaler(), cfg, runtime)
    batches = [_batch(model, seed=step) for step in range(3)]
    reads: list[str] = []  # host reads made by the project's code (torch's optimizer reads its
    # CPU step counter, transformers its mask: neither is the project's to change)
    for name in ("item", "tolist", "__bool__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            caller = traceback.extract_stack(limit=2)[0].filename
            if f"{os.sep}shopee{os.sep}" in caller:
                reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    losses = [stepper(batch, update=True) for batch in batches]
    assert reads == []
    values = check_losses(losses, 1, 0)
    assert len(values) == 3 and len(reads) == 1  # one read for all of them
    assert HOST_SYNC_EVERY >= 10
    monkeypatch.undo()
    with pytest.raises(Exception, match=r"loss is nan at epoch 3 step 5"):
        check_losses([torch.tensor(1.0), torch.tensor(float("nan"))], 4, 2)


def test_gem_pools_float16_features_without_overflow() -> None:
    """CUDA's autocast runs ``pow`` in float32, the CPU's does not: GeM's ``x ** 3`` in float16
    passes 65,504 once a feature passes ~40. It pools in float32 whatever it is given; checked
    against numpy in float64."""
    from shopee.models.pooling import GeM

    gem = GeM(3.0)
    features = torch.full((2, 4, 3, 3), 50.0, dtype=torch.float16)
    features[1] = 0.5
    oracle = np.mean(features.double().numpy() ** 3, axis=(2, 3)) ** (1 / 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        pooled = gem(features)
    assert torch.isfinite(pooled).all()
    np.testing.assert_allclose(pooled.double().numpy(), oracle, rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# The machine around the GPUs
# ------------------------------------------------------------------------------------------------
def test_gpu_folds_get_a_share_of_cores_and_their_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds side by side on GPUs each start a thread per core unless told (Kaggle's 4 cores for
    two folds); ``--gpus 1`` is the second GPU the parent may use, which a scheduler may already
    have narrowed with ``CUDA_VISIBLE_DEVICES``."""
    from shopee.errors import ShopeeError
    from shopee.launch import _environment

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    env = _environment(["1"], 2, parent={"CUDA_VISIBLE_DEVICES": "4,5", "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["OMP_NUM_THREADS"] == "2" and env["SHOPEE_CPUS"] == "2" and env["PATH"] == "/bin"
    both = _environment(["0", "1"], 1, parent={})
    assert both["CUDA_VISIBLE_DEVICES"] == "0,1" and both["OMP_NUM_THREADS"] == "2"  # 4 cores, 2 ranks
    with pytest.raises(ShopeeError, match="GPU 2 is not among the 2 visible"):
        _environment(["2"], 1, parent={"CUDA_VISIBLE_DEVICES": "4,5"})


def test_loader_workers_change_speed_not_augmentation(
    small_demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU machine decodes with as many loader workers as it has cores for the fold (two were
    fixed before, whatever the machine): augmentation draws per row, so the batches are the same
    whatever the number of workers, and ``num_workers`` is no part of a run's identity."""
    from shopee.augment import build_augment
    from shopee.data import read_split
    from shopee.dataset import PostingDataset, loader_workers, make_loader

    df = read_split(small_demo_dir, "train").iloc[:12]
    dataset = PostingDataset(df, image_size=32, transform=build_augment(Config().augment))

    def images(workers: int) -> torch.Tensor:
        loader = make_loader(dataset, 4, np.arange(12)[::-1], num_workers=workers, seed=7)
        return torch.cat([batch["image"] for batch in loader])

    torch.testing.assert_close(images(2), images(0), rtol=0, atol=0)
    assert not torch.equal(images(0), torch.cat([b["image"] for b in make_loader(dataset, 4, seed=8)]))

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("SHOPEE_CPUS", raising=False)
    assert loader_workers(Config()) == 8  # all cores, at most 8
    assert loader_workers(Config(), processes=4) == 4
    monkeypatch.setenv("SHOPEE_CPUS", "2")  # the launcher's share for this fold
    assert loader_workers(Config()) == 2
    assert loader_workers(Config(image_model="", text_model="x", fusion="none")) == 0  # titles only
    assert loader_workers(Config(num_workers=3)) == 3
    assert Config(num_workers=2).identity() == Config(num_workers=-1).identity()


def test_a_lone_fold_goes_data_parallel_only_when_it_pays() -> None:
    """Two T4s over PCIe without NVLink: data parallelism halves the compute but all-reduces the
    float32 gradients once per update (2 (N-1)/N of them through each link) and normalises
    BatchNorm over half the batch. Hand-worked: 199 M parameters = 0.796 GB of gradients; a ring
    of two moves all of it, 0.159 s at 5 GB/s."""
    from shopee.plan import MACHINES, all_reduce_seconds, lone_fold

    assert all_reduce_seconds(199_000_000, MACHINES[1]) == pytest.approx(0.1592, abs=1e-4)
    assert all_reduce_seconds(199_000_000, MACHINES[0]) == 0.0
    measured = {"flops_train": 60e9, "flops_forward": 20e9, "trained": 199_000_000}
    small = Config(image_model="", text_model="x", fusion="none", batch_size=8, dense_oof=False)
    assert lone_fold(small, measured, 34_250)["gpus"] == 1  # 4 rows a process for BatchNorm
    big = Config(image_model="", text_model="x", fusion="none", batch_size=64, dense_oof=False)
    choice = lone_fold(big, measured, 34_250)
    # 27,400 rows x 60 GFLOP at 8 TFLOPS: 205.5 s an epoch on one GPU; on two, half of it plus
    # 428 updates x 0.159 s = 68 s of all-reduce
    assert choice["one_gpu_fold_s"] / 6 == pytest.approx(27_400 * 60e9 / 8e12 + 6_850 * 20e9 / 8e12, rel=1e-6)
    assert choice["gpus"] == 2 and choice["ddp_fold_s"] < 0.85 * choice["one_gpu_fold_s"]
    slow_link = lone_fold(big, {**measured, "trained": 2_000_000_000}, 34_250)
    assert slow_link["gpus"] == 1  # 1.6 s of all-reduce an update: no gain


# ------------------------------------------------------------------------------------------------
# On a real GPU (make gpu-check): the same steps, on CUDA
# ------------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_mixed_precision_steps(text_dir: Path) -> None:
    """The real Stepper on the GPU in every precision the card computes natively."""
    from shopee.bench.gpu import precisions
    from shopee.train import Stepper

    device = torch.device("cuda", 0)
    for precision in precisions(device):
        cfg = tiny_text_config(text_dir, grad_clip=1.0)
        torch.manual_seed(0)
        runtime = Runtime(device, precision)
        model = runtime.prepare(ShopeeModel(cfg, 4))
        stepper = Stepper(model, build_optimizer(model, cfg), runtime.grad_scaler(), cfg, runtime)
        losses = [stepper(_batch(model, seed=step), update=True) for step in range(3)]
        assert all(loss.is_cuda for loss in losses)
        assert all(np.isfinite(v) for v in torch.stack(losses).tolist()), precision


@pytest.mark.cuda
def test_cuda_sync_batchnorm_eval_matches() -> None:
    import timm

    from shopee.distributed import convert_sync_batchnorm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).cuda().eval()
    images = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(convert_sync_batchnorm(copy.deepcopy(model)).eval()(images), model(images))


@pytest.mark.cuda
def test_cuda_gem_under_autocast() -> None:
    from shopee.models.pooling import GeM

    features = torch.full((2, 4, 3, 3), 50.0, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        assert torch.isfinite(GeM(3.0).cuda()(features)).all()


def test_the_suite_runs_on_the_cpu_unless_asked() -> None:
    """The exactness tests are calibrated on the CPU; on a GPU machine they would run in fp16."""
    if os.environ.get("SHOPEE_TEST_GPU") != "1":
        assert not torch.cuda.is_available()
        assert SimpleNamespace(**os.environ).CUDA_VISIBLE_DEVICES == ""
