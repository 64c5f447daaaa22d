"""The Kaggle CLI's own Python client (``pip install kaggle``, 2.2.x), wrapped thinly.

Every call goes through ``KaggleApi`` as ``kaggle kernels push`` / ``kaggle datasets create`` do, so
the client's own validation of the metadata runs before anything is sent. What a user can fix (no
client, no credentials, a refused upload, Kaggle unreachable) becomes one ``ShopeeError`` line.

Credentials stay where the CLI keeps them (``~/.kaggle/kaggle.json``, ``KAGGLE_USERNAME`` /
``KAGGLE_KEY``, ``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``): this module never reads them
itself, never writes them anywhere, and prints only the user name.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shopee.constants import COMPETITION
from shopee.errors import ShopeeError

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

T = TypeVar("T")

CREDENTIALS_HELP = (
    "no Kaggle credentials: create an API token at https://www.kaggle.com/settings/api and put "
    "kaggle.json in ~/.kaggle/ (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, or "
    "KAGGLE_API_TOKEN (or run: kaggle auth login)"
)
RUNNING = ("queued", "running", "new_script")  # a version whose output is not there yet
DATASET_READY = "ready"
DATASET_FAILED = ("failed", "deleted")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The client prints help and progress on stdout; our commands print their own lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def kaggle_api() -> KaggleApi:
    """An authenticated ``KaggleApi``, or one error line saying what to install or set."""
    import requests

    try:
        with _quiet():  # importing ``kaggle`` already tries to authenticate, printing help if it cannot
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise ShopeeError("the Kaggle client is not installed: pip install kaggle (2.2.1 or later)") from None
    api = KaggleApi()
    try:
        with _quiet():
            api.authenticate()
    except SystemExit:  # the client's way of saying it found no credentials
        raise ShopeeError(CREDENTIALS_HELP) from None
    except requests.RequestException as exc:  # an access token is checked online
        raise ShopeeError(f"cannot reach Kaggle to check the API token ({type(exc).__name__})") from None
    return api


def username(api: KaggleApi) -> str:
    """The user the credentials belong to (the owner of kernels and datasets pushed)."""
    name = api.get_config_value(api.CONFIG_NAME_USER)
    if not name:
        raise ShopeeError("the Kaggle credentials name no user: pass --user NAME")
    return str(name)


class NotOnKaggle(ShopeeError):
    """Kaggle answered 404: no such kernel, version or dataset (or not visible to this user)."""


def call(what: str, action: Callable[[], T]) -> T:
    """Run a client call; its refusals and network failures become one line starting with ``what``."""
    import requests

    try:
        with _quiet():
            return action()
    except ValueError as exc:  # the client's own checks (metadata, slugs, paths)
        raise ShopeeError(f"{what}: {exc}") from None
    except requests.HTTPError as exc:
        response = exc.response
        code = response.status_code if response is not None else None
        detail = (response.text if response is not None else "") or str(exc)
        first = (detail.strip().splitlines() or [""])[0][:200]
        error = NotOnKaggle if code == 404 else ShopeeError
        raise error(f"{what}: Kaggle answered {code or '?'} ({first})") from None
    except requests.RequestException as exc:
        raise ShopeeError(f"{what}: cannot reach Kaggle ({type(exc).__name__})") from None


# ------------------------------------------------------------------------------------------------
# pushing
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pushed:
    ref: str  # owner/slug
    url: str
    version: int | None = None  # a kernel's version number (a dataset's is not reported)
    created: bool = False  # a dataset made for the first time (else a new version)


def _read_id(folder: Path, name: str) -> str:
    try:
        return str(json.loads((folder / name).read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShopeeError(f"{folder / name}: cannot read its id ({exc})") from None


def push_kernel(api: KaggleApi, folder: Path) -> Pushed:
    """``kaggle kernels push -p folder``: a new version, which Kaggle queues to run."""
    ref = _read_id(folder, "kernel-metadata.json")
    response = call(f"kaggle kernels push {folder}", lambda: api.kernels_push(str(folder)))
    if response.error:
        raise ShopeeError(f"{folder}: Kaggle refused the kernel {ref} ({response.error})")
    dropped = {
        "datasets": response.invalid_dataset_sources,
        "competitions": response.invalid_competition_sources,
        "kernels": response.invalid_kernel_sources,
        "models": response.invalid_model_sources,
    }
    dropped = {kind: list(names) for kind, names in dropped.items() if names}
    url = response.url or f"https://www.kaggle.com/code/{ref}"
    if dropped:  # the version exists and is queued without them: say so, and to stop it
        raise ShopeeError(
            f"{ref}: pushed as version {response.version_number}, but Kaggle did not attach "
            + "; ".join(f"{kind} {', '.join(names)}" for kind, names in dropped.items())
            + f": cancel that version at {url} (it runs without them, spending GPU hours), then check "
            "the names, and that a dataset just pushed is ready (kaggle datasets status)"
        )
    return Pushed(ref, url, response.version_number)


def dataset_exists(api: KaggleApi, ref: str) -> bool:
    try:
        call(f"kaggle datasets status {ref}", lambda: api.dataset_status(ref))
    except NotOnKaggle:
        return False
    return True


def push_dataset(api: KaggleApi, folder: Path, notes: str) -> Pushed:
    """``kaggle datasets create -p folder --dir-mode zip`` the first time, ``kaggle datasets version``
    (same folder, ``notes``) after: subfolders travel zipped and Kaggle expands them again."""
    ref = _read_id(folder, "dataset-metadata.json")
    exists = dataset_exists(api, ref)
    if exists:
        what = f"kaggle datasets version -p {folder}"
        response = call(
            what, lambda: api.dataset_create_version(str(folder), notes, quiet=True, dir_mode="zip")
        )
    else:
        what = f"kaggle datasets create -p {folder}"
        response = call(what, lambda: api.dataset_create_new(str(folder), quiet=True, dir_mode="zip"))
    if response.error:
        raise ShopeeError(f"{folder}: Kaggle refused the dataset {ref} ({response.error})")
    return Pushed(ref, response.url or f"https://www.kaggle.com/datasets/{ref}", created=not exists)


def wait_for_dataset(
    api: KaggleApi,
    ref: str,
    timeout_s: float = 900,
    poll_s: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until the dataset's newest version is ready: a kernel pushed before would attach the
    previous version (or none, for a new dataset)."""
    waited = 0.0
    while True:
        status = str(call(f"kaggle datasets status {ref}", lambda: api.dataset_status(ref)))
        if status == DATASET_READY:
            return
        if status in DATASET_FAILED:
            raise ShopeeError(f"{ref}: Kaggle could not process the dataset (status {status})")
        if waited >= timeout_s:
            raise ShopeeError(
                f"{ref}: still {status} after {waited / 60:.0f} min; push the kernel once it is ready"
            )
        sleep(poll_s)
        waited += poll_s


