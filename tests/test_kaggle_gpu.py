"""``python -m shopee kaggle train|status|pull|submit`` through the Kaggle CLI's own client.

Nothing reaches Kaggle: ``requests.Session.send`` serves only the output files a test puts up and
fails on anything else, and the kagglesdk service methods (save a kernel, create a dataset, status,
list a version's output, quota, code submission) are replaced by fakes that record the requests
the real ``KaggleApi`` builds, which the tests then check. The pulled folds are real: exp003
debug-trained once on the small demo.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from shopee.cli import main
from shopee.constants import COMPETITION
from shopee.errors import ShopeeError
from shopee.kaggle_gpu import training as training_module
from shopee.kaggle_gpu.training import RUN_RECORD

ROOT = Path(__file__).resolve().parents[1]
USER = "tester"
FAKE_KEY = "0123456789abcdefSECRETKEY0123456"  # the API key in the environment: must never be written
STORAGE = "https://storage.test/"  # where the fake output listing points its files


def run(argv: list[str], capsys, code: int = 0) -> tuple[str, str]:
    result = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert result == code, f"exit {result}\n{out}\n{err}"
    return out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# the fake Kaggle behind the real client
# ------------------------------------------------------------------------------------------------
def http_error(code: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code, response._content = code, b'{"message": "Not found"}'
    return requests.HTTPError(f"{code} Client Error", response=response)


class FakeKaggle:
    """Records what the real ``KaggleApi`` sends; answers as Kaggle would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from kaggle.api.kaggle_api_extended import KaggleApi
        from kagglesdk.competitions.services.competition_api_service import CompetitionApiClient
        from kagglesdk.datasets.services.dataset_api_service import DatasetApiClient
        from kagglesdk.kernels.services.kernels_api_service import KernelsApiClient
        from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

        self.sent: dict[str, list] = {
            k: []
            for k in (
                "order",
                "kernels",
                "datasets",
                "versions",
                "uploads",
                "status",
                "output",
                "submissions",
            )
        }
        self.datasets: set[str] = set()
        self.processing = 0  # status answers "still processing" before a dataset is ready
        self.unknown_kernels: set[str] = set()  # kernels Kaggle does not know (404)
        self.dropped_sources: set[str] = set()  # kernel sources a push leaves out all the same
        self.status, self.failure, self.log = KernelWorkerStatus.COMPLETE, "", ""
        self.pages: list[list[tuple[str, bytes]]] = []
        self.quota_used, self.quota_total = 10.0, 30.0
        self.served: dict[str, bytes] = {}
        self.fetched: list[str] = []  # output files downloaded
        fake = self

        def send(session, request, **kwargs):
            if request.url not in fake.served:
                raise AssertionError(f"the Kaggle client tried the network: {request.url}")
            fake.fetched.append(request.url)
            data = fake.served[request.url]
            response = requests.Response()
            response.status_code, response.url, response.request = 200, request.url, request
            response.headers["Content-Length"] = str(len(data))
            response.raw = io.BytesIO(data)
            return response

        monkeypatch.setattr(requests.Session, "send", send)
        for cls, name in (
            (KernelsApiClient, "save_kernel"),
            (KernelsApiClient, "get_kernel_session_status"),
            (KernelsApiClient, "list_kernel_session_output"),
            (KernelsApiClient, "get_accelerator_quota_statistics"),
            (DatasetApiClient, "get_dataset_status"),
            (DatasetApiClient, "create_dataset"),
            (DatasetApiClient, "create_dataset_version"),
            (CompetitionApiClient, "create_code_submission"),
        ):
            monkeypatch.setattr(cls, name, lambda _client, request, _name=name: getattr(fake, _name)(request))
        monkeypatch.setattr(KaggleApi, "_upload_blob", lambda _api, path, *a, **k: fake.upload(path))

    # --- kernels ------------------------------------------------------------------------------
    def save_kernel(self, request):
        from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelResponse

        self.sent["order"].append("kernel")
        self.sent["kernels"].append(request)
        response = ApiSaveKernelResponse()
        response.version_number = len(self.sent["kernels"])
        response.invalid_kernel_sources = [
            k for k in request.kernel_data_sources if k in self.unknown_kernels | self.dropped_sources
        ]
        response.url = f"https://www.kaggle.com/code/{request.slug}"
        return response

    def _known(self, request) -> None:
        if f"{request.user_name}/{request.kernel_slug}" in self.unknown_kernels:
            raise http_error(404)

    def get_kernel_session_status(self, request):
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusResponse

        self.sent["status"].append(request)
        self._known(request)
        response = ApiGetKernelSessionStatusResponse()
        response.status, response.failure_message = self.status, self.failure
        return response

    def list_kernel_session_output(self, request):
        from kagglesdk.kernels.types.kernels_api_service import (
            ApiKernelSessionOutputFile,
            ApiListKernelSessionOutputResponse,
        )

        self.sent["output"].append(request)
        self._known(request)
        page = int(request.page_token or 0)
        response = ApiListKernelSessionOutputResponse()
        files = []
        for name, data in self.pages[page] if self.pages else []:
            item = ApiKernelSessionOutputFile()
            item.file_name, item.url = name, STORAGE + name
            self.served[item.url] = data
            files.append(item)
        response.files, response.log = files, self.log
        response.next_page_token = str(page + 1) if page + 1 < len(self.pages) else ""
        return response

    def get_accelerator_quota_statistics(self, request):
        from kagglesdk.kernels.types.kernels_api_service import (
            ApiAcceleratorQuota,
            ApiGetAcceleratorQuotaStatisticsResponse,
        )

        quota = ApiAcceleratorQuota()
        quota.time_used = timedelta(hours=self.quota_used)
        quota.total_time_allowed = timedelta(hours=self.quota_total)
        response = ApiGetAcceleratorQuotaStatisticsResponse()
        response.gpu_quota, response.quota_refresh_time = quota, datetime(2026, 6, 6, 0, 0)
        return response

    # --- datasets -----------------------------------------------------------------------------
    def upload(self, path: str) -> str:
        self.sent["uploads"].append(Path(path).name)
        return f"token-{Path(path).name}"

    def get_dataset_status(self, request):
        from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetStatusResponse
        from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus

        if f"{request.owner_slug}/{request.dataset_slug}" not in self.datasets:
            raise http_error(404)
        response = ApiGetDatasetStatusResponse()
        response.status = DatabundleVersionStatus.READY
        if self.processing:
            self.processing -= 1
            response.status = DatabundleVersionStatus.BLOBS_RECEIVED
        return response

    def create_dataset(self, request):
        from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse

        self.sent["order"].append("dataset")
        self.sent["datasets"].append(request)
        ref = f"{request.owner_slug}/{request.slug}"
        self.datasets.add(ref)
        response = ApiCreateDatasetResponse()
        response.ref, response.url, response.status = ref, f"https://www.kaggle.com/datasets/{ref}", "ok"
        return response

    def create_dataset_version(self, request):
        from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse

        self.sent["order"].append("dataset version")
        self.sent["versions"].append(request)
        response = ApiCreateDatasetResponse()
        response.url, response.status = "https://www.kaggle.com/datasets/x", "ok"
        return response

    # --- competitions -------------------------------------------------------------------------
    def create_code_submission(self, request):
        from kagglesdk.competitions.types.competition_api_service import ApiCreateCodeSubmissionResponse

        self.sent["submissions"].append(request)
        response = ApiCreateCodeSubmissionResponse()
        response.message = "Successfully submitted to Shopee - Price Match Guarantee"
        return response


