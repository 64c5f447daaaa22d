"""The runtime a kernel bundle is expected to take on the hidden test, before it is built.

Kaggle stops a submission after 2 hours. ``estimate_runtime`` puts the bundle's models through
the cost model of the README's "Runtime on Kaggle, on paper" (every figure an estimate): each
model's forward FLOPs per row are measured by ``plan.measure`` (torch's ``FlopCounterMode`` on
the architecture with random weights); models that read identical batches share one pass
(``FoldRecord.loader_key``, as ``predict`` groups them) whose images are decoded once on the CPU
while the GPUs embed, the models of a pass dealt round-robin over the GPUs; then matching, and
a shipped pair model's second stage on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shopee.constants import TEST_ROWS, TFIDF_TEXT_MODEL
from shopee.outputs import FoldRecord
from shopee.plan import CORE_SLOWDOWN, TOKENIZE_MS, _decode_ms

KAGGLE_LIMIT_S = 2 * 3600
# Assumptions (README, "Runtime on Kaggle, on paper"): a T4's effective inference throughput in
# fp16 autocast: 1 TFLOPS for a model with depthwise convolutions (EfficientNet: memory-bound, they
# skip the tensor cores), 4 for the others (transformers, dense convolutions; Swin-L at 224 px then
# embeds about 120 images a second); Kaggle's CPU cores run 1.5x slower than the ones measured
# here and decode on 1.6 effective cores, overlapped with the GPUs.
DEPTHWISE_TFLOPS = 1.0
DENSE_TFLOPS = 4.0
KAGGLE_CORES = 1.6
MODEL_LOAD_S = 3.0  # building a model and loading its fp16 weights
KNN_SEARCH_S = 3.0  # one kNN search over 70,000 x 512 on one GPU
MATCH_CPU_S = 54.7  # matching 70,000 rows besides the kNN searches, measured here (2-core Xeon)
FIXED_S = 138.0  # start, imports, a cold header check of 70,000 images, CUDA init, writing
# The pair model's second stage on 70,000 rows beyond the members' neighbour lists (candidates,
# 52 features, LightGBM's probabilities, matches), measured here on the 2-core Xeon (README, "A
# second stage": bench match --n 70000 --pair-model); linear in the rows (k-bounded candidates).
PAIR_STAGE_S = 33.7


def _forward_seconds(record: FoldRecord, cache: dict[str, float]) -> float:
    """GPU seconds per row of the record's forward pass on one T4 (measured FLOPs, assumed rate)."""
    from shopee.plan import measure

    key = record.config.to_json()
    if key not in cache:
        measured = measure(record.config, record.n_classes, backward=False)
        rate = DEPTHWISE_TFLOPS if measured["depthwise"] else DENSE_TFLOPS
        cache[key] = measured["flops_forward"] / (rate * 1e12)
    return cache[key]


def _knn_searches(params: dict[str, Any]) -> int:
    """kNN searches of the rule: one per embedding member, again after each of its blending stages."""
    members = [m for m in params.get("members", []) if m.get("type") == "embedding"]
    return sum(1 + len(m.get("blend") or []) for m in members)


def estimate_runtime(
    records: Iterable[FoldRecord],
    params: dict[str, Any],
    *,
    rows: int = TEST_ROWS,
    gpus: int = 2,
    tta: str | None = None,
    pair_model: bool = False,
) -> dict[str, Any]:
    """Seconds the notebook is expected to take on ``rows`` test rows with ``gpus`` T4s: per pass
    (decoding, the GPUs' share, tokenizing, loading), matching (with ``pair_model``, the shipped
    pair model's second stage on top of the members' lists) and fixed costs."""
    groups: dict[tuple[Any, ...], list[FoldRecord]] = {}
    for record in records:
        groups.setdefault(record.loader_key, []).append(record)
    cost: dict[str, float] = {}
    passes = []
    for members in groups.values():
        cfg = members[0].config
        decode = (
            rows * _decode_ms(cfg.image_size) * CORE_SLOWDOWN / 1000 / KAGGLE_CORES
            if cfg.image_model
            else 0.0
        )
        tokenized = cfg.text_model and cfg.text_model != TFIDF_TEXT_MODEL
        tokenize = rows * TOKENIZE_MS * CORE_SLOWDOWN / 1000 if tokenized else 0.0
        per_gpu = [0.0] * gpus
        for i, record in enumerate(members):  # dealt round-robin, as predict places them
            views = 2 if tta == "flip" and record.config.image_model else 1
            per_gpu[i % gpus] += rows * views * _forward_seconds(record, cost)
        seconds = max(decode, max(per_gpu)) + tokenize + MODEL_LOAD_S * len(members)
        passes.append(
            {
                "models": [r.name for r in members],
                "decode_s": decode,
                "gpu_s": max(per_gpu),
                "seconds": seconds,
            }
        )
    scale = rows / TEST_ROWS
    matching = _knn_searches(params) * KNN_SEARCH_S * scale**2 + MATCH_CPU_S * CORE_SLOWDOWN * scale
    pair_stage = PAIR_STAGE_S * CORE_SLOWDOWN * scale if pair_model else 0.0
    matching += pair_stage
    embedding = sum(p["seconds"] for p in passes)
    total = embedding + matching + FIXED_S
    return {
        "rows": rows,
        "gpus": gpus,
        "passes": passes,
        "embedding_s": embedding,
        "matching_s": matching,
        "pair_stage_s": pair_stage,
        "fixed_s": FIXED_S,
        "seconds": total,
        "limit_s": KAGGLE_LIMIT_S,
        "fits": total <= KAGGLE_LIMIT_S,
    }


def describe_runtime(estimate: dict[str, Any]) -> str:
    minutes = {k: estimate[k] / 60 for k in ("seconds", "embedding_s", "matching_s", "fixed_s")}
    pairs = estimate.get("pair_stage_s", 0.0)
    pairs = f" with the pair model's {pairs / 60:.1f}" if pairs else ""
    return (
        f"estimated runtime on {estimate['rows']:,} test rows, GPU T4 x{estimate['gpus']}: "
        f"{minutes['seconds']:.1f} min (embedding {minutes['embedding_s']:.1f} min in "
        f"{len(estimate['passes'])} pass(es), matching {minutes['matching_s']:.1f}{pairs}, fixed "
        f"{minutes['fixed_s']:.1f}; an estimate: README, Runtime on Kaggle, on paper); "
        f"Kaggle's limit is {estimate['limit_s'] / 3600:.0f} h"
    )
