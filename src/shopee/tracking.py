"""Experiment tracking in MLflow, when it is installed (``pip install shopee[tracking]``).

Every fold run logs its resolved config as params, per-epoch metrics (loss, learning rate,
margin, and per embedding kind the CV F1, its threshold and Recall@1/5/10), the git commit, the
data's fingerprint and the output path as tags; ``optimize-ensemble`` logs its objective and
members as params and every CV F1 as metrics. The store is SQLite, ``<output>/mlflow.db``, unless
``MLFLOW_TRACKING_URI`` names another. Only rank 0 of a distributed run logs. Without MLflow
nothing happens: ``python -m shopee runs`` reads the output folder alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM = 500  # MLflow keeps a param value of at most this many characters in every store
_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow allows in a metric name


def metric_name(name: str) -> str:
    """``txt.recall@1`` -> ``txt.recall_at_1``."""
    return _NAME.sub("_", name.replace("@", "_at_"))


def _mlflow():
    try:
        import mlflow
    except ImportError:
        return None
    for name in ("mlflow", "alembic"):  # their INFO lines ("Updating database tables") are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def tracking_uri(output: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(output) / 'mlflow.db').resolve()}"


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:MAX_PARAM]


def end_active(failed: bool) -> None:
    """End the MLflow run a failed command left open (nothing without MLflow or a run)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(status="FAILED" if failed else "FINISHED")


class Tracker:
    """One MLflow run, or nothing (MLflow missing, or not the process that writes)."""

    def __init__(self, mlflow=None) -> None:
        self.mlflow = mlflow

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    @classmethod
    def start(
        cls,
        output: Path,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        enabled: bool = True,
    ) -> Tracker:
        mlflow = _mlflow() if enabled else None
        tracker = cls(mlflow)
        if mlflow is None:
            return tracker
        flat: dict[str, str] = {}
        _flat("", dict(params), flat)
        items = list(flat.items())

        def start() -> None:
            mlflow.set_tracking_uri(tracking_uri(output))
            mlflow.set_experiment(experiment)
            mlflow.start_run(run_name=run_name)
            for first in range(0, len(items), 100):  # MLflow takes at most 100 params per call
                mlflow.log_params(dict(items[first : first + 100]))
            mlflow.set_tags({key: str(value) for key, value in tags.items()})

        tracker._safely("starting a run", start)
        return tracker

    def _safely(self, what: str, call) -> None:
        """Tracking never stops a run: on an error it says so once and stops tracking."""
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any store error (locked, unreachable ...)
            print(
                f"warning: MLflow {what} failed ({type(exc).__name__}: {str(exc)[:160]}); tracking stops",
                file=sys.stderr,
            )
            self.mlflow = None

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        if self.active:
            clean = {
                metric_name(k): float(v) for k, v in values.items() if v is not None and v == v
            }  # no NaN
            self._safely("logging metrics", lambda: self.mlflow.log_metrics(clean, step=step))

    def epoch(self, entry: Mapping[str, Any]) -> None:
        """A training epoch's line of ``metrics.json``."""
        values = {
            "loss": entry["loss"],
            "lr": entry["lr"],
            "margin": entry["margin"],
            "seconds": entry["seconds"],
        }
        for kind, scores in entry["scores"].items():
            values.update({f"{kind}.{name}": value for name, value in scores.items()})
        self.metrics(values, step=entry["epoch"])

    def end(self, failed: bool = False) -> None:
        if self.active:
            mlflow = self.mlflow
            self._safely("ending the run", lambda: mlflow.end_run(status="FAILED" if failed else "FINISHED"))
            self.mlflow = None