# ------------------------------------------------------------------------------------------------
# a version's state and output
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelStatus:
    status: str  # queued, running, complete, error, cancel_requested, cancel_acknowledged
    failure: str  # Kaggle's failure message (an error's reason), else ""

    @property
    def running(self) -> bool:
        return self.status in RUNNING


def kernel_status(api: KaggleApi, kernel: str) -> KernelStatus:
    """``kaggle kernels status owner/slug[/version]``."""
    response = call(f"kaggle kernels status {kernel}", lambda: api.kernels_status(kernel))
    status = getattr(response.status, "name", str(response.status)).lower()
    return KernelStatus(status, response.failure_message or "")


def log_lines(text: str) -> list[str]:
    """A kernel's log as lines: Kaggle stores it as a JSON list of ``{stream_name, time, data}``."""
    try:
        events = json.loads(text)
    except ValueError:
        return text.splitlines()
    if not isinstance(events, list):
        return text.splitlines()
    joined = "".join(str(e.get("data", "")) for e in events if isinstance(e, dict))
    return joined.splitlines()


def log_tail(api: KaggleApi, kernel: str, lines: int = 20) -> list[str]:
    """The last ``lines`` non-empty lines of the version's log (``kaggle kernels logs``)."""
    if not hasattr(api, "kernels_logs"):  # before 2.2: the log comes with ``kernels output`` only
        return ["(this kaggle client has no kernels_logs: pip install -U kaggle)"]
    text = call(f"kaggle kernels logs {kernel}", lambda: api.kernels_logs(kernel))
    return [line for line in log_lines(text or "") if line.strip()][-lines:] if lines > 0 else []


