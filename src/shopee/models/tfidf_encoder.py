"""``text_model="tfidf_pca"``: TF-IDF over the fold's training titles, PCA to ``tfidf_dim`` (128)
dimensions, then a two-layer MLP with LeakyReLU: a title encoder that trains in seconds on a CPU.

TF-IDF and PCA are fitted once, on the training titles of the fold (``fit``), and stay fixed; the
MLP trains. The vocabulary (as UTF-8 JSON bytes), the IDF weights, the PCA mean and components
are buffers of the module, so ``model.safetensors`` carries them: ``predict`` and a Kaggle bundle
rebuild the encoder from the fold's checkpoint alone. The dataset feeds the PCA features
(``features``) instead of tokens; the model never sees raw text.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn

_BUFFERS = ("vocab_bytes", "idf", "pca_mean", "components")


class TfidfPcaEncoder(nn.Module):
    tokenizer = None  # no subword tokens: the dataset asks ``features`` for its inputs
    needs_features = True

    def __init__(self, dim: int = 128, hidden: int = 512) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.register_buffer("vocab_bytes", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("idf", torch.zeros(0))
        self.register_buffer("pca_mean", torch.zeros(0))
        self.register_buffer("components", torch.zeros(0, 0))
        self.mlp = nn.Sequential(
            nn.Linear(self.dim, self.hidden), nn.LeakyReLU(0.1), nn.Linear(self.hidden, self.hidden)
        )
        self.out_dim = self.hidden
        self.source = "TF-IDF + PCA of the fold's training titles"
        self._vocabulary: dict[str, int] | None = None
        self._tfidf: TfidfVectorizer | None = None  # built from the buffers when first needed

    # --- the fixed part ---------------------------------------------------------------------------
    def fit(self, titles: list[str]) -> TfidfPcaEncoder:
        """TF-IDF (word unigrams, vocabulary of the titles) and PCA fitted on ``titles``."""
        tfidf = TfidfVectorizer(lowercase=True, dtype=np.float32)
        x = tfidf.fit_transform([str(t) for t in titles])
        n_components = min(self.dim, x.shape[0] - 1, x.shape[1] - 1)
        pca = PCA(n_components=n_components, svd_solver="arpack", random_state=0).fit(x)
        components = np.zeros((self.dim, x.shape[1]), dtype=np.float32)  # a tiny vocabulary pads with zeros
        components[:n_components] = pca.components_
        vocabulary = {word: int(i) for word, i in tfidf.vocabulary_.items()}
        self._set(vocabulary, tfidf.idf_.astype(np.float32), pca.mean_.astype(np.float32), components)
        return self

    def _set(
        self, vocabulary: dict[str, int], idf: np.ndarray, mean: np.ndarray, components: np.ndarray
    ) -> None:
        device = self.idf.device
        self.vocab_bytes = torch.tensor(
            list(json.dumps(vocabulary, sort_keys=True).encode()), dtype=torch.uint8, device=device
        )
        self.idf = torch.as_tensor(idf, device=device)
        self.pca_mean = torch.as_tensor(mean, device=device)
        self.components = torch.as_tensor(components, device=device)
        self._vocabulary, self._tfidf = vocabulary, None

    @property
    def vocabulary(self) -> dict[str, int]:
        if self._vocabulary is None:
            if not len(self.vocab_bytes):
                raise RuntimeError("the TF-IDF encoder is neither fitted nor loaded from a checkpoint")
            self._vocabulary = json.loads(bytes(self.vocab_bytes.cpu().tolist()).decode())
        return self._vocabulary

    def _vectorizer(self) -> TfidfVectorizer:
        """The fitted TF-IDF, rebuilt from the stored vocabulary and IDF weights."""
        if self._tfidf is None:
            self._tfidf = TfidfVectorizer(lowercase=True, dtype=np.float32, vocabulary=self.vocabulary)
            self._tfidf.idf_ = self.idf.cpu().float().numpy()
        return self._tfidf

    def features(self, titles: list[str]) -> np.ndarray:
        """The PCA features of ``titles`` (``n x dim``, float32), as the fitted TF-IDF sees them."""
        x = self._vectorizer().transform([str(t) for t in titles])
        components = self.components.cpu().float().numpy()
        mean = self.pca_mean.cpu().float().numpy()
        return (np.asarray(x @ components.T) - mean @ components.T).astype(np.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in _BUFFERS:  # a checkpoint's buffers have the shapes of its own vocabulary
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        self._vocabulary = self._tfidf = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the trained part -------------------------------------------------------------------------
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features.float())

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.mlp[0].parameters()), list(self.mlp[2].parameters())]
