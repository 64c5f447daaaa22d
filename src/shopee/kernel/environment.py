"""What the bundled package needs of the image it runs on, and the notebook cell that checks it.

A Kaggle kernel runs the bundled ``shopee`` source on the libraries of Kaggle's image, not on this
project's pins. ``MINIMUM_VERSIONS`` are the oldest versions the code is tested with: those of
``requirements-kaggle.txt`` (Kaggle's 2026 GPU image: a Colab runtime of 2026-04/05), which
``make kaggle-check`` installs to run the demo kernel in. Several of them are only what that image
was believed to hold, so an older version is not known to fail: the notebook's first code cell
prints what the image has, warns about a library older than tested, and stops with one line only
where the code is known not to work (``KNOWN_MINIMUMS``: an API it calls is missing below that
version) or a library is missing, unless a wheel for it is bundled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# distribution name -> oldest version tested (requirements-kaggle.txt pins exactly these)
MINIMUM_VERSIONS: dict[str, str] = {
    "torch": "2.10.0",
    "timm": "1.0.25",
    "transformers": "5.0.0",
    "safetensors": "0.7.0",
    "numpy": "2.0.2",  # np.bitwise_count (phash distances) needs 2.0
    "pandas": "2.2.2",
    "scipy": "1.16.3",
    "scikit-learn": "1.6.1",
    "pillow": "11.3.0",
    "albumentations": "2.0.8",
}
PAIR_MODEL_MINIMUMS: dict[str, str] = {"lightgbm": "4.6.0"}  # needed when the ensemble has a pair model
MINIMUM_PYTHON = "3.10"
# Below these the code cannot run (the reason beside each): the notebook stops. Older than
# MINIMUM_VERSIONS but not below these: a warning, since the code was not tested there.
KNOWN_MINIMUMS: dict[str, str] = {
    "python": MINIMUM_PYTHON,  # X | Y unions and dataclass(slots=...) at run time
    "numpy": "2.0.0",  # np.bitwise_count: phash distances
}
# Reported when present; the code falls back without them (faiss and cuml: torch kNN).
OPTIONAL = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "cuml-cu12")

CELL = """\
# The environment: what this image has against what the bundle was built and tested for. Nothing
# is imported here (a bundled wheel may replace a library in the next cell); GPUs from nvidia-smi.
import importlib.metadata
import platform
import shutil
import subprocess

TESTED = {tested!r}  # the oldest versions this bundle was tested with (an older one: a warning)
KNOWN = {known!r}  # below these the code cannot run (an older one stops the notebook)
OPTIONAL = {optional!r}
WHEELS = {wheels!r}  # bundled wheels: the next cell installs them before anything is imported


def version(dist):
    if dist == "python":
        return platform.python_version()
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def release(text):
    \"\"\"(2, 10, 0) from '2.10.0+cu128': the leading numbers.\"\"\"
    numbers = []
    for part in text.replace("+", ".").split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def wheel_for(dist):
    \"\"\"A bundled wheel of this distribution (a wheel's name is DIST-VERSION-...whl)?\"\"\"
    name = dist.lower().replace("-", "_")
    return any(w.split("-")[0].lower() == name for w in WHEELS)


fatal, untested = [], []
for dist, tested in TESTED.items():
    have, known = version(dist), KNOWN.get(dist)
    if have is None or (known and release(have) < release(known)):
        status = "  <- TOO OLD" if have else "  <- MISSING"
        if not wheel_for(dist):
            fatal.append((dist, have, known or tested))
    elif release(have) < release(tested):
        status = "  <- older than tested"
        untested.append((dist, have, tested))
    else:
        status = ""
    print(f"{{dist:<16}} {{have or 'missing':<16}} tested >= {{tested}}{{status}}")
for dist in OPTIONAL:
    if version(dist):
        print(f"{{dist:<16}} {{version(dist):<16}} (optional)")
gpus = []
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader"]
    listing = subprocess.run(query, capture_output=True, text=True, timeout=60)
    gpus = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
print(f"GPUs: {{'; '.join(gpus) or 'none (CPU only)'}}")
for dist, have, tested in untested:
    print(
        f"warning: {{dist}} {{have}} is older than the {{tested}} this bundle was tested with; it may work "
        f"(if a later cell fails, rebuild with --wheel FILE.whl for {{dist}})"
    )
if fatal:
    dist, have, need = fatal[0]
    more = f" (also: {{', '.join(d for d, _, _ in fatal[1:])}})" if len(fatal) > 1 else ""
    raise RuntimeError(
        f"{{dist}} {{have or 'is missing'}}: this kernel needs {{dist}} >= {{need}}; rebuild it with "
        f"--wheel FILE.whl for {{dist}} (pip download {{dist}}=={{need}}), or attach a dataset of "
        f"wheels{{more}}"
    )
"""


def requirements(pair_model: bool = False) -> dict[str, str]:
    """What a bundle built now needs: ``{"python": ..., "torch": ..., ...}`` (kept in its manifest);
    with a pair model, LightGBM too."""
    return {"python": MINIMUM_PYTHON, **MINIMUM_VERSIONS, **(PAIR_MODEL_MINIMUMS if pair_model else {})}


def environment_cell(
    wheels: Sequence[str] = (),
    needs: Mapping[str, str] | None = None,
    known: Mapping[str, str] | None = None,
) -> str:
    """The notebook's first code cell, self-contained (it runs before the bundle is imported);
    ``needs`` (the versions tested) as ``requirements()`` gives it, ``known`` the versions below
    which the code cannot run (``KNOWN_MINIMUMS``)."""
    tested = dict(needs or requirements())
    known = dict(KNOWN_MINIMUMS if known is None else known)
    return CELL.format(tested=tested, known=known, optional=OPTIONAL, wheels=list(wheels))