def download_output(api: KaggleApi, kernel: str, folder: Path, file_pattern: str | None = None) -> list[Path]:
    """``kaggle kernels output owner/slug[/version] -p folder``: every page of the version's output
    files (the client follows the pages since 2.2.2), laid out as under ``/kaggle/working``;
    ``file_pattern`` (a regular expression) downloads only the files it matches."""
    folder.mkdir(parents=True, exist_ok=True)
    files, _ = call(
        f"kaggle kernels output {kernel}",
        lambda: api.kernels_output(kernel, str(folder), file_pattern=file_pattern, force=True, quiet=True),
    )
    return [Path(f) for f in files]


def output_names(api: KaggleApi, kernel: str, stop: Callable[[str], bool] = lambda name: False) -> list[str]:
    """The names of the latest version's output files (``output/exp003/fold0/config.json`` ...),
    page by page as ``kaggle kernels output`` lists them, without downloading any: a training run's
    output holds gigabytes of weights. Stops at the first name ``stop`` accepts."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    owner, slug = kernel.split("/")[:2]
    names: list[str] = []
    token = ""
    while True:
        request = ApiListKernelSessionOutputRequest()
        request.user_name, request.kernel_slug, request.page_size = owner, slug, 20  # the CLI's page
        if token:
            request.page_token = token

        def page(request=request):
            with api.build_kaggle_client() as kaggle:
                return kaggle.kernels.kernels_api_client.list_kernel_session_output(request)

        response = call(f"kaggle kernels output {kernel} (the listing)", page)
        for item in response.files or []:
            names.append(item.file_name)
            if stop(item.file_name):
                return names
        token = response.next_page_token
        if not token:
            return names


# ------------------------------------------------------------------------------------------------
# quota and submission
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quota:
    used_hours: float
    total_hours: float
    refresh: str  # when the weekly quota refreshes (ISO time, UTC), or ""

    @property
    def left_hours(self) -> float:
        return max(0.0, self.total_hours - self.used_hours)


def gpu_quota(api: KaggleApi) -> Quota | None:
    """The weekly GPU hours (``kaggle quota``, client 2.2.1+); None when the client or Kaggle
    cannot tell."""
    if not hasattr(api, "quota_view"):
        return None
    try:
        response = call("kaggle quota", api.quota_view)
    except ShopeeError:
        return None
    quota = response.gpu_quota
    if quota is None or quota.total_time_allowed is None:
        return None
    used = quota.time_used.total_seconds() / 3600 if quota.time_used is not None else 0.0
    refresh = response.quota_refresh_time
    return Quota(
        used, quota.total_time_allowed.total_seconds() / 3600, refresh.isoformat() if refresh else ""
    )


def submit(api: KaggleApi, kernel: str, version: int, message: str, file_name: str = "submission.csv") -> str:
    """``kaggle competitions submit -k owner/slug -v N -f submission.csv -m message``: Kaggle runs the
    version's notebook again on the hidden test and scores ``file_name``. Returns Kaggle's answer."""
    response = call(
        f"kaggle competitions submit -k {kernel} -v {version}",
        lambda: api.competition_submit_code(
            file_name, message, competition=COMPETITION, kernel=kernel, kernel_version=version, quiet=True
        ),
    )
    return str(response.message or "submitted")
