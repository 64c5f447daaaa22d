"""Margin heads: against pytorch-metric-learning where it has the loss, by hand elsewhere.

Expected values come from float64 math on inputs built with known angles, not from running the
heads. Our heads compute in float32, hence tolerances of ~1e-5 relative.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import DoNothingReducer

from shopee.constants import MARGIN_HEADS
from shopee.models.heads import (
    AdaCos,
    ArcFace,
    CosFace,
    CurricularFace,
    MarginHead,
    SubCenterArcFace,
    adaptive_margins,
    build_head,
    margin_at,
)

EMBED_DIM = 16
N_CLASSES = 10


# --------------------------------------------------------------------------------------------
# helpers


def angled_batch(
    labels: torch.Tensor, thetas: list[float] | torch.Tensor, embed_dim: int = EMBED_DIM, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings at a known angle to their class centre, for centres = the first basis vectors.

    Row i is ``cos(theta_i) e_y + sin(theta_i) u_i`` with ``u_i`` a unit vector orthogonal to
    ``e_y``, times a random norm (the heads must normalize). Returns the float32 embeddings and
    the exact float64 cosine to each of the ``N_CLASSES`` basis-vector centres.
    """
    gen = torch.Generator().manual_seed(seed)
    thetas = torch.as_tensor(thetas, dtype=torch.float64)
    other = torch.randn(len(labels), embed_dim, generator=gen, dtype=torch.float64)
    other[torch.arange(len(labels)), labels] = 0.0
    other = F.normalize(other, dim=1)
    unit = (
        torch.cos(thetas)[:, None] * F.one_hot(labels, embed_dim).double()
        + torch.sin(thetas)[:, None] * other
    )
    norms = torch.exp(torch.randn(len(labels), 1, generator=gen, dtype=torch.float64))
    return (unit * norms).float(), unit[:, :N_CLASSES]


def basis_head(head: MarginHead) -> MarginHead:
    """Class centres = basis vectors e_0 .. e_{C-1} (with random norms, to check normalization)."""
    with torch.no_grad():
        head.weight.copy_(torch.eye(head.n_classes, head.embed_dim) * torch.rand(head.n_classes, 1).add(0.5))
    return head


def arc_by_hand(cos_theta: float, m: float) -> float:
    """Target cosine with the ArcFace margin, written from the paper's definition."""
    theta = math.acos(cos_theta)
    if theta + m <= math.pi:
        return math.cos(theta + m)
    return cos_theta - m * math.sin(m)  # insightface: keep the logit decreasing past pi


def expected_logits(
    cos: torch.Tensor, labels: torch.Tensor, target: list[float], scale: float
) -> torch.Tensor:
    out = cos.clone()
    out[torch.arange(len(labels)), labels] = torch.tensor(target, dtype=torch.float64)
    return out * scale


def assert_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=2e-5 * float(expected.abs().max()))


# --------------------------------------------------------------------------------------------
# oracle: pytorch-metric-learning (ArcFaceLoss applies the same theta + m > pi fallback as we do)

PML_CASES = [(30.0, 0.5), (64.0, 0.3), (16.0, 0.8)]