@pytest.fixture
def kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKaggle:
    """Credentials in the environment only (as the CLI reads them), no kaggle.json, no network."""
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setattr(requests.Session, "send", lambda *a, **k: pytest.fail("network"))
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    monkeypatch.setattr(KaggleApi, "config", str(tmp_path / "kaggle-config" / "kaggle.json"))
    return FakeKaggle(monkeypatch)


def no_secret_under(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert FAKE_KEY.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------------
# kaggle train
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def quick_estimate(monkeypatch: pytest.MonkeyPatch, small_demo_dir: Path) -> None:
    """plan's estimate measures the model (seconds); the push does not depend on its value. The
    local data (whose fold split the kernel ships) is the small demo."""
    monkeypatch.setattr(training_module, "estimate_hours", lambda cfg, folds: 3.0)
    measured = {"parameters": 30_000_000, "head_parameters": 1_000_000, "embedding_dims": 384}
    estimate = {"measured": measured, "lone_fold": {"gpus": 1, "why": "a test's"}, "machines": []}
    monkeypatch.setattr(training_module, "kaggle_estimate", lambda cfg: estimate)
    monkeypatch.setenv("SHOPEE_DATA", str(small_demo_dir))


def test_train_pushes_a_gpu_kernel_with_internet_and_its_code_dataset(
    kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    kernels = tmp_path / "kernels"
    kaggle.pages = [[("output/exp003/fold0.partial/last.pt", b"checkpoint")]]  # what it resumes from
    argv = ["kaggle", "train", "exp003", "--folds", "0-1", "--set", "epochs=2", "--out", kernels]
    out, _ = run([*argv, "--resume-from", "tester/exp003-train-1"], capsys)

    assert kaggle.sent["order"] == ["dataset", "kernel"]  # the dataset exists before the kernel runs
    push = kaggle.sent["kernels"][0]
    assert push.slug == "tester/exp003-train" and push.new_title == "Exp003 Train"
    assert push.enable_internet is True and push.enable_gpu is True and push.machine_shape == "NvidiaTeslaT4"
    assert push.competition_data_sources == [COMPETITION]
    assert push.dataset_data_sources == ["tester/exp003-train-dataset"]
    assert push.kernel_data_sources == ["tester/exp003-train-1"]  # --resume-from
    assert kaggle.sent["status"][0].kernel_slug == "exp003-train-1"  # checked before the push
    assert kaggle.fetched == []  # its output listed, not downloaded
    assert not push.docker_image and push.is_private  # Kaggle picks the GPU image itself
    notebook = json.loads(push.text)
    assert "'epochs=2'" in "".join(c["source"] for c in notebook["cells"])  # the overrides travel
    dataset = kaggle.sent["datasets"][0]
    assert f"{dataset.owner_slug}/{dataset.slug}" == "tester/exp003-train-dataset" and dataset.is_private
    assert {"shopee.zip", "exp.zip", "shopee-train.json"} <= set(kaggle.sent["uploads"])  # --dir-mode zip
    assert "folds-5.csv" in kaggle.sent["uploads"]  # the local fold split: the folds pull home
    assert "dataset-metadata.json" not in kaggle.sent["uploads"]

    assert "GPU quota: 20.0 h of 30.0 h left" in out and "version 1 queued" in out
    assert "python -m shopee kaggle status tester/exp003-train" in out
    result = last_json(out)
    assert result["pushed"] and result["version"] == 1 and result["folds"] == [0, 1]
    for path in kernels.rglob("*.json"):
        assert "docker_image" not in path.read_text(), path
    no_secret_under(kernels)
    assert FAKE_KEY not in out and FAKE_KEY not in push.text

    # again: the dataset exists now, so it gets a new version, and the kernel a second one
    out, _ = run([*argv, "--overwrite"], capsys)
    assert kaggle.sent["order"] == ["dataset", "kernel", "dataset version", "kernel"]
    assert kaggle.sent["versions"][0].dataset_slug == "exp003-train-dataset"
    assert kaggle.sent["kernels"][1].kernel_data_sources == [] and "version 2 queued" in out


def test_train_refuses_a_run_the_weekly_gpu_quota_cannot_hold(
    kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    kaggle.quota_used = 28.0  # 2 h left, 3 h estimated
    argv = ["kaggle", "train", "exp003", "--folds", "0", "--out", tmp_path / "k"]
    _, err = run(argv, capsys, code=2)
    assert err.count("\n") == 1 and err.startswith("error: ") and "3.0 h" in err and "2.0 h" in err
    assert kaggle.sent["kernels"] == [] and kaggle.sent["datasets"] == []
    run([*argv, "--ignore-quota", "--overwrite"], capsys)
    assert len(kaggle.sent["kernels"]) == 1


def resume_argv(out: Path, source: str, *extra) -> list:
    return ["kaggle", "train", "exp003", "--folds", "0", "--out", out, "--resume-from", source, *extra]


def run_record(exp: str) -> bytes:
    return json.dumps({"exp": exp, "folds": [0], "finished": [], "unfinished": {}}).encode()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("missing", "no such kernel on Kaggle"),
        ("running", "its latest version is still running"),
        ("error", "its latest version ended error (out of memory)"),
        ("other-exp", "holds no output/exp003/ and no run record of exp003"),
        ("other-record", "holds no output/exp003/ and no run record of exp003"),
        ("itself", "that is the kernel being pushed"),
    ],
)
def test_train_checks_the_kernel_to_resume_from_before_anything_is_pushed(
    source: str, expected: str, kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    """Kaggle drops a kernel source it cannot attach only after the version is queued, which then
    retrains every fold: the source is checked first, and a bad one stops everything."""
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    name = "tester/exp003-train" if source == "itself" else "tester/exp003-train-1"
    if source == "missing":
        kaggle.unknown_kernels = {name}
    elif source == "running":
        kaggle.status = KernelWorkerStatus.RUNNING
    elif source == "error":
        kaggle.status, kaggle.failure = KernelWorkerStatus.ERROR, "out of memory"
    elif source == "other-exp":
        kaggle.pages = [[("output/exp001/fold0/config.json", b"{}"), ("notes.txt", b"")]]
    elif source == "other-record":
        kaggle.pages = [
            [("output/exp001/fold0/config.json", b"{}")],
            [(f"output/{RUN_RECORD}", run_record("exp001"))],
        ]
    _, err = run(resume_argv(tmp_path / "kernels", name), capsys, code=2)
    assert err.count("\n") == 1 and err.startswith(f"error: --resume-from {name}: ") and expected in err
    assert kaggle.sent["order"] == [] and kaggle.sent["uploads"] == []  # no dataset, no kernel
    assert not (tmp_path / "kernels").exists()  # nor anything built
    if source == "itself":
        assert "--slug exp003-train-2" in err and kaggle.sent["status"] == []


def test_train_resumes_from_a_run_record_of_the_experiment_reading_only_that_file(
    kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    """A version that stopped before any fold wrote output/<exp>/ still names its experiment in
    its run record: only that file is fetched, to read it."""
    kaggle.pages = [[("output/other.txt", b"x")], [(f"output/{RUN_RECORD}", run_record("exp003"))]]
    out, _ = run(resume_argv(tmp_path, "tester/exp003-train-1"), capsys)
    assert kaggle.fetched == [STORAGE + f"output/{RUN_RECORD}"]
    assert kaggle.sent["order"] == ["dataset", "kernel"] and "version 1 queued" in out


def test_train_says_to_cancel_a_version_kaggle_queued_without_the_run_to_resume_from(
    kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    kaggle.pages = [[("output/exp003/fold0/config.json", b"{}")]]
    kaggle.dropped_sources = {"tester/exp003-train-1"}  # the check passed, Kaggle left it out all the same
    _, err = run(resume_argv(tmp_path, "tester/exp003-train-1"), capsys, code=2)
    assert err.count("\n") == 1
    assert "pushed as version 1, but Kaggle did not attach kernels tester/exp003-train-1" in err
    assert "cancel that version at https://www.kaggle.com/code/tester/exp003-train" in err


def test_the_kernel_waits_until_its_new_dataset_version_is_ready(kaggle: FakeKaggle) -> None:
    from shopee.kaggle_gpu import client

    kaggle.datasets.add("tester/exp003-train-dataset")
    kaggle.processing = 2
    slept: list[float] = []
    client.wait_for_dataset(client.kaggle_api(), "tester/exp003-train-dataset", poll_s=5, sleep=slept.append)
    assert slept == [5, 5] and kaggle.processing == 0
    kaggle.processing = 10
    with pytest.raises(ShopeeError, match="still blobs_received after 0 min"):
        client.wait_for_dataset(client.kaggle_api(), "tester/exp003-train-dataset", 10, 5, slept.append)


def test_train_without_push_says_how_to_push_and_sends_nothing(
    kaggle: FakeKaggle, quick_estimate, tmp_path: Path, capsys
) -> None:
    out, _ = run(["kaggle", "train", "exp003", "--folds", "0", "--out", tmp_path, "--no-push"], capsys)
    assert f"kaggle kernels push -p {tmp_path / 'exp003-train'}" in out
    assert f"kaggle datasets create -p {tmp_path / 'exp003-train-dataset'} --dir-mode zip" in out
    assert kaggle.sent["order"] == [] and kaggle.sent["status"] == [] and not last_json(out)["pushed"]


def notebook_commands(
    notebook: Path, code: Path, gpus: int, monkeypatch: pytest.MonkeyPatch, lone_fold_gpus: int = 1
) -> list[list]:
    """The commands the training notebook starts on a machine with ``gpus`` GPUs (a lone fold on
    ``lone_fold_gpus`` of them): its settings and training cells executed here, with processes that
    end at once (the run record is written to the current folder)."""
    import os
    import subprocess
    import sys
    import types

    import torch

    started: list[list] = []

    class Process:
        pid = 0

        def __init__(self, command: list, **kwargs) -> None:
            started.append(command)

        def wait(self, timeout: float | None = None) -> int:
            return 0

    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]]
    fake = types.SimpleNamespace(
        Popen=Process, STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    namespace = {"os": os, "sys": sys, "json": json, "Path": Path, "subprocess": fake, "CODE": code}
    namespace["INPUT_ROOT"] = code
    exec(cells[1], namespace)  # the settings
    namespace["LONE_FOLD_GPUS"] = lone_fold_gpus  # as plan decides for the experiment
    exec(cells[-1], namespace)  # the training
    return started


@pytest.mark.parametrize("spec, folds", [("0-2,full", [0, 1, 2]), ("full", [])])
def test_train_full_trains_on_every_row_after_the_folds(
    spec: str, folds: list, kaggle: FakeKaggle, quick_estimate, tmp_path: Path, monkeypatch, capsys
) -> None:
    kernels = tmp_path / "kernels"
    out, _ = run(["kaggle", "train", "exp003", "--folds", spec, "--out", kernels, "--no-push"], capsys)
    result = last_json(out)
    assert result["folds"] == folds and result["full"] and "and the full-data run" in out
    # quick_estimate: 3 h for the folds, of which 2.5 h a lone fold; the full run has 5/4 its rows
    assert result["estimate_hours"] == pytest.approx((3.0 if folds else 0.5) + 2.5 * 5 / 4, abs=0.01)

    monkeypatch.chdir(tmp_path)
    code = tmp_path / "code"  # where the dataset is mounted (no fold split in it: the demo's stays as it is)
    notebook = kernels / "exp003-train" / "exp003-train.ipynb"
    exp_file = str(code / "exp" / "exp003.py")
    commands = notebook_commands(notebook, code, 2, monkeypatch, lone_fold_gpus=2)
    full = commands[-1]
    assert full[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # both T4s
    assert full[5:8] == [exp_file, "--fold", "full"] and "--resume" in full
    trained = [c[c.index("--folds") + 1 : c.index("--gpus") + 2] for c in commands[:-1]]
    assert trained == ([["0,1", "--gpus", "0,1"], ["2", "--gpus", "0+1"]] if folds else [])  # the folds first
    record = json.loads((tmp_path / "output" / RUN_RECORD).read_text())
    assert (
        record["folds"] == [*folds, "full"] and record["unfinished"]["full"] == "no output"
    )  # its log is empty

    alone = notebook_commands(notebook, code, 2, monkeypatch, lone_fold_gpus=1)[-1]
    assert alone[1:4] == [exp_file, "--fold", "full"]  # where a lone fold goes: one GPU, no torchrun


# ------------------------------------------------------------------------------------------------
# kaggle status, credentials
# ------------------------------------------------------------------------------------------------
def test_status_of_an_errored_version_shows_the_reason_and_the_last_log_lines(
    kaggle: FakeKaggle, capsys
) -> None:
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    kaggle.status, kaggle.failure = KernelWorkerStatus.ERROR, "Your notebook tried to allocate more memory"
    events = [{"stream_name": "stdout", "time": i, "data": f"epoch line {i}\n"} for i in range(30)]
    kaggle.log = json.dumps(events)
    out, _ = run(["kaggle", "status", "tester/exp003-train/3"], capsys)
    lines = out.splitlines()
    assert lines[0] == "tester/exp003-train/3: error"
    assert lines[1] == "failure: Your notebook tried to allocate more memory"
    assert "  epoch line 29" in lines and "  epoch line 10" in lines and "  epoch line 9" not in lines
    assert kaggle.sent["status"][0].kernel_slug == "exp003-train"
    assert kaggle.sent["status"][0].version_label == "v3"  # the version asked for, as the API wants it
    assert last_json(out)["status"] == "error"


def test_no_credentials_or_no_client_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kaggle/access_token nor OAuth credentials
    monkeypatch.setattr(requests.Session, "send", lambda *a, **k: pytest.fail("network"))
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    monkeypatch.setattr(KaggleApi, "config", str(tmp_path / "nowhere" / "kaggle.json"))
    out, err = run(["kaggle", "status", "tester/exp003-train"], capsys, code=2)
    assert out == "" and err.count("\n") == 1  # the client's own help stays quiet
    assert err.startswith("error: no Kaggle credentials") and "kaggle.json" in err and "KAGGLE_KEY" in err

    monkeypatch.setitem(__import__("sys").modules, "kaggle.api.kaggle_api_extended", None)
    _, err = run(["kaggle", "status", "tester/exp003-train"], capsys, code=2)
    assert err.count("\n") == 1 and "pip install kaggle" in err


# ------------------------------------------------------------------------------------------------
# kaggle pull
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_demo_dir: Path) -> Path:
    """exp003's fold 0, debug-trained on the small demo as the training kernel would."""
    from shopee.runner import load_experiment
    from shopee.train import train_fold

    out = tmp_path_factory.mktemp("kaggle-trained")
    _, cfg = load_experiment(str(ROOT / "exp" / "exp003.py"))
    train_fold(cfg, "exp003", 0, small_demo_dir, out, debug=True, code_dir=ROOT)
    return out / "exp003" / "fold0"


def lay_out(
    folder: Path, fold0: Path, *, requested=(0, 1), overrides=(), unfinished=None, debug: bool = True
) -> Path:
    """A version's output as ``kaggle kernels output`` writes it: fold 0 finished, fold 1 cut short."""
    output = folder / "output"
    shutil.copytree(fold0, output / "exp003" / "fold0")
    partial = output / "exp003" / "fold1.partial"
    partial.mkdir(parents=True)
    (partial / "last.pt").write_bytes(b"checkpoint")
    (partial / "train.log").write_text("epoch 1 ...\n")
    unfinished = {"1": "stopped at the session budget of 11.5 h"} if unfinished is None else unfinished
    record = {
        "exp": "exp003",
        "folds": list(requested),
        "finished": [0],
        "unfinished": unfinished,
        "overrides": list(overrides),
        "debug": debug,
        "seconds": 41000.0,
    }
    (output / RUN_RECORD).write_text(json.dumps(record))
    (folder / "exp003-train.log").write_text("[]")  # the log kernels_output writes beside
    return folder


def pull_argv(downloaded: Path | None, data: Path, output: Path, *extra) -> list:
    source = ["--from", downloaded] if downloaded else []
    return ["kaggle", "pull", "tester/exp003-train", *source, "--data", data, "--output", output, *extra]


def test_pull_installs_the_finished_folds_and_names_the_missing_ones(
    trained: Path, small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    from shopee.kaggle_gpu.pull import file_digests

    downloaded = lay_out(tmp_path / "downloaded", trained)
    output = tmp_path / "output"
    argv = pull_argv(downloaded, small_demo_dir, output, "--exp-dir", ROOT / "exp")
    out, _ = run(argv, capsys)
    assert f"exp003 fold0: installed: {output / 'exp003' / 'fold0'} (CV F1" in out
    assert "exp003 fold1: missing: stopped at the session budget of 11.5 h" in out
    hint = (
        f"--folds 1 --debug --data {small_demo_dir} --resume-from tester/exp003-train --slug exp003-train-2"
    )
    assert hint in out  # on the same data, so that the continued folds pull home too
    summary = last_json(out)
    assert summary["installed"] == [0] and list(summary["missing"]) == ["1"] and summary["changed"]
    assert file_digests(output / "exp003" / "fold0") == file_digests(trained)
    assert sorted(p.name for p in (output / "exp003").iterdir()) == ["fold0"]  # no partial, no temp

    before = {p: p.stat().st_mtime_ns for p in (output / "exp003" / "fold0").iterdir()}
    out, _ = run(argv, capsys)  # the same version again
    assert "exp003 fold0: unchanged" in out and f"nothing changed in {output / 'exp003'}" in out
    assert not last_json(out)["changed"]
    assert {p: p.stat().st_mtime_ns for p in (output / "exp003" / "fold0").iterdir()} == before


@pytest.fixture(scope="module")
def trained_full(tmp_path_factory: pytest.TempPathFactory, small_demo_dir: Path) -> Path:
    """exp003's full-data run, debug-trained on the small demo as the training kernel would."""
    from shopee.runner import load_experiment
    from shopee.train import train_fold

    out = tmp_path_factory.mktemp("kaggle-trained-full")
    _, cfg = load_experiment(str(ROOT / "exp" / "exp003.py"))
    train_fold(cfg, "exp003", "full", small_demo_dir, out, debug=True, code_dir=ROOT)
    return out / "exp003" / "full"


def test_pull_installs_a_full_data_run_verified_as_folds_are(
    trained: Path, trained_full: Path, demo_copy: Path, tmp_path: Path, capsys
) -> None:
    from shopee.kaggle_gpu.pull import file_digests

    downloaded = lay_out(tmp_path / "downloaded", trained, requested=[0, "full"], unfinished={})
    shutil.copytree(trained_full, downloaded / "output" / "exp003" / "full")
    output = tmp_path / "output"
    argv = pull_argv(downloaded, demo_copy, output, "--exp-dir", ROOT / "exp")
    out, _ = run(argv, capsys)
    assert f"exp003 full: installed: {output / 'exp003' / 'full'}" in out
    assert last_json(out)["installed"] == [0, "full"]
    assert file_digests(output / "exp003" / "full") == file_digests(trained_full)

    train = (demo_copy / "train.csv").read_text().splitlines()  # another train.csv here now
    (demo_copy / "train.csv").write_text("\n".join(train[:-6]) + "\n")
    for folds in demo_copy.glob("folds-*.csv"):
        folds.unlink()
    _, err = run([*argv, "--output", tmp_path / "elsewhere"], capsys, code=2)
    assert "full refused (trained on another train.csv" in err and err.count("\n") == 1


def test_pull_keeps_a_different_local_fold_unless_overwrite(
    trained: Path, small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    from shopee.kaggle_gpu.pull import file_digests

    downloaded = lay_out(tmp_path / "downloaded", trained, requested=[0], unfinished={})
    output = tmp_path / "output"
    local = Path(shutil.copytree(trained, output / "exp003" / "fold0"))
    with open(local / "train.log", "a") as log:
        log.write("trained here as well\n")
    argv = pull_argv(downloaded, small_demo_dir, output, "--exp-dir", ROOT / "exp")
    out, err = run(argv, capsys, code=2)
    assert (
        "exp003 fold0: kept" in out and err.startswith("error: exp003: fold0 kept") and err.count("\n") == 1
    )
    assert (local / "train.log").read_text().endswith("trained here as well\n")
    out, _ = run([*argv, "--overwrite"], capsys)
    assert "exp003 fold0: replaced" in out and last_json(out)["replaced"] == [0]
    assert file_digests(local) == file_digests(trained)


@pytest.mark.parametrize("spoil", ["config", "data", "half-written"])
def test_pull_refuses_a_fold_that_is_not_what_local_training_would_write(
    spoil: str, trained: Path, demo_copy: Path, tmp_path: Path, capsys
) -> None:
    downloaded = lay_out(tmp_path / "downloaded", trained, requested=[0], unfinished={})
    exp_dir = Path(
        shutil.copytree(ROOT / "exp", tmp_path / "exp", ignore=shutil.ignore_patterns("__pycache__"))
    )
    if spoil == "config":  # the local experiment file now means something else
        source = (exp_dir / "exp003.py").read_text()
        (exp_dir / "exp003.py").write_text(source.replace("lr_text=1e-4", "lr_text=2e-4"))
    elif spoil == "data":  # another train.csv here
        train = (demo_copy / "train.csv").read_text().splitlines()
        (demo_copy / "train.csv").write_text("\n".join(train[:-6]) + "\n")
        for folds in demo_copy.glob("folds-*.csv"):  # made for the old one
            folds.unlink()
    else:
        (downloaded / "output" / "exp003" / "fold0" / ".model.safetensors.x1.tmp").write_bytes(b"half")
    output = tmp_path / "output"
    out, err = run(pull_argv(downloaded, demo_copy, output, "--exp-dir", exp_dir), capsys, code=2)
    assert err.count("\n") == 1 and err.startswith("error: exp003: fold0 refused (")
    expected = {
        "config": "lr_text=0.0001 in the download, 0.0002 here",
        "data": "trained on another train.csv",
        "half-written": "a half-written file in the download (.model.safetensors.x1.tmp)",
    }[spoil]
    assert expected in err and expected in out
    assert not (output / "exp003" / "fold0").exists()


def test_pull_refuses_a_fold_other_code_trained_unless_allowed(
    trained: Path, small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """A fold records the digest of the code that shaped its embeddings; a download whose digest
    differs from this checkout's is refused naming the files, installed with --allow-code-change,
    and one that records none (trained before digests) is installed with a warning."""
    from shopee.codedigest import code_digest
    from shopee.outputs import FoldRecord

    assert FoldRecord.open(trained).code_digest == code_digest()  # training recorded this checkout's
    downloaded = lay_out(tmp_path / "downloaded", trained, requested=[0], unfinished={})
    config = downloaded / "output" / "exp003" / "fold0" / "config.json"
    meta = json.loads(config.read_text())
    meta["code_digest"]["files"]["models/pooling.py"] = "0" * 64  # the pooling it was trained with
    meta["code_digest"]["sha256"] = "1" * 64
    config.write_text(json.dumps(meta))
    output = tmp_path / "output"
    argv = pull_argv(downloaded, small_demo_dir, output, "--exp-dir", ROOT / "exp")
    out, err = run(argv, capsys, code=2)
    reason = (
        "trained by other code (models/pooling.py differs from this checkout); "
        "pass --allow-code-change to use it anyway"
    )
    assert f"exp003 fold0: refused: {reason}" in out and err == f"error: exp003: fold0 refused ({reason})\n"
    assert not (output / "exp003" / "fold0").exists()

    out, err = run([*argv, "--allow-code-change"], capsys)
    target = output / "exp003" / "fold0"
    assert f"exp003 fold0: installed: {target}" in out
    used = "trained by other code (models/pooling.py); used anyway (--allow-code-change)"
    assert err == f"warning: {target}: {used}\n"

    del meta["code_digest"]
    config.write_text(json.dumps(meta))
    elsewhere = tmp_path / "elsewhere"
    out, err = run([*argv, "--output", elsewhere], capsys)
    assert "exp003 fold0: installed" in out
    assert err == (
        f"warning: {elsewhere / 'exp003' / 'fold0'}: records no code digest (trained before digests were "
        "kept): not checked\n"
    )


def test_pull_downloads_every_page_of_a_version_through_the_client(
    kaggle: FakeKaggle, trained: Path, small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    from shopee.kaggle_gpu.pull import file_digests

    laid = lay_out(tmp_path / "laid", trained, requested=[0], unfinished={}) / "output"
    files = [
        (f"output/{p.relative_to(laid).as_posix()}", p.read_bytes())
        for p in sorted(laid.rglob("*"))
        if p.is_file()
    ]
    kaggle.pages = [files[:3], files[3:]]  # two pages, as Kaggle lists a long output
    kaggle.log = json.dumps([{"stream_name": "stdout", "time": 0, "data": "done\n"}])
    output = tmp_path / "output"
    kaggle.status = KernelWorkerStatus.RUNNING
    _, err = run(pull_argv(None, small_demo_dir, output, "--exp-dir", ROOT / "exp"), capsys, code=2)
    assert "still running" in err and kaggle.sent["output"] == []

    kaggle.status = KernelWorkerStatus.COMPLETE
    out, _ = run(pull_argv(None, small_demo_dir, output, "--version", 2, "--exp-dir", ROOT / "exp"), capsys)
    assert f"downloaded {len(files) + 1} files" in out  # and the log kernels_output writes beside
    assert [r.page_token for r in kaggle.sent["output"]] == ["", "1"]
    assert {r.version_label for r in kaggle.sent["output"]} == {"v2"}
    assert file_digests(output / "exp003" / "fold0") == file_digests(trained)
    assert sorted(p.name for p in output.iterdir()) == ["exp003"]  # the download folder is gone


# ------------------------------------------------------------------------------------------------
# kaggle submit
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def ensemble(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ensemble file and a stand-in for build_kernel that writes the two folders with the real
    metadata (the full build is tested in test_kernel.py)."""
    import nbformat

    from shopee import ensemble_file
    from shopee.kernel import build as kernel_build
    from shopee.kernel import metadata as meta

    path = tmp_path / "ensembles" / "v1.json"
    path.parent.mkdir()
    path.write_text("{}")
    monkeypatch.setattr(ensemble_file, "read_ensemble", lambda p: {"name": "v1", "cv_f1": 0.8123})

    def build_kernel(ensemble_path, slug, *, user=None, out=Path("kernels"), **kwargs):
        title = meta.kernel_title(slug, None)
        user = meta.kaggle_user(user)
        notebook_dir, dataset_dir = Path(out) / slug, Path(out) / f"{slug}-dataset"
        notebook_dir.mkdir(parents=True)
        (dataset_dir / "shopee").mkdir(parents=True)
        (dataset_dir / "shopee" / "__init__.py").write_text("")
        dataset_meta = meta.dataset_metadata(user, slug, title)
        (dataset_dir / "dataset-metadata.json").write_text(json.dumps(dataset_meta))
        (notebook_dir / "kernel-metadata.json").write_text(
            json.dumps(meta.kernel_metadata(user, slug, title))
        )
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('predict')")])
        (notebook_dir / f"{slug}.ipynb").write_text(nbformat.writes(nb))
        manifest = {"kernel": f"{user}/{slug}", "dataset": dataset_meta["id"], "folds": ["exp003/fold0"]}
        return kernel_build.Kernel(notebook_dir, dataset_dir, manifest)

    monkeypatch.setattr(kernel_build, "build_kernel", build_kernel)
    return path


def test_submit_takes_every_build_kernel_option_and_passes_it_on(
    kaggle: FakeKaggle, ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """One definition of build-kernel's options serves both commands: the same options reach
    build_kernel the same way from either."""
    from shopee.cli import build_parser
    from shopee.cli_args import kernel_options
    from shopee.kernel import build as kernel_build

    parser = build_parser()
    build = set(vars(parser.parse_args(["build-kernel", "--ensemble", "e.json", "--name", "shopee-v1"])))
    submit = set(vars(parser.parse_args(["kaggle", "submit", "e.json", "--name", "shopee-v1"])))
    assert submit - build == {"kaggle_command", "message", "no_push", "version"}  # submit's own
    assert build - submit == set()

    options = ["--models", "full", "--tta", "flip", "--allow-over-time", "--weights", "fp32", "--public"]
    options += ["--accelerator", "none", "--cv-rows", "50", "--image-policy", "error", "--backend", "faiss"]
    options += ["--wheel", "x.whl", "--strict", "--title", "Shopee V1", "--out", tmp_path / "kernels"]
    options += ["--output", tmp_path / "output", "--user", "someone", "--overwrite", "--allow-code-change"]
    options = [str(o) for o in options]
    calls: list[dict] = []
    inner = kernel_build.build_kernel
    monkeypatch.setattr(kernel_build, "build_kernel", lambda *a, **k: calls.append(k) or inner(*a, **k))
    out, _ = run(["kaggle", "submit", ensemble, "--name", "shopee-v1", "--no-push", *options], capsys)
    by_build_kernel = parser.parse_args(
        ["build-kernel", "--ensemble", str(ensemble), "--name", "shopee-v1", *options]
    )
    assert calls == [kernel_options(by_build_kernel)]
    assert calls[0]["models"] == "full" and calls[0]["allow_over_time"] and calls[0]["tta"] == "flip"
    assert calls[0]["allow_code_change"]
    assert "1 full-data models" in out and "accelerator none" in out and kaggle.sent["order"] == []


def test_submit_pushes_the_offline_kernel_and_submits_a_version_that_ran(
    kaggle: FakeKaggle, ensemble: Path, tmp_path: Path, capsys
) -> None:
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    kernels = tmp_path / "kernels"
    out, _ = run(["kaggle", "submit", ensemble, "--name", "shopee-v1", "--out", kernels], capsys)
    push = kaggle.sent["kernels"][0]
    assert kaggle.sent["order"] == ["dataset", "kernel"] and kaggle.sent["submissions"] == []
    assert push.enable_internet is False and push.machine_shape == "NvidiaTeslaT4" and not push.docker_image
    assert push.dataset_data_sources == ["tester/shopee-v1-dataset"]
    assert "not submitted yet" in out and "--name shopee-v1 --version 1" in out
    no_secret_under(kernels)

    kaggle.status = KernelWorkerStatus.RUNNING  # Kaggle submits only a version that ran to the end
    _, err = run(["kaggle", "submit", ensemble, "--name", "shopee-v1", "--version", 1], capsys, code=2)
    assert "version 1 is running" in err and kaggle.sent["submissions"] == []

    kaggle.status = KernelWorkerStatus.COMPLETE
    out, _ = run(["kaggle", "submit", ensemble, "--name", "shopee-v1", "--version", 1], capsys)
    sent = kaggle.sent["submissions"][0]
    assert sent.competition_name == COMPETITION and sent.kernel_owner == USER
    assert sent.kernel_slug == "shopee-v1" and sent.kernel_version == 1 and sent.file_name == "submission.csv"
    assert sent.submission_description == "v1 (CV F1 0.8123)"
    assert "submitted tester/shopee-v1 version 1" in out and last_json(out)["submitted"]
