"""Margin heads for metric learning: ArcFace and relatives.

A head turns an embedding into one logit per training class; cross-entropy on those logits is
the training loss. At match time the head is dropped and only the embeddings are compared, so the
heads exist to shape the embedding space: the margin pushes each embedding closer (in angle) to
its own class centre than plain softmax would.

All heads L2-normalize embeddings and class centres and compute in float32, also under mixed
precision: the margin arithmetic (``cos(theta + m)``, ``sqrt(1 - cos^2)``) near ``cos = +-1`` is
too coarse in float16/bfloat16, and the scaled logits (scale ~30) amplify that error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shopee.constants import HEADS

# sqrt(1 - cos^2) has an infinite derivative at |cos| = 1; clamping keeps gradients finite there
# (exact |cos| = 1 falls below the clamp and so gets zero gradient instead of NaN).
_MIN_SIN_SQUARED = 1e-12


def _arc_margin(target_cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """``cos(theta + m)`` per row, with the insightface fallback where ``theta + m > pi``.

    Past ``theta = pi - m`` the function ``cos(theta + m)`` starts to rise again, so a worse
    embedding would get a larger target logit. There the usual fallback ``cos(theta) - m*sin(m)``
    is used instead (a CosFace-like penalty, still decreasing in theta). ``th = cos(pi - m)`` and
    ``mm = sin(pi - m) * m`` depend on the margin, so with per-class margins they are per row.
    """
    sin_theta = torch.sqrt((1.0 - target_cos * target_cos).clamp(min=_MIN_SIN_SQUARED))
    cos_theta_plus_m = target_cos * torch.cos(margins) - sin_theta * torch.sin(margins)
    threshold = torch.cos(math.pi - margins)
    fallback = target_cos - torch.sin(math.pi - margins) * margins
    return torch.where(target_cos > threshold, cos_theta_plus_m, fallback)


def _check_margin(margin: float) -> float:
    margin = float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, not {margin}")
    return margin


class MarginHead(nn.Module):
    """Base class: cosine logits against learned class centres, a margin on the target class.

    Subclasses implement :meth:`_logits`; this class handles normalization, float32, the margin
    schedule (:meth:`set_margin`) and per-class margins (:meth:`set_class_margins`).
    """

    def __init__(self, embed_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        if embed_dim < 1 or n_classes < 2:
            raise ValueError(f"need embed_dim >= 1 and n_classes >= 2, not {embed_dim} and {n_classes}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, not {scale}")
        self.embed_dim = int(embed_dim)
        self.n_classes = int(n_classes)
        self.scale = float(scale)
        self.margin = _check_margin(margin)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.embed_dim))
        # Not persistent: derived from the training labels and set again by the training loop, so
        # checkpoints load the same whether or not adaptive margins were on.
        self.register_buffer("class_margins", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, n_classes={self.n_classes}, scale={float(self.scale):.4g}, "
            f"margin={self.margin:.4g}, class_margins={self.class_margins is not None}"
        )

    def set_margin(self, margin: float) -> None:
        """Change the scalar margin; the training loop ramps it up over the first epochs."""
        self.margin = _check_margin(margin)

    def set_class_margins(self, margins: torch.Tensor | None) -> None:
        """Per-class margins, shape ``(n_classes,)``; each row uses its target class's margin.

        While set, they replace the scalar margin. ``None`` goes back to the scalar margin.
        """
        if margins is None:
            self.class_margins = None
            return
        margins = torch.as_tensor(margins).detach().to(device=self.weight.device, dtype=torch.float32)
        if margins.shape != (self.n_classes,):
            raise ValueError(f"class margins must have shape ({self.n_classes},), not {tuple(margins.shape)}")
        if not bool(torch.isfinite(margins).all()) or bool((margins < 0).any()):
            raise ValueError("class margins must be finite and >= 0")
        self.class_margins = margins.clone()

    def _row_margins(self, labels: torch.Tensor) -> torch.Tensor:
        """The margin of each row's target class, float32 on the labels' device."""
        if self.class_margins is None:
            return torch.full(labels.shape, self.margin, dtype=torch.float32, device=labels.device)
        return self.class_margins.to(device=labels.device, dtype=torch.float32)[labels]

    def _check_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"embeddings must have shape (batch, {self.embed_dim}), not {tuple(embeddings.shape)}"
            )

    def _centre_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to every row of ``weight``; float32, to be called with autocast off."""
        unit_embeddings = F.normalize(embeddings.float(), dim=1)
        unit_centres = F.normalize(self.weight.float(), dim=1)
        return F.linear(unit_embeddings, unit_centres)

    def _class_cosine(self, centre_cosine: torch.Tensor) -> torch.Tensor:
        """From cosine per centre to cosine per class (one centre per class here)."""
        return centre_cosine

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, n_classes)`` to the classes, no margin, float32."""
        self._check_embeddings(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # Rounding can put a normalized dot product a hair past +-1, outside acos's domain.
            return self._class_cosine(self._centre_cosine(embeddings)).clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled float32 logits ``(B, n_classes)`` with the margin on each row's target class."""
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
                f"not {tuple(labels.shape)}"
            )
        cosine = self.cosine(embeddings)
        labels = labels.to(device=cosine.device, dtype=torch.long)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._logits(cosine, labels)

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _with_target(self, cosine: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``cosine`` with each row's target entry replaced by ``target`` (exactly, no add/sub)."""
        is_target = F.one_hot(labels, cosine.shape[1]).bool()
        return torch.where(is_target, target.unsqueeze(1), cosine)


def _target_cosine(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return cosine.gather(1, labels.unsqueeze(1)).squeeze(1)


class ArcFace(MarginHead):
    """Additive angular margin (Deng et al. 2019): target logit ``s * cos(theta + m)``.

    Where ``theta + m > pi`` the target logit is ``s * (cos(theta) - m * sin(m))`` instead (the
    insightface fallback, see :func:`_arc_margin`), so the logit keeps falling as theta grows.
    """

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = _arc_margin(_target_cosine(cosine, labels), self._row_margins(labels))
        return self._with_target(cosine, labels, target) * self.scale


class CosFace(MarginHead):
    """Additive cosine margin (Wang et al. 2018): target logit ``s * (cos(theta) - m)``."""

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = _target_cosine(cosine, labels) - self._row_margins(labels)
        return self._with_target(cosine, labels, target) * self.scale


class SubCenterArcFace(MarginHead):
    """ArcFace with ``subcenters`` centres per class (Deng et al. 2020).

    A class's cosine is the max over its sub-centres, so noisy or multi-modal classes (the same
    product photographed differently) need not squeeze into one centre. ``weight`` has shape
    ``(n_classes * subcenters, embed_dim)``; rows ``c * subcenters ... (c + 1) * subcenters - 1``
    belong to class ``c`` (the layout pytorch-metric-learning uses too).
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        scale: float = 30.0,
        margin: float = 0.5,
        subcenters: int = 3,
    ) -> None:
        if subcenters < 1:
            raise ValueError(f"subcenters must be >= 1, not {subcenters}")
        super().__init__(embed_dim, n_classes, scale, margin)
        self.subcenters = int(subcenters)
        # The base class made one centre per class; replace it by the sub-centres.
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.subcenters, self.embed_dim))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, subcenters={self.subcenters}"

    def _class_cosine(self, centre_cosine: torch.Tensor) -> torch.Tensor:
        return centre_cosine.view(-1, self.n_classes, self.subcenters).amax(dim=2)

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = _arc_margin(_target_cosine(cosine, labels), self._row_margins(labels))
        return self._with_target(cosine, labels, target) * self.scale


class CurricularFace(MarginHead):
    """ArcFace target plus adaptive hard negatives (Huang et al. 2020).

    A non-target cosine above the target's ``cos(theta + m)`` is a hard negative and becomes
    ``cos * (t + cos)``: early on ``t`` is ~0 so hard negatives are damped (easy samples first);
    as training progresses ``t`` grows and they are emphasised. ``t`` is a buffer updated in
    training mode as an EMA (momentum 0.01) of the batch's mean target cosine, before use.
    """

    momentum = 0.01

    def __init__(self, embed_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__(embed_dim, n_classes, scale, margin)
        self.register_buffer("t", torch.zeros(()))

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        margins = self._row_margins(labels)
        target_cos = _target_cosine(cosine, labels)
        sin_theta = torch.sqrt((1.0 - target_cos * target_cos).clamp(min=_MIN_SIN_SQUARED))
        cos_theta_plus_m = target_cos * torch.cos(margins) - sin_theta * torch.sin(margins)
        target = _arc_margin(target_cos, margins)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * target_cos.mean())
        t = self.t.to(device=cosine.device, dtype=torch.float32)
        is_hard = cosine > cos_theta_plus_m.unsqueeze(1)  # the target entry is replaced below anyway
        modulated = torch.where(is_hard, cosine * (t + cosine), cosine)
        return self._with_target(modulated, labels, target) * self.scale


class AdaCos(MarginHead):
    """No margin, dynamic scale (Zhang et al. 2019): the scale adapts instead of being tuned.

    ``scale`` is a buffer starting at ``sqrt(2) * log(C - 1)``; in training mode each batch sets
    it (without gradient) to ``log(B_avg) / cos(min(pi/4, theta_med))``, where ``B_avg`` is the
    batch mean of ``sum over non-target classes of exp(scale * cos)`` and ``theta_med`` the median
    target angle. The ``scale`` and ``margin`` arguments, ``set_margin`` and
    ``set_class_margins`` are accepted for a uniform interface but have no effect.
    """

    def __init__(self, embed_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        if n_classes < 3:
            raise ValueError(
                f"AdaCos needs n_classes >= 3 (its initial scale is log(C - 1)), not {n_classes}"
            )
        super().__init__(embed_dim, n_classes, scale, 0.0)
        # A buffer rather than a float: saved with checkpoints, moved with .to(), no host sync.
        del self.scale
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) * math.log(n_classes - 1)))

    def _logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.scale.copy_(self._batch_scale(cosine, labels))
        return cosine * self.scale.to(device=cosine.device, dtype=torch.float32)

    def _batch_scale(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(device=cosine.device, dtype=torch.float32)
        is_target = F.one_hot(labels, cosine.shape[1]).bool()
        scaled = (cosine * scale).masked_fill(is_target, -math.inf)
        # log(mean_i sum_j exp(.)) via logsumexp: exp(scale * cos) summed over classes can overflow.
        log_b_avg = torch.logsumexp(scaled.flatten(), dim=0) - math.log(cosine.shape[0])
        theta_med = torch.acos(_target_cosine(cosine, labels)).median()
        return log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4))


_HEADS: dict[str, type[MarginHead]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "subcenter_arcface": SubCenterArcFace,
    "curricularface": CurricularFace,
    "adacos": AdaCos,
}


def build_head(
    kind: str,
    embed_dim: int,
    n_classes: int,
    scale: float,
    margin: float,
    subcenters: int = 3,
    negatives: int = 5,
    neg_scale: float = 1.0,
) -> nn.Module:
    """The head named by ``kind`` (one of ``HEADS``); ``subcenters`` only for sub-center,
    ``negatives`` and ``neg_scale`` only for the sampled-negative loss."""
    if kind == "neg_sampling":
        from shopee.models.contrastive import SampledNegativeLoss

        return SampledNegativeLoss(negatives, neg_scale)
    if kind not in _HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(HEADS)}")
    if kind == "subcenter_arcface":
        return SubCenterArcFace(embed_dim, n_classes, scale, margin, subcenters=subcenters)
    return _HEADS[kind](embed_dim, n_classes, scale, margin)


def margin_at(epoch: float, final: float, start: float | None, ramp_epochs: int) -> float:
    """Margin for ``epoch``: linear from ``start`` (epoch 0) to ``final`` (epoch ``ramp_epochs``).

    A large margin from the first step can keep a freshly initialised head from converging, hence
    the ramp. ``start=None`` or ``ramp_epochs=0`` means no ramp: always ``final``.
    """
    if ramp_epochs < 0:
        raise ValueError(f"ramp_epochs must be >= 0, not {ramp_epochs}")
    if start is None or ramp_epochs == 0:
        return float(final)
    progress = min(max(epoch / ramp_epochs, 0.0), 1.0)
    return float(start + (final - start) * progress)


def adaptive_margins(class_sizes: np.ndarray | torch.Tensor, m_max: float, m_min: float) -> torch.Tensor:
    """Per-class margins ``(C,)`` float32 that grow as the class gets smaller.

    Small classes have few samples to pull their centre into place, so they get a larger margin
    (Google Landmark Recognition 2020 winners): ``m_c`` proportional to ``n_c ** -0.25``, rescaled
    linearly so the smallest class gets ``m_max`` and the largest ``m_min``. If all classes have the
    same size, all get ``m_max``.
    """
    if isinstance(class_sizes, torch.Tensor):
        sizes = class_sizes.detach().cpu().to(torch.float64)
    else:
        sizes = torch.as_tensor(np.asarray(class_sizes, dtype=np.float64))
    if sizes.dim() != 1 or sizes.numel() == 0:
        raise ValueError(f"class_sizes must be a non-empty 1-D array, not shape {tuple(sizes.shape)}")
    if not bool(torch.isfinite(sizes).all()) or bool((sizes <= 0).any()):
        raise ValueError("class_sizes must all be finite and > 0")
    if m_min > m_max:
        raise ValueError(f"m_min={m_min} must not exceed m_max={m_max}")
    raw = sizes.pow(-0.25)
    low, high = raw.min(), raw.max()
    if high == low:
        return torch.full(sizes.shape, float(m_max), dtype=torch.float32)
    return (m_min + (raw - low) / (high - low) * (m_max - m_min)).to(torch.float32)