def pml_batch(head: MarginHead, seed: int, centres_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unnormalized embeddings; a third of them point away from their class (theta near pi).

    Sub-centres of one class are set close together, so "away from the class" is away from all of
    them and the fallback regime is reached after the max over sub-centres too.
    """
    gen = torch.Generator().manual_seed(seed)
    n_rows = 48
    centres = torch.randn(N_CLASSES, EMBED_DIM, generator=gen)
    with torch.no_grad():
        head.weight.copy_(
            centres.repeat_interleave(centres_per_class, dim=0)
            + 0.1 * torch.randn(N_CLASSES * centres_per_class, EMBED_DIM, generator=gen)
        )
    labels = torch.randint(0, N_CLASSES, (n_rows,), generator=gen)
    emb = torch.randn(n_rows, EMBED_DIM, generator=gen)
    far = torch.arange(n_rows) % 3 == 0
    emb[far] = -centres[labels[far]] + 0.15 * torch.randn(int(far.sum()), EMBED_DIM, generator=gen)
    emb = emb * torch.exp(torch.randn(n_rows, 1, generator=gen))  # not normalized
    return emb, labels


def make_pml(kind: str, scale: float, margin: float, weight: torch.Tensor, reducer=None):
    kwargs = {"num_classes": N_CLASSES, "embedding_size": EMBED_DIM, "scale": scale}
    if reducer is not None:
        kwargs["reducer"] = reducer
    if kind == "arcface":
        loss = pml_losses.ArcFaceLoss(margin=math.degrees(margin), **kwargs)  # PML takes degrees
    elif kind == "cosface":
        loss = pml_losses.CosFaceLoss(margin=margin, **kwargs)
    else:
        loss = pml_losses.SubCenterArcFaceLoss(
            margin=math.degrees(margin), sub_centers=weight.shape[0] // N_CLASSES, **kwargs
        )
    # PML stores W as (embedding_size, classes); its sub-centre columns are class-major
    # (column c*k + j is sub-centre j of class c), the same as our weight rows.
    with torch.no_grad():
        loss.W.data = weight.detach().t().double().clone()
    return loss


@pytest.mark.parametrize("kind", ["arcface", "cosface", "subcenter_arcface"])
@pytest.mark.parametrize("scale,margin", PML_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pytorch_metric_learning(kind: str, scale: float, margin: float, seed: int) -> None:
    torch.manual_seed(seed)
    head = build_head(kind, EMBED_DIM, N_CLASSES, scale, margin, subcenters=3)
    emb, labels = pml_batch(head, seed, centres_per_class=3 if kind == "subcenter_arcface" else 1)

    # The batch must cover both sides of the fallback threshold theta = pi - m.
    theta = torch.acos(head.cosine(emb)[torch.arange(len(labels)), labels].double())
    assert (theta > math.pi - margin).any() and (theta < math.pi - margin - 0.05).any()

    ours = F.cross_entropy(head(emb, labels).double(), labels, reduction="none")
    per_row = make_pml(kind, scale, margin, head.weight, DoNothingReducer())(emb.double(), labels)
    torch.testing.assert_close(ours, per_row["loss"]["losses"], rtol=1e-5, atol=1e-4)

    mean_loss = F.cross_entropy(head(emb, labels), labels)
    pml_mean = make_pml(kind, scale, margin, head.weight)(emb.double(), labels)
    torch.testing.assert_close(mean_loss.double(), pml_mean, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# hand checks

LABELS = torch.tensor([0, 3, 3, 7, 9, 1])
THETAS = [0.3, 1.2, 1.6, 2.3, 2.8, 3.0]  # last two past pi - 0.5


@pytest.mark.parametrize("cls", [ArcFace, CosFace, SubCenterArcFace])
def test_zero_margin_gives_scaled_cosine(cls: type[MarginHead]) -> None:
    head = cls(EMBED_DIM, N_CLASSES, scale=20.0, margin=0.0)
    emb = torch.randn(12, EMBED_DIM)
    labels = torch.randint(0, N_CLASSES, (12,))
    torch.testing.assert_close(head(emb, labels), 20.0 * head.cosine(emb))


def test_cosine_is_normalized_dot_product() -> None:
    head = basis_head(ArcFace(EMBED_DIM, N_CLASSES))
    emb, cos = angled_batch(LABELS, THETAS)
    assert_logits(head.cosine(emb), cos)


def test_arcface_target_gets_angular_margin_others_unchanged() -> None:
    margin, scale = 0.5, 30.0
    head = basis_head(ArcFace(EMBED_DIM, N_CLASSES, scale=scale, margin=margin))
    emb, cos = angled_batch(LABELS, THETAS)
    target = [arc_by_hand(math.cos(t), margin) for t in THETAS]
    assert_logits(head(emb, LABELS), expected_logits(cos, LABELS, target, scale))
    # below pi - m it is exactly cos(theta + m)
    assert target[0] == pytest.approx(math.cos(0.3 + 0.5))


def test_arcface_fallback_keeps_target_logit_decreasing() -> None:
    head = basis_head(ArcFace(EMBED_DIM, N_CLASSES, scale=1.0, margin=0.5))
    thetas = torch.linspace(0.05, math.pi - 0.05, 200)
    labels = torch.zeros(200, dtype=torch.long)
    emb, _ = angled_batch(labels, thetas)
    target = head(emb, labels)[:, 0]
    assert (target.diff() < 0).all()
    # whereas cos(theta + m) alone turns upwards past theta = pi - m
    assert math.cos(math.pi - 0.05 + 0.5) > math.cos(math.pi)


def test_cosface_subtracts_margin_from_target_only() -> None:
    margin, scale = 0.35, 64.0
    head = basis_head(CosFace(EMBED_DIM, N_CLASSES, scale=scale, margin=margin))
    emb, cos = angled_batch(LABELS, THETAS)
    target = [math.cos(t) - margin for t in THETAS]
    assert_logits(head(emb, LABELS), expected_logits(cos, LABELS, target, scale))


def test_set_margin_changes_output() -> None:
    head = basis_head(ArcFace(EMBED_DIM, N_CLASSES, scale=30.0, margin=0.5))
    emb, cos = angled_batch(LABELS, THETAS)
    before = head(emb, LABELS)
    head.set_margin(0.2)
    after = head(emb, LABELS)
    assert not torch.allclose(before, after)
    target = [arc_by_hand(math.cos(t), 0.2) for t in THETAS]
    assert_logits(after, expected_logits(cos, LABELS, target, 30.0))
    with pytest.raises(ValueError):
        head.set_margin(-0.1)


@pytest.mark.parametrize("cls", [ArcFace, CosFace, SubCenterArcFace, CurricularFace])
def test_class_margins_apply_per_row(cls: type[MarginHead]) -> None:
    # Classes 0 and 1: margins 0.2 and 0.8; theta = pi - 0.45 is below the ArcFace fallback
    # threshold pi - m for the first and above it for the second.
    margins = torch.full((N_CLASSES,), 0.4)
    margins[0], margins[1] = 0.2, 0.8
    labels = torch.tensor([0, 1, 0, 1, 5])
    thetas = [math.pi - 0.45, math.pi - 0.45, 1.0, 1.0, 1.0]
    head = cls(EMBED_DIM, N_CLASSES, scale=10.0, margin=0.5).eval()
    if isinstance(head, SubCenterArcFace):
        with torch.no_grad():  # all three sub-centres of class c on e_c: max cosine = cosine to e_c
            head.weight.copy_(torch.eye(N_CLASSES, EMBED_DIM).repeat_interleave(3, dim=0))
    else:
        basis_head(head)
    emb, cos = angled_batch(labels, thetas)
    head.set_class_margins(margins)
    logits = head(emb, labels)
    row_margin = [0.2, 0.8, 0.2, 0.8, 0.4]
    if cls is CosFace:
        target = [math.cos(t) - m for t, m in zip(thetas, row_margin, strict=True)]
    else:
        target = [arc_by_hand(math.cos(t), m) for t, m in zip(thetas, row_margin, strict=True)]
    if cls is not CosFace:
        assert target[0] == pytest.approx(math.cos(math.pi - 0.25))
        assert target[1] == pytest.approx(math.cos(math.pi - 0.45) - 0.8 * math.sin(0.8))  # fallback
    got = logits[torch.arange(5), labels].double() / 10.0
    torch.testing.assert_close(got, torch.tensor(target, dtype=torch.float64), rtol=1e-5, atol=1e-5)

    head.set_class_margins(None)  # back to the scalar margin
    got = head(emb, labels)[torch.arange(5), labels].double() / 10.0
    if cls is CosFace:
        scalar = [math.cos(t) - 0.5 for t in thetas]
    else:
        scalar = [arc_by_hand(math.cos(t), 0.5) for t in thetas]
    torch.testing.assert_close(got, torch.tensor(scalar, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_class_margins_validated() -> None:
    head = ArcFace(EMBED_DIM, N_CLASSES)
    with pytest.raises(ValueError, match="shape"):
        head.set_class_margins(torch.full((N_CLASSES + 1,), 0.3))
    with pytest.raises(ValueError):
        head.set_class_margins(torch.full((N_CLASSES,), -0.3))
    head.set_class_margins(adaptive_margins(np.arange(1, N_CLASSES + 1), 0.5, 0.2))
    assert "class_margins" not in head.state_dict()  # set again by the training loop, not saved


def test_subcenter_cosine_is_max_over_subcentres() -> None:
    torch.manual_seed(0)
    head = SubCenterArcFace(EMBED_DIM, N_CLASSES, scale=30.0, margin=0.5, subcenters=4)
    assert head.weight.shape == (N_CLASSES * 4, EMBED_DIM)
    emb = torch.randn(20, EMBED_DIM).double()
    labels = torch.randint(0, N_CLASSES, (20,))
    centres = F.normalize(head.weight.detach().double(), dim=1).view(N_CLASSES, 4, EMBED_DIM)
    by_hand = torch.einsum("bd,ckd->bck", F.normalize(emb, dim=1), centres).amax(dim=2)
    torch.testing.assert_close(head.cosine(emb).double(), by_hand, rtol=1e-5, atol=1e-6)
    target = [arc_by_hand(float(by_hand[i, labels[i]]), 0.5) for i in range(20)]
    assert_logits(head(emb, labels), expected_logits(by_hand, labels, target, 30.0))


# --------------------------------------------------------------------------------------------
# CurricularFace


def test_curricularface_t_is_ema_buffer_updated_in_training_only() -> None:
    torch.manual_seed(0)
    head = CurricularFace(EMBED_DIM, N_CLASSES, scale=30.0, margin=0.5)
    assert "t" in dict(head.named_buffers()) and "t" not in dict(head.named_parameters())
    assert float(head.t) == 0.0
    emb = torch.randn(16, EMBED_DIM)
    labels = torch.randint(0, N_CLASSES, (16,))
    target_mean = float(head.cosine(emb).detach()[torch.arange(16), labels].double().mean())

    head.train()
    head(emb, labels)
    assert float(head.t) == pytest.approx(0.01 * target_mean, rel=1e-5)
    head(emb, labels)
    assert float(head.t) == pytest.approx(0.99 * 0.01 * target_mean + 0.01 * target_mean, rel=1e-5)

    head.eval()
    before = head.t.clone()
    head(emb, labels)
    assert torch.equal(head.t, before)
    assert "t" in head.state_dict()


def test_curricularface_modulates_hard_negatives_only() -> None:
    margin, scale, t = 0.5, 30.0, 0.3
    labels = torch.tensor([0, 2, 4, 6, 8, 1, 3, 5])
    thetas = [0.2, 0.3, 0.25, 0.15, 2.0, 2.2, 1.9, 2.9]  # small: easy negatives; large: hard ones
    head = basis_head(CurricularFace(EMBED_DIM, N_CLASSES, scale=scale, margin=margin)).eval()
    head.t.fill_(t)
    emb, cos = angled_batch(labels, thetas, seed=3)

    expected = cos.clone()
    is_target = F.one_hot(labels, N_CLASSES).bool()
    cos_theta_plus_m = torch.cos(torch.tensor(thetas, dtype=torch.float64) + margin)
    hard = (cos > cos_theta_plus_m[:, None]) & ~is_target
    easy = ~hard & ~is_target
    assert hard.sum() >= 10 and easy.sum() >= 10
    expected[hard] = cos[hard] * (t + cos[hard])
    expected[torch.arange(8), labels] = torch.tensor(
        [arc_by_hand(math.cos(x), margin) for x in thetas]
    ).double()
    logits = head(emb, labels)
    assert_logits(logits, expected * scale)
    torch.testing.assert_close(logits[easy].double(), scale * cos[easy], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------
# AdaCos


def test_adacos_initial_scale_and_no_margin() -> None:
    head = AdaCos(EMBED_DIM, N_CLASSES, scale=30.0, margin=0.5).eval()
    s0 = math.sqrt(2) * math.log(N_CLASSES - 1)
    assert float(head.scale) == pytest.approx(s0)
    assert "scale" in head.state_dict()
    emb, labels = torch.randn(9, EMBED_DIM), torch.randint(0, N_CLASSES, (9,))
    out = head(emb, labels)
    torch.testing.assert_close(out, s0 * head.cosine(emb))  # target entries too: no margin
    head.set_margin(0.8)
    torch.testing.assert_close(head(emb, labels), out)
    assert float(head.scale) == pytest.approx(s0)  # eval mode: scale fixed


def test_adacos_scale_updates_from_batch_in_training() -> None:
    torch.manual_seed(0)
    head = AdaCos(EMBED_DIM, N_CLASSES).train()
    s0 = float(head.scale)
    emb, labels = torch.randn(9, EMBED_DIM), torch.randint(0, N_CLASSES, (9,))  # odd: one median
    cos = head.cosine(emb).detach().double().numpy()
    rows = np.arange(9)
    non_target = np.ones_like(cos, dtype=bool)
    non_target[rows, labels.numpy()] = False
    b_avg = np.where(non_target, np.exp(s0 * cos), 0.0).sum(axis=1).mean()
    theta_med = np.median(np.arccos(cos[rows, labels.numpy()]))
    s1 = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))

    out = head(emb, labels)
    assert float(head.scale) == pytest.approx(s1, rel=1e-5)
    assert abs(s1 - s0) > 0.1
    torch.testing.assert_close(out.double(), s1 * torch.from_numpy(cos), rtol=1e-5, atol=1e-4)
    assert out.requires_grad and not head.scale.requires_grad


# --------------------------------------------------------------------------------------------
# precision, gradients, construction


def make_head(kind: str) -> MarginHead:
    return build_head(kind, EMBED_DIM, N_CLASSES, scale=30.0, margin=0.5, subcenters=3)


@pytest.mark.parametrize("kind", MARGIN_HEADS)
def test_float32_under_bfloat16_autocast(kind: str) -> None:
    torch.manual_seed(0)
    head = make_head(kind).eval()  # eval: no state updates between the two calls
    emb = torch.randn(12, EMBED_DIM).bfloat16()
    labels = torch.randint(0, N_CLASSES, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(emb, labels)
        cos = head.cosine(emb)
    assert out.dtype == torch.float32 and cos.dtype == torch.float32
    reference = head(emb.float(), labels)  # same bfloat16-rounded values, no autocast
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-5)


def test_float32_output_with_bfloat16_weights() -> None:
    torch.manual_seed(0)
    head = make_head("arcface")
    emb, labels = torch.randn(12, EMBED_DIM), torch.randint(0, N_CLASSES, (12,))
    half = copy.deepcopy(head).to(torch.bfloat16)
    with torch.no_grad():
        head.weight.copy_(half.weight.float())
    out = half(emb.bfloat16(), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, head(emb.bfloat16().float(), labels), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", MARGIN_HEADS)
def test_gradients_reach_weights_and_embeddings(kind: str) -> None:
    torch.manual_seed(0)
    head = make_head(kind).train()
    labels = torch.randint(0, N_CLASSES, (16,))
    emb = torch.randn(16, EMBED_DIM)
    k = 3 if kind == "subcenter_arcface" else 1
    emb[0] = head.weight.detach()[labels[0] * k] * 2.0  # cosine ~1: sqrt(1 - cos^2) edge
    emb.requires_grad_(True)
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    for grad in (head.weight.grad, emb.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_weight_init_is_deterministic() -> None:
    torch.manual_seed(5)
    first = make_head("subcenter_arcface")
    torch.manual_seed(5)
    second = make_head("subcenter_arcface")
    torch.manual_seed(6)
    third = make_head("subcenter_arcface")
    assert torch.equal(first.weight, second.weight)
    assert not torch.equal(first.weight, third.weight)


@pytest.mark.parametrize(
    "kind,cls",
    [
        ("arcface", ArcFace),
        ("cosface", CosFace),
        ("subcenter_arcface", SubCenterArcFace),
        ("curricularface", CurricularFace),
        ("adacos", AdaCos),
    ],
)
def test_build_head(kind: str, cls: type[MarginHead]) -> None:
    head = build_head(kind, EMBED_DIM, N_CLASSES, scale=24.0, margin=0.4, subcenters=5)
    assert type(head) is cls
    assert isinstance(head, MarginHead)
    if cls is SubCenterArcFace:
        assert head.weight.shape == (N_CLASSES * 5, EMBED_DIM)
    else:
        assert head.weight.shape == (N_CLASSES, EMBED_DIM)
    if cls is not AdaCos:
        assert head.scale == 24.0 and head.margin == 0.4


def test_build_head_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"'sphereface'.*arcface.*adacos"):
        build_head("sphereface", EMBED_DIM, N_CLASSES, 30.0, 0.5)


def test_bad_shapes_rejected() -> None:
    head = make_head("arcface")
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(4, EMBED_DIM + 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(4, EMBED_DIM), torch.zeros(5, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# margin schedule and adaptive margins


def test_margin_at_ramp() -> None:
    assert margin_at(0, final=0.5, start=0.1, ramp_epochs=4) == pytest.approx(0.1)
    assert margin_at(1, final=0.5, start=0.1, ramp_epochs=4) == pytest.approx(0.2)
    assert margin_at(2.0, final=0.5, start=0.1, ramp_epochs=4) == pytest.approx(0.3)
    assert margin_at(4, final=0.5, start=0.1, ramp_epochs=4) == pytest.approx(0.5)
    assert margin_at(9, final=0.5, start=0.1, ramp_epochs=4) == pytest.approx(0.5)
    assert margin_at(0, final=0.5, start=None, ramp_epochs=4) == 0.5
    assert margin_at(0, final=0.5, start=0.1, ramp_epochs=0) == 0.5
    with pytest.raises(ValueError):
        margin_at(0, final=0.5, start=0.1, ramp_epochs=-1)


def test_adaptive_margins_endpoints_and_shape() -> None:
    # n**-0.25 for sizes 1, 16, 81 is 1, 1/2, 1/3: rescaled to fractions 1, 1/4, 0 of the range
    margins = adaptive_margins(np.array([16, 1, 81]), m_max=0.6, m_min=0.2)
    assert margins.dtype == torch.float32
    torch.testing.assert_close(margins, torch.tensor([0.3, 0.6, 0.2]))
    from_tensor = adaptive_margins(torch.tensor([16, 1, 81]), m_max=0.6, m_min=0.2)
    torch.testing.assert_close(from_tensor, margins)


def test_adaptive_margins_monotone() -> None:
    sizes = np.random.default_rng(0).integers(2, 60, size=200)
    margins = adaptive_margins(sizes, m_max=0.8, m_min=0.3).numpy()
    order = np.argsort(sizes, kind="stable")
    assert (np.diff(margins[order]) <= 1e-7).all()  # larger class, smaller (or equal) margin
    assert margins[sizes == sizes.min()] == pytest.approx(0.8)
    assert margins[sizes == sizes.max()] == pytest.approx(0.3)


def test_adaptive_margins_equal_sizes_and_invalid() -> None:
    torch.testing.assert_close(adaptive_margins(np.full(5, 7), 0.5, 0.2), torch.full((5,), 0.5))
    with pytest.raises(ValueError):
        adaptive_margins(np.array([3, 0, 2]), 0.5, 0.2)
    with pytest.raises(ValueError):
        adaptive_margins(np.array([3, 1, 2]), 0.2, 0.5)
