"""Constants of the competition and of the pipeline's contracts, each defined here once.

Nothing here imports more than numpy, so every module (the light ``config`` included) can use it.
"""

from __future__ import annotations

import numpy as np

# --- the competition ----------------------------------------------------------------------------
COMPETITION = "shopee-product-matching"  # Kaggle's slug: data folder name and kernel source
K = 51  # a Shopee group has at most 51 postings: neighbours searched per row, itself included
MAX_OTHERS = K - 1  # so a row matches at most 50 others
TEST_ROWS = 70000  # about the hidden test's size: benchmarks and the thresholds-by-size report
# A run on every train row (``--fold full``): trained like a fold, validated on nothing, shipped
# instead of the fold models when a kernel asks for it (``output/<exp>/full/``).
FULL_FOLD = "full"
MODEL_CHOICES = ("folds", FULL_FOLD)  # what predict and a kernel embed with

# --- names a config or a command chooses from -----------------------------------------------------
IMAGE_POLICIES = ("error", "skip", "blank")  # a missing or unreadable image: stop, drop, blank it
# ``skip`` would leave rows out of a submission: predicting accepts only these two.
PREDICT_IMAGE_POLICIES = ("error", "blank")
MARGIN_HEADS = ("arcface", "cosface", "subcenter_arcface", "curricularface", "adacos")
HEADS = (*MARGIN_HEADS, "neg_sampling")  # neg_sampling: the sampled-negative sigmoid loss
EMBEDDING_KINDS = ("fused", "img", "txt")  # in the order reports list them
AMP_MODES = ("auto", "bf16", "fp16", "off")  # mixed precision; see ``shopee.runtime``
TFIDF_TEXT_MODEL = "tfidf_pca"  # text_model: TF-IDF + PCA + MLP titles (models/tfidf_encoder.py)
# How predict makes one embedding of a kind from an experiment's fold models: the mean of their
# embeddings, re-normalized, or each fold's kept side by side (scaled by 1/sqrt(folds)) so that a
# pair's cosine is the mean of the folds' cosines, each in the space its thresholds were tuned in.
FOLD_COMBINATIONS = ("mean_embedding", "mean_cosine")
OBJECTIVES = ("dense", "fold", "all")  # the CV sets a rule is scored on (``shopee.scoring``)
DEFAULT_EMBED_DIM = 512  # width of a projecting neck (linear_bn ...) when ``embed_dim`` is unset

# --- threshold grids (every search and every "F1 at the best threshold" uses these) -------------
EMBEDDING_GRID = np.round(np.arange(0.05, 1.0, 0.01), 2)  # cosine similarity
TFIDF_GRID = np.round(np.arange(0.2, 1.0, 0.01), 2)  # TF-IDF cosine; below 0.2 nothing is kept
PHASH_DISTANCES = (0, 2, 4, 6, 8)  # Hamming distances (bits of 64)
# The rules the search writes search a blended space among each row's 100 nearest in the plain
# space (params' ``blend_candidates``; predict does the same): no search over every row per
# blending threshold tried. ``--exact-blending`` (None) searches every row.
BLEND_CANDIDATES = 100
