"""The optimize-ensemble report: a table a person reads and the plots they look at.

``<output>/ensembles/NAME/`` gets ``report.md`` (the CV F1 of every objective, the held-out
estimate and its gap, each member alone, each rule added in turn, the thresholds by size) and PNG
plots: F1 against threshold per member, similarity histograms of true and false candidate pairs,
F1 by group size, thresholds against the number of rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shopee.constants import TEST_ROWS, K  # noqa: E402
from shopee.ensemble_file import scored_objectives  # noqa: E402
from shopee.metrics import group_sizes  # noqa: E402
from shopee.size_curve import describe_f1_at, f1_at, value_at  # noqa: E402

if TYPE_CHECKING:
    from shopee.ensemble import SearchResult
    from shopee.oof import OOFSet
    from shopee.scoring import Scorer

OBJECTIVE_WORDS = {
    "dense": "validation rows matched among their fold's training rows too (train density)",
    "fold": "within each fold's validation rows",
    "all": "across all OOF rows (different folds' spaces mixed)",
}


def _markdown(ensemble: dict[str, Any]) -> str:
    objectives = scored_objectives(ensemble)
    lines = [
        f"# Ensemble {ensemble['name']}",
        "",
        f"Experiments: {', '.join(f'{e} (folds {f})' for e, f in ensemble['experiments'].items())}; "
        f"{ensemble['data']['oof_rows']} OOF rows from {ensemble['data']['dir']}. Objective: "
        f"`{ensemble['objective']}` ({OBJECTIVE_WORDS[ensemble['objective']]}). "
        f"{ensemble['evaluations']} rules scored in {ensemble['seconds']} s.",
        "",
        "**CV F1: " + ", ".join(f"{ensemble[f'cv_f1_{o}']:.4f} {o}" for o in objectives) + ".**",
        "",
    ]
    at_rows = ensemble.get("cv_f1_at_rows")
    pairs = ensemble.get("pair_model")
    if at_rows:
        lines += [
            f"**{describe_f1_at(at_rows)}.** What predict ships; the figure to compare experiments by.",
            "",
        ]
        if pairs:
            rule_at = f1_at(ensemble.get("size_curve"), at_rows["rows"])
            pair_at = f1_at(pairs.get("size_curve"), at_rows["rows"])
            for label, estimate in (("The thresholds'", rule_at), ("The pair model's", pair_at)):
                if estimate:
                    lines += [f"{label}: {describe_f1_at(estimate)}.", ""]
    if pairs:
        shipped = "the pair model" if pairs.get("shipped", True) else "the thresholds"
        lines += [f"**Shipped: {shipped}** ({pairs.get('why', 'an ensemble older than the decision')}).", ""]
    if ensemble.get("cv_f1_heldout") is not None:
        gap = ensemble["cv_f1"] - ensemble["cv_f1_heldout"]
        folds = ", ".join(f"fold {k} {v:.4f}" for k, v in ensemble["heldout"]["folds"].items())
        lines += [
            f"**Held-out estimate: {ensemble['cv_f1_heldout']:.4f}** (the search run again without each "
            f"fold and scored on it: {folds}); the tuned CV F1 is {gap:+.4f} above it, what tuning on the "
            "same rows adds.",
            "",
        ]
    lines += [
        "## Each member alone (best threshold)",
        "",
        "| member | threshold | " + " | ".join(f"F1 {o}" for o in objectives) + " |",
        "|---|---|" + "---|" * len(objectives),
    ]
    main = ensemble["objective"]
    for name, m in sorted(ensemble["members"].items(), key=lambda kv: -kv[1][main]):
        lines.append(f"| {name} | {m['threshold']} | " + " | ".join(f"{m[o]:.4f}" for o in objectives) + " |")
    lines += [
        "",
        "## Each rule added in turn",
        "",
        "| step | " + " | ".join(f"F1 {o} | precision {o} | recall {o}" for o in objectives) + " |",
        "|---|" + "---|---|---|" * len(objectives),
    ]
    for s in ensemble["steps"]:
        cells = " | ".join(
            f"{s[o]['f1']:.4f} | {s[o]['precision']:.4f} | {s[o]['recall']:.4f}" for o in objectives
        )
        lines.append(f"| {s['step']} | {cells} |")
    pairs = ensemble.get("pair_model")
    if pairs:
        c = pairs["candidates"]
        without = ensemble.get("cv_f1_dense", ensemble["cv_f1"])
        shipped = (
            "predict and the kernel use it"
            if pairs.get("shipped", True)
            else "it is kept as tried: predict and the kernel use the thresholds"
        )
        decision = pairs.get("decision") or {"on": "held-out CV"}
        from shopee.pairwise.model import threshold_fits

        fits = threshold_fits(pairs)
        follows = (
            "Its probability threshold"
            + (" and min2" if fits and "min2" in fits else "")
            + " follow the row count (re-tuned on the nested subsets, fitted in logit against ln rows)"
            if fits
            else "Its probability threshold and min2 are used as tuned"
        )
        lines += [
            "## Pair model (second stage)",
            "",
            f"LightGBM on candidate pairs of the dense sets ({c['candidates']} pairs from validation "
            f"rows, described from that side only; {100 * c['recall']:.1f} % of the true pairs are "
            f"candidates, {100 * c['precision']:.1f} % of the candidates are true), out of fold by outer "
            f"fold; {pairs['rounds']} rounds shipped. Held out: "
            f"{pairs.get('heldout', 'thresholds re-tuned')} on the other folds.",
            "",
            "| rule | CV F1 (dense) | held-out |",
            "|---|---|---|",
            f"| thresholds alone | {without:.4f} | {ensemble.get('cv_f1_heldout') or float('nan'):.4f} |",
            f"| pair model (p >= {pairs['threshold']}, min2 {pairs['min2']}) | {pairs['cv_f1']:.4f} | "
            f"{pairs['cv_f1_heldout']:.4f} |",
            "",
            f"Compared by {pairs.get('why') or decision['on']}: {shipped}. {follows}. "
            "Feature importance (gain), top 20:",
            "",
            "| feature | gain |",
            "|---|---|",
        ]
        lines += [f"| {name} | {gain:.1f} |" for name, gain in list(pairs["importance"].items())[:20]]
        lines.append("")
    curve = ensemble.get("size_curve")
    if curve:
        lines += [
            "",
            "## Thresholds by size",
            "",
            "Re-tuned on nested subsets of the sets' groups, fitted as a + b ln(rows); `predict` evaluates "
            f"the fit at its own row count (within the fitted range widened a little). Last column: the "
            f"hidden test's {TEST_ROWS:,} rows.",
            "",
            "| value | "
            + " | ".join(f"{n} rows" for n in curve["rows"])
            + f" | a + b ln(n) | at {TEST_ROWS:,} |",
            "|---|" + "---|" * (len(curve["rows"]) + 2),
        ]
        for path, values in curve["values"].items():
            c = curve["fit"][path]
            lines.append(
                f"| {path} | "
                + " | ".join(f"{v:g}" for v in values)
                + f" | {c['a']:.3f} {c['b']:+.4f} ln(n) | {value_at(curve, path, TEST_ROWS):g} |"
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
    if curve:
        lines += ["![Thresholds by size](thresholds_by_size.png)", ""]
    for skipped in ensemble.get("skipped", []):
        lines.append(f"* skipped: {skipped}")
    return "\n".join(lines) + "\n"


def _save(fig: plt.Figure, path: Path, legend: plt.Axes | None = None) -> None:
    """Lay out, write (100 dpi) and close one figure, with a small legend on ``legend``."""
    if legend is not None:
        legend.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(result: SearchResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"dense": "-", "fold": "--", "all": ":"}
    for name, alone in result.alone.items():
        curve = alone.get("curve")
        if not curve:
            continue
        color = None
        for objective, style in styles.items():
            if objective in curve:
                (line,) = ax.plot(
                    curve["threshold"],
                    curve[objective],
                    linestyle=style,
                    color=color,
                    label=f"{name} ({objective})",
                )
                color = line.get_color()
    ax.set_xlabel("threshold")
    ax.set_ylabel("F1")
    ax.set_title("F1 of each member alone against its threshold")
    ax.grid(alpha=0.3)
    _save(fig, path, legend=ax)


def _plot_histograms(result: SearchResult, scorer: Scorer, objective: str, path: Path) -> None:
    members = [a["member"] for a in result.alone.values() if a["member"]["type"] != "phash"]
    fig, axes = plt.subplots(max(len(members), 1), 1, figsize=(8, 2.4 * max(len(members), 1)), squeeze=False)
    for ax, member in zip(axes[:, 0], members, strict=False):
        sims, same = [], []
        for universe in scorer.of(objective):
            pairs = scorer.candidates(member, universe)
            if universe.scored is not None:  # pairs from the scored rows only
                pairs = pairs.select(np.isin(pairs.rows, universe.scored))
            sims.append(pairs.sims)
            same.append(universe.labels[pairs.rows] == universe.labels[pairs.cols])
        sims_all, same_all = np.concatenate(sims), np.concatenate(same)
        bins = np.linspace(min(0.0, float(sims_all.min(initial=0))), 1.0, 60)
        ax.hist(sims_all[~same_all], bins=bins, alpha=0.6, label="different products", color="tab:red")
        ax.hist(sims_all[same_all], bins=bins, alpha=0.6, label="same product", color="tab:green")
        ax.axvline(
            member["threshold"], color="black", linestyle=":", label=f"threshold {member['threshold']}"
        )
        ax.set_title(
            f"{member['name']}: similarity of candidate pairs (top 50 per row, {objective} sets)", fontsize=9
        )
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    _save(fig, path)


def _plot_group_sizes(result: SearchResult, labels: np.ndarray, objective: str, path: Path) -> None:
    sizes = group_sizes(labels)  # within the OOF rows: each group lies wholly in one fold
    f1 = result.scores.rows[objective].f1
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
    ax.set_ylabel(f"mean F1 (final rule, {objective})")
    ax.set_title("F1 by group size")
    _save(fig, path)


def _plot_size_curve(curve: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = np.geomspace(min(curve["rows"]) / 2, TEST_ROWS, 60)
    for name, values in curve["values"].items():
        if name.endswith(".max_distance"):
            continue  # bits, another scale
        (line,) = ax.plot(curve["rows"], values, "o", label=name)
        ax.plot(xs, [value_at(curve, name, int(x)) for x in xs], "-", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("rows matched (log)")
    ax.set_ylabel("threshold")
    ax.axvline(TEST_ROWS, color="grey", linestyle=":", label=f"hidden test ({TEST_ROWS:,})")
    ax.set_title("Thresholds re-tuned on subsets (points) and their fit a + b ln(n)")
    ax.grid(alpha=0.3)
    _save(fig, path, legend=ax)


def write_report(
    folder: Path, ensemble: dict[str, Any], result: SearchResult, scorer: Scorer, oof: OOFSet
) -> None:
    """Write ``report.md`` and the PNG plots into ``folder`` (replaced as a whole)."""
    from shopee.atomic import atomic_dir

    objective = ensemble["objective"]
    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "report.md").write_text(_markdown(ensemble), encoding="utf-8")
        _plot_curves(result, tmp / "f1_threshold.png")
        _plot_histograms(result, scorer, objective, tmp / "similarity_hist.png")
        _plot_group_sizes(result, oof.labels, objective, tmp / "f1_by_group_size.png")
        if ensemble.get("size_curve"):
            _plot_size_curve(ensemble["size_curve"], tmp / "thresholds_by_size.png")
