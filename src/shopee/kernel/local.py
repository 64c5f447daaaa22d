"""``run-kernel``: execute a built notebook here as Kaggle would, offline, with nbclient.

The run folder gets an ``input/`` root laid out like ``/kaggle/input`` (links to the kernel's
dataset and to the competition data) and a ``working/`` folder, the notebook's working directory,
where ``submission.csv`` and the executed notebook are written. Hub access is switched off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nbformat

from shopee.atomic import write_text
from shopee.constants import COMPETITION
from shopee.errors import ShopeeError

RUN_MARKER = ".shopee-kernel-run"


def _fresh_run_dir(path: Path) -> None:
    """Empty ``path`` if it is an earlier run folder; refuse to touch anything else."""
    if path.exists() and any(path.iterdir()):
        if not (path / RUN_MARKER).is_file():
            raise ShopeeError(f"{path}: exists and is not a run-kernel folder; choose another --work")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).write_text("made by python -m shopee run-kernel\n")


def cell_outputs(nb: nbformat.NotebookNode) -> str:
    """The text a person would see under the cells (streams, results, errors)."""
    lines: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                lines.append(out.text.rstrip("\n"))
            elif out.output_type in ("execute_result", "display_data"):
                lines.append(out.get("data", {}).get("text/plain", "").rstrip("\n"))
            elif out.output_type == "error":
                lines.append(f"{out.ename}: {out.evalue}")
    return "\n".join(line for line in lines if line)


def run_kernel(
    kernel_dir: Path,
    data_dir: Path,
    *,
    work: Path | None = None,
    dataset_dir: Path | None = None,
    timeout: int | None = None,
    python: Path | None = None,
    kernel_sources: dict[str, Path] | None = None,
) -> tuple[Path, nbformat.NotebookNode, float]:
    """Execute ``kernel_dir``'s notebook; (its working folder, the executed notebook, seconds).

    The dataset folder defaults to the builder's ``<kernel_dir>-dataset`` beside it. ``python``
    runs the notebook's kernel on another interpreter (one with ipykernel), such as a virtual
    environment with Kaggle's library versions. A failing cell raises ``ShopeeError`` with its
    error line; the executed notebook is saved either way. ``kernel_sources`` maps an attached
    kernel's slug to a folder standing for its output (a training kernel's earlier version), mounted
    under the input root as Kaggle mounts ``kernel_sources``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    kernel_dir = Path(kernel_dir)
    try:
        kernel_meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
        code_file = kernel_dir / kernel_meta["code_file"]
        nb = nbformat.read(code_file, as_version=4)
    except (OSError, ValueError, KeyError) as exc:
        raise ShopeeError(f"{kernel_dir}: not a built kernel ({exc})") from None
    dataset_dir = Path(dataset_dir) if dataset_dir else kernel_dir.parent / f"{kernel_dir.name}-dataset"
    if not dataset_dir.is_dir():
        raise ShopeeError(f"{dataset_dir}: the kernel's dataset folder is missing (pass --dataset DIR)")
    work = (Path(work) if work else kernel_dir.parent / f"{kernel_dir.name}-run").resolve()
    _fresh_run_dir(work)
    inputs, working = work / "input", work / "working"
    inputs.mkdir()
    working.mkdir()
    for source in kernel_meta.get("dataset_sources", []):
        (inputs / source.split("/")[-1]).symlink_to(dataset_dir.resolve(), target_is_directory=True)
    (inputs / COMPETITION).symlink_to(Path(data_dir).resolve(), target_is_directory=True)
    for slug, folder in (kernel_sources or {}).items():
        (inputs / slug).symlink_to(Path(folder).resolve(), target_is_directory=True)

    env = {k: v for k, v in os.environ.items() if k not in ("SHOPEE_DATA", "SHOPEE_INPUT")}
    env.update({"SHOPEE_INPUT": str(inputs), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        km=_kernel_manager(Path(python), work) if python else None,
        resources={"metadata": {"path": str(working)}},
        # The kernel is local and short-lived: its warning about unencrypted local TCP is noise.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    started = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        failed = f"{getattr(exc, 'ename', 'Error')}: {getattr(exc, 'evalue', exc)}"
        raise ShopeeError(f"{code_file}: a cell failed ({failed}); see {working / code_file.name}") from None
    finally:
        write_text(working / code_file.name, nbformat.writes(nb))
    return working, nb, time.perf_counter() - started


def _kernel_manager(python: Path, work: Path):
    """A Jupyter kernel manager whose kernel runs on ``python`` (checked to have ipykernel)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    try:
        probe = subprocess.run(
            [str(python), "-c", "import ipykernel, sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except OSError as exc:
        raise ShopeeError(f"--python {python}: cannot run it ({exc.strerror})") from None
    if probe.returncode != 0:
        raise ShopeeError(f"--python {python}: has no ipykernel (pip install ipykernel into it)")
    specs = work / "kernelspecs"
    spec = specs / "shopee-run"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    name = f"Python {probe.stdout.strip()} ({python})"
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return KernelManager(
        kernel_name="shopee-run", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)])
    )
