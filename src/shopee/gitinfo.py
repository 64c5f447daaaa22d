"""Which code ran: the git commit of a training run and the source state of a kernel build."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(where: Path, *args: str) -> str:
    """Output of ``git ARGS`` run in ``where`` (OSError or SubprocessError when it fails)."""
    return subprocess.run(
        ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=10
    ).stdout


def git_commit(where: Path) -> str:
    """The commit the code ran from (``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        commit = git(where, "rev-parse", "HEAD").strip()
        dirty = git(where, "status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def source_state(package_dir: Path) -> tuple[str, list[str]]:
    """(HEAD commit or ``unknown``, changed or untracked files under ``package_dir``)."""
    try:
        commit = git(package_dir, "rev-parse", "HEAD").strip()
        status = git(package_dir, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "unknown", []
    return commit, [line[3:] for line in status.splitlines() if line.strip()]
