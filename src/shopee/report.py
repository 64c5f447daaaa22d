"""The optimize-ensemble report: a table a person reads and the plots they look at.

``<output>/ensembles/NAME/`` gets ``report.md`` (each member alone, each rule added in turn,
F1 / precision / recall both ways) and PNG plots: F1 against threshold per member, similarity
histograms of true and false candidate pairs, F1 by group size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shopee.constants import K  # noqa: E402
from shopee.metrics import group_sizes  # noqa: E402

if TYPE_CHECKING:
    from shopee.ensemble import Scorer, SearchResult
    from shopee.oof import OOFSet


def _markdown(ensemble: dict[str, Any]) -> str:
    lines = [
        f"# Ensemble {ensemble['name']}",
        "",
        f"Experiments: {', '.join(f'{e} (folds {f})' for e, f in ensemble['experiments'].items())}; "
        f"{ensemble['data']['oof_rows']} OOF rows from {ensemble['data']['dir']}. Objective: "
        f"`{ensemble['objective']}`. {ensemble['evaluations']} rules scored in {ensemble['seconds']} s.",
        "",
        f"**CV F1: {ensemble['cv_f1_fold']:.4f} within folds, "
        f"{ensemble['cv_f1_all']:.4f} across all OOF rows.**",
        "",
        "## Each member alone (best threshold)",
        "",
        "| member | threshold | F1 within folds | F1 all rows |",
        "|---|---|---|---|",
    ]
    for name, m in sorted(ensemble["members"].items(), key=lambda kv: -kv[1]["all"]):
        lines.append(f"| {name} | {m['threshold']} | {m['fold']:.4f} | {m['all']:.4f} |")
    lines += [
        "",
        "## Each rule added in turn",
        "",
        "| step | F1 fold | precision fold | recall fold | F1 all | precision all | recall all |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in ensemble["steps"]:
        f, a = s["fold"], s["all"]
        lines.append(
            f"| {s['step']} | {f['f1']:.4f} | {f['precision']:.4f} | {f['recall']:.4f} | "
            f"{a['f1']:.4f} | {a['precision']:.4f} | {a['recall']:.4f} |"
        )
    lines += [
        "",
        "## Plots",
        "",
        "![F1 against threshold](f1_threshold.png)",
        "",
        "![Similarity of true and false pairs](similarity_hist.png)",
        "",
        "![F1 by group size](f1_by_group_size.png)",
        "",
    ]
    for skipped in ensemble.get("skipped", []):
        lines.append(f"* skipped: {skipped}")
    return "\n".join(lines) + "\n"


def _plot_curves(result: SearchResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, alone in result.alone.items():
        curve = alone.get("curve")
        if curve:
            ax.plot(curve["threshold"], curve["all"], label=f"{name} (all rows)")
            ax.plot(
                curve["threshold"],
                curve["fold"],
                linestyle="--",
                color=ax.lines[-1].get_color(),
                label=f"{name} (within folds)",
            )
    ax.set_xlabel("cosine threshold")
    ax.set_ylabel("F1")
    ax.set_title("F1 of each member alone against its threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_histograms(result: SearchResult, scorer: Scorer, path: Path) -> None:
    members = [a["member"] for a in result.alone.values() if a["member"]["type"] != "phash"]
    fig, axes = plt.subplots(len(members), 1, figsize=(8, 2.4 * max(len(members), 1)), squeeze=False)
    labels = scorer.labels
    for ax, member in zip(axes[:, 0], members, strict=True):
        pairs = scorer.candidates(member, "all")
        same = labels[pairs.rows] == labels[pairs.cols]
        bins = np.linspace(min(0.0, float(pairs.sims.min(initial=0))), 1.0, 60)
        ax.hist(pairs.sims[~same], bins=bins, alpha=0.6, label="different products", color="tab:red")
        ax.hist(pairs.sims[same], bins=bins, alpha=0.6, label="same product", color="tab:green")
        ax.axvline(
            member["threshold"], color="black", linestyle=":", label=f"threshold {member['threshold']}"
        )
        ax.set_title(
            f"{member['name']}: similarity of candidate pairs (top 50 per row, all rows)", fontsize=9
        )
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_group_sizes(result: SearchResult, labels: np.ndarray, path: Path) -> None:
    sizes = group_sizes(labels)
    f1 = result.scores.rows_all.f1
    buckets = [(2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, K)]
    names, means, counts = [], [], []
    for lo, hi in buckets:
        mask = (sizes >= lo) & (sizes <= hi)
        if mask.any():
            names.append(str(lo) if lo == hi else f"{lo}-{hi}")
            means.append(float(f1[mask].mean()))
            counts.append(int(mask.sum()))
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, means, color="tab:blue")
    for bar, count in zip(bars, counts, strict=True):
        ax.annotate(
            f"{count} rows",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("group size")
    ax.set_ylabel("mean F1 (final rule, all rows)")
    ax.set_title("F1 by group size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    folder: Path, ensemble: dict[str, Any], result: SearchResult, scorer: Scorer, oof: OOFSet
) -> None:
    """Write ``report.md`` and the PNG plots into ``folder`` (replaced as a whole)."""
    from shopee.atomic import atomic_dir

    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "report.md").write_text(_markdown(ensemble), encoding="utf-8")
        _plot_curves(result, tmp / "f1_threshold.png")
        _plot_histograms(result, scorer, tmp / "similarity_hist.png")
        _plot_group_sizes(result, oof.labels, tmp / "f1_by_group_size.png")
