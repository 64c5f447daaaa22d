"""The model: forward contract per fusion, losses, pooling, necks, layer groups, optimizer groups,
staged freezing, schedules and margins. Tiny random encoders only (no downloads)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import TINY_BERT_HIDDEN, TINY_BERT_LAYERS
from shopee.config import NECKS, TEXT_POOLS, Config, Stage, embedding_kinds
from shopee.models import ShopeeModel
from shopee.models.encoders import ImageEncoder, TextEncoder
from shopee.models.necks import build_neck
from shopee.models.pooling import GeM, TextPool, build_image_pool, masked_mean
from shopee.optim import build_optimizer, freeze_batchnorm_stats, param_groups, set_trainable, stage_scheduler

IMAGE_ARCH = "test_efficientnet.r160_in1k"  # ~100k parameters, random init
N_CLASSES = 7
MAX_LEN = 8
HIDDEN, N_LAYERS = TINY_BERT_HIDDEN, TINY_BERT_LAYERS  # of the conftest text_dir model
TITLES = ["red shoe", "blue bags", "phone case red blue shoe bag phone case", "bag"]


@pytest.fixture(scope="module")
def tokenizer(text_dir: Path):
    return transformers.AutoTokenizer.from_pretrained(text_dir)


def make_cfg(text_dir: Path, **changes) -> Config:
    base = dict(
        image_model=IMAGE_ARCH,
        image_pretrained=False,
        image_size=32,
        text_model=str(text_dir),
        text_pretrained=False,
        max_len=MAX_LEN,
        early_dim=16,
        early_heads=2,
    )
    base.update(changes)
    if base.get("neck", "bn") != "bn" or base.get("shared_projection"):
        base.setdefault("embed_dim", 16)  # the bn neck keeps its input width: no embed_dim there
    return Config(**base).validate()


def make_batch(tokenizer, n: int = 4, label: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    titles = (TITLES * n)[:n]
    enc = tokenizer(titles, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    batch = {
        "image": torch.randn(n, 3, 32, 32, generator=gen),
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
    }
    if label:
        batch["label"] = torch.tensor([0, 1, 2, 1, 3, 4, 5, 6][:n])
    return batch


CASES = {
    "image-only": dict(fusion="none", text_model=""),
    "text-only": dict(fusion="none", image_model=""),
    "late": dict(fusion="late"),
    "early": dict(fusion="early"),
    "multi": dict(fusion="multi"),
    "multi-shared": dict(fusion="multi", shared_projection=True),
}


def expected_widths(cfg: Config, img: int, txt: int) -> dict[str, int]:
    """Embedding widths with the ``bn`` neck (which keeps its input width)."""
    if cfg.fusion == "none":
        return {"img": img} if cfg.image_model else {"txt": txt}
    if cfg.fusion == "late":
        return {"img": img, "txt": txt, "fused": img + txt}
    if cfg.fusion == "early":
        return {"img": img, "txt": txt, "fused": cfg.early_dim}
    if cfg.shared_projection:
        return dict.fromkeys(("img", "txt", "fused"), cfg.embed_dim)
    return {"img": img, "txt": txt, "fused": img + txt}


def nonzero_grad(params) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


# ------------------------------------------------------------------------------------------------
# forward contract
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_forward_kinds_shapes_loss_and_gradients(text_dir, tokenizer, case):
    cfg = make_cfg(text_dir, **CASES[case])
    torch.manual_seed(0)
    model = ShopeeModel(cfg, n_classes=N_CLASSES).train()
    batch = make_batch(tokenizer)
    out = model(batch)
    kinds = embedding_kinds(cfg)
    assert model.kinds == kinds
    assert set(out) == {*kinds, "loss"}
    img_dim = model.image.out_dim if model.image else 0
    txt_dim = model.text.out_dim if model.text else 0
    for kind, width in expected_widths(cfg, img_dim, txt_dim).items():
        assert out[kind].shape == (4, width), kind
        assert torch.isfinite(out[kind]).all()
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0

    loss.backward()
    for name, head in model.heads.items():
        assert nonzero_grad([head.weight]), f"head {name} got no gradient"
    if model.image is not None:
        stem = model.image.layer_groups()[0]
        assert nonzero_grad(stem), "the image stem got no gradient"
    if model.text is not None:
        embeddings = model.text.model.embeddings.word_embeddings.weight
        assert nonzero_grad([embeddings]), "the text embeddings got no gradient"

    without = model(make_batch(tokenizer, label=False))
    assert "loss" not in without and set(without) == set(kinds)

    model.eval()
    with torch.no_grad():
        one = model(make_batch(tokenizer, n=1, label=False))
    assert set(one) == set(kinds)
    for kind in kinds:
        assert one[kind].shape[0] == 1 and torch.isfinite(one[kind]).all()


@pytest.mark.parametrize("neck", NECKS)
def test_neck_choice_sets_the_fused_width(text_dir, tokenizer, neck):
    cfg = make_cfg(text_dir, fusion="late", neck=neck)
    model = ShopeeModel(cfg, n_classes=N_CLASSES)
    out = model(make_batch(tokenizer))
    in_dim = model.image.out_dim + model.text.out_dim
    assert out["fused"].shape == (4, in_dim if neck == "bn" else cfg.embed_dim)
    assert model.head_for("fused").embed_dim == out["fused"].shape[1]


@pytest.mark.parametrize("pool", TEXT_POOLS)
def test_text_only_model_runs_with_every_text_pool(text_dir, tokenizer, pool):
    model = ShopeeModel(make_cfg(text_dir, fusion="none", image_model="", text_pool=pool), N_CLASSES)
    out = model(make_batch(tokenizer))
    assert out["txt"].shape == (4, HIDDEN) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert nonzero_grad(model.text.model.embeddings.parameters())


@pytest.mark.parametrize("pool", ["gem", "avg", "max"])
def test_image_only_model_runs_with_every_image_pool(text_dir, tokenizer, pool):
    model = ShopeeModel(make_cfg(text_dir, fusion="none", text_model="", image_pool=pool), N_CLASSES)
    out = model(make_batch(tokenizer))
    assert out["img"].shape == (4, model.image.out_dim) and torch.isfinite(out["loss"])


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def per_kind_ce(model: ShopeeModel, out: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    ce = {}
    for kind in model.kinds:
        head = model.head_for(kind)
        if head is not None:
            ce[kind] = F.cross_entropy(head(out[kind], labels), labels)
    return ce


def test_multi_loss_is_the_weighted_sum_of_per_kind_cross_entropies(text_dir, tokenizer):
    weights = {"fused": 1.0, "img": 0.5, "txt": 2.0}
    cfg = make_cfg(text_dir, fusion="multi", loss_weights=weights)
    torch.manual_seed(0)
    model = ShopeeModel(cfg, N_CLASSES).eval()
    batch = make_batch(tokenizer)
    with torch.no_grad():
        out = model(batch)
        ce = per_kind_ce(model, out, batch["label"])
    assert set(ce) == {"img", "txt", "fused"}
    manual = sum(weights[k] * ce[k] for k in ce)
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)

    # The same weights, other loss weights: another loss from the same embeddings.
    other = {"fused": 3.0, "img": 0.0}  # txt left out: weight 1
    model2 = ShopeeModel(dataclasses.replace(cfg, loss_weights=other), N_CLASSES).eval()
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        out2 = model2(batch)
    for kind in ce:
        torch.testing.assert_close(out2[kind], out[kind])
    expected = 3.0 * ce["fused"] + 1.0 * ce["txt"]
    assert out2["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(out2["loss"].item() - out["loss"].item()) > 1e-3


def test_late_fusion_trains_the_fused_head_only(text_dir, tokenizer):
    model = ShopeeModel(make_cfg(text_dir, fusion="late"), N_CLASSES).eval()
    assert model.head_for("img") is None and model.head_for("txt") is None
    batch = make_batch(tokenizer)
    with torch.no_grad():
        out = model(batch)
        ce = per_kind_ce(model, out, batch["label"])
    assert set(ce) == {"fused"}
    assert out["loss"].item() == pytest.approx(ce["fused"].item(), rel=1e-5)


def test_shared_projection_uses_one_neck_and_one_head(text_dir, tokenizer):
    cfg = make_cfg(text_dir, fusion="multi", shared_projection=True)
    model = ShopeeModel(cfg, N_CLASSES).eval()
    assert model.head_for("img") is model.head_for("txt") is model.head_for("fused")
    assert len(model.heads) == 1 and len(model.necks) == 1
    batch = make_batch(tokenizer)
    with torch.no_grad():
        out = model(batch)
        # img and txt are projected to one width and pass the same neck
        img = model.necks["shared"](model.projections["img"](model.image(batch["image"])))
        txt = model.necks["shared"](
            model.projections["txt"](model.text(batch["input_ids"], batch["attention_mask"]))
        )
        ce = per_kind_ce(model, out, batch["label"])
    torch.testing.assert_close(out["img"], img)
    torch.testing.assert_close(out["txt"], txt)
    manual = sum(cfg.loss_weights[k] * ce[k] for k in ce)
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# pooling and necks
# ------------------------------------------------------------------------------------------------
def feature_map() -> torch.Tensor:
    return torch.rand(2, 5, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.1


def test_gem_with_p1_is_average_pooling():
    x = feature_map()
    torch.testing.assert_close(GeM(1.0)(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(build_image_pool("avg")(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(build_image_pool("max")(x), x.amax(dim=(2, 3)))


def test_gem_approaches_max_pooling_as_p_grows():
    x = feature_map()
    avg, mx = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    previous = avg
    for p in (2.0, 8.0, 32.0, 200.0):
        pooled = GeM(p)(x)
        assert bool((pooled >= previous - 1e-5).all()) and bool((pooled <= mx + 1e-5).all())
        previous = pooled
    torch.testing.assert_close(previous, mx, rtol=0.02, atol=0.0)


def test_gem_p_is_learnable():
    pool = GeM(3.0)
    assert isinstance(pool.p, nn.Parameter) and pool.p.requires_grad
    assert any(p is pool.p for p in pool.parameters())
    pool(feature_map()).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs().item() > 0


def token_states() -> tuple[torch.Tensor, torch.Tensor]:
    states = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return states, mask


def test_text_mean_pool_ignores_padded_tokens():
    states, mask = token_states()
    pool = TextPool("mean", 6)
    pooled = pool(states, mask)
    torch.testing.assert_close(pooled[0], states[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], states[1].mean(0))
    changed = states.clone()
    changed[0, 3:] = 1000.0
    torch.testing.assert_close(pool(changed, mask), pooled)


def test_text_cls_pool_returns_token_zero():
    states, mask = token_states()
    torch.testing.assert_close(TextPool("cls", 6)(states, mask), states[:, 0])


def test_text_attention_pool_weights_real_tokens_only_and_sum_to_one():
    torch.manual_seed(0)
    pool = TextPool("attention", 6)
    assert sum(p.numel() for p in pool.parameters()) > 0
    states, mask = token_states()
    # All real tokens equal v: the output is v exactly when their weights sum to 1 and the
    # (very different) padded tokens get no weight.
    v = torch.randn(6)
    equal = states.clone()
    equal[0, :3] = v
    equal[0, 3:] = torch.tensor([500.0, -300.0, 800.0, 1.0, 2.0, -900.0])
    torch.testing.assert_close(pool(equal, mask)[0], v)
    # Changing a padded token changes nothing.
    changed = states.clone()
    changed[0, 4] = 1000.0
    torch.testing.assert_close(pool(changed, mask), pool(states, mask))
    # The output is a convex combination of the real tokens, not just their mean.
    out = pool(states, mask)[1]
    assert not torch.allclose(out, states[1].mean(0), atol=1e-6)
    lo, hi = states[1].amin(0), states[1].amax(0)
    assert bool((out >= lo - 1e-6).all()) and bool((out <= hi + 1e-6).all())


def test_text_mean_last4_pool_needs_all_layers():
    states, mask = token_states()
    pool = TextPool("mean_last4", 6)
    assert pool.needs_all_layers
    assert not TextPool("mean", 6).needs_all_layers
    with pytest.raises(AssertionError):
        pool(states, mask, None)
    layers = tuple(states + i for i in range(6))
    expected = masked_mean(torch.stack(layers[-4:]).mean(0), mask)
    torch.testing.assert_close(pool(states, mask, layers), expected)
    torch.testing.assert_close(expected[0], (states[0, :3] + 3.5).mean(0))


def test_text_encoder_with_mean_last4_asks_for_all_hidden_states(text_dir, tokenizer):
    enc = TextEncoder(str(text_dir), False, "", "mean_last4").eval()
    batch = make_batch(tokenizer)
    with torch.no_grad():
        out = enc(batch["input_ids"], batch["attention_mask"])
        hidden = enc.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
    assert len(hidden) == N_LAYERS + 1
    torch.testing.assert_close(out, masked_mean(torch.stack(hidden[-4:]).mean(0), batch["attention_mask"]))


def test_unknown_pooling_is_an_error():
    with pytest.raises(ValueError, match="nope"):
        build_image_pool("nope")
    with pytest.raises(ValueError, match="nope"):
        TextPool("nope", 4)


@pytest.mark.parametrize("kind", NECKS)
def test_neck_output_width(kind):
    neck, width = build_neck(kind, 24, 10, dropout=0.1)
    assert width == (24 if kind == "bn" else 10)
    out = neck.train()(torch.randn(5, 24))
    assert out.shape == (5, width)
    assert neck.eval()(torch.randn(1, 24)).shape == (1, width)


def test_unknown_neck_is_an_error():
    with pytest.raises(ValueError, match="nope"):
        build_neck("nope", 8, 4)


# ------------------------------------------------------------------------------------------------
# layer groups
# ------------------------------------------------------------------------------------------------
def assert_partition(groups: list[list[nn.Parameter]], module: nn.Module) -> None:
    ids = [id(p) for group in groups for p in group]
    assert all(groups), "an empty layer group"
    assert len(ids) == len(set(ids)), "a parameter in two layer groups"
    assert set(ids) == {id(p) for p in module.parameters()}, "a parameter in no layer group"


def _index(name: str, prefix: str) -> int | None:
    match = re.match(rf"{re.escape(prefix)}\.(\d+)\.", name)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize(
    "arch, stem, head, blocks",
    [
        (IMAGE_ARCH, "backbone.conv_stem.weight", "backbone.conv_head.weight", "backbone.blocks"),
        ("test_resnet.r160_in1k", "backbone.conv1.0.weight", "backbone.layer4.0.conv1.weight", None),
    ],
)
def test_image_layer_groups_partition_bottom_to_top(arch, stem, head, blocks):
    enc = ImageEncoder(arch, False, "", "gem", 3.0)
    groups = enc.layer_groups()
    assert len(groups) >= 3
    assert_partition(groups, enc)
    names = {id(p): n for n, p in enc.named_parameters()}
    group_of = {names[id(p)]: i for i, group in enumerate(groups) for p in group}
    assert group_of[stem] == 0
    assert group_of[head] == len(groups) - 1
    assert group_of["pool.p"] == len(groups) - 1  # GeM's p trains with the top layer
    if blocks:  # deeper blocks never sit in a lower group
        seen = sorted((_index(n, blocks), g) for n, g in group_of.items() if _index(n, blocks) is not None)
        assert [g for _, g in seen] == sorted(g for _, g in seen)


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_text_layer_groups_partition_bottom_to_top(text_dir, pool):
    enc = TextEncoder(str(text_dir), False, "", pool)
    groups = enc.layer_groups()
    assert len(groups) == N_LAYERS + 1
    assert_partition(groups, enc)
    names = {id(p): n for n, p in enc.named_parameters()}
    named = [[names[id(p)] for p in group] for group in groups]
    assert all(n.startswith("model.embeddings.") for n in named[0])
    for i in range(N_LAYERS):
        allowed = (f"model.encoder.layer.{i}.",)
        if i == N_LAYERS - 1:  # the top layer also takes what sits above the layers
            allowed += ("model.pooler.", "pool.")
        assert any(n.startswith(allowed[0]) for n in named[i + 1])
        assert all(n.startswith(allowed) for n in named[i + 1]), named[i + 1]
    top = set(named[-1])
    assert any(n.startswith("model.pooler.") for n in top)
    if pool == "attention":
        assert {n for n in names.values() if n.startswith("pool.")} <= top


# ------------------------------------------------------------------------------------------------
# optimizer groups
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["late", "early", "multi-shared", "image-only", "text-only"])
def test_param_groups_cover_every_parameter_once_with_layer_decay(text_dir, fusion):
    changes = CASES[fusion] if fusion in CASES else dict(fusion=fusion)
    cfg = make_cfg(
        text_dir,
        **changes,
        layer_decay=0.5,
        lr_image=1e-3,
        lr_text=1e-4,
        lr_head=1e-2,
        weight_decay=0.05,
    )
    model = ShopeeModel(cfg, N_CLASSES)
    groups = param_groups(model, cfg)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter in two groups"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}

    by_name = {g["name"]: g for g in groups}
    assert len(by_name) == len(groups)
    for part, lr in (("image", cfg.lr_image), ("text", cfg.lr_text)):
        layers = model.encoder_layers(part)
        n = len(layers)
        assert (n > 0) == (getattr(model, part) is not None)
        for i, layer in enumerate(layers):
            parts = [g for name in (f"{part}.{i}", f"{part}.{i}.no_decay") if (g := by_name.get(name))]
            assert {id(p) for g in parts for p in g["params"]} == {id(p) for p in layer}
            for g in parts:
                assert g["lr"] == pytest.approx(lr * 0.5 ** (n - 1 - i))
                assert g["base_lr"] == g["lr"]
        if n:
            assert by_name[f"{part}.{n - 1}"]["lr"] == pytest.approx(lr)
    for g in groups:
        if g["name"].split(".")[0] in ("neck", "head"):
            assert g["lr"] == pytest.approx(cfg.lr_head)
        if any(p.ndim <= 1 for p in g["params"]):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == cfg.weight_decay
    head_ids = {id(p) for p in model.heads.parameters()}
    assert head_ids <= {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]}
    optimizer = build_optimizer(model, cfg)
    assert len(optimizer.param_groups) == len(groups)


# ------------------------------------------------------------------------------------------------
# staged freezing
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi_model(text_dir) -> ShopeeModel:
    torch.manual_seed(0)
    return ShopeeModel(make_cfg(text_dir, fusion="multi", neck="linear_bn"), N_CLASSES)


def trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def ids(*modules_or_params) -> set[int]:
    out: set[int] = set()
    for item in modules_or_params:
        if isinstance(item, nn.Module):
            out |= {id(p) for p in item.parameters()}
        else:
            out |= {id(p) for p in item}
    return out


def test_set_trainable_stages(multi_model):
    model = multi_model
    image_layers = model.encoder_layers("image")
    text_layers = model.encoder_layers("text")
    heads = ids(model.heads)
    necks = ids(model.necks, model.projections)
    try:
        assert set_trainable(model, Stage(1, ("head",))) == ["head"]
        assert trainable(model) == heads
        set_trainable(model, Stage(1, ("neck", "head")))
        assert trainable(model) == heads | necks
        set_trainable(model, Stage(1, ("image.last2",)))
        assert trainable(model) == ids(*image_layers[-2:])
        assert model.image.pool.p.requires_grad  # GeM p is in the top image group
        assert not any(p.requires_grad for p in image_layers[0])
        set_trainable(model, Stage(1, ("text.last1", "head")))
        assert trainable(model) == ids(text_layers[-1]) | heads
        set_trainable(model, Stage(1, ("image",)))
        assert trainable(model) == ids(model.image)
        set_trainable(model, Stage(1, ("text",)))
        assert trainable(model) == ids(model.text)
        set_trainable(model, Stage(1, ("all",)))
        assert trainable(model) == ids(model)
        # A later stage freezes what an earlier one unfroze.
        set_trainable(model, Stage(1, ("head",)))
        assert trainable(model) == heads
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_freeze_batchnorm_stats_keeps_frozen_statistics(multi_model, tokenizer):
    model = multi_model
    try:
        set_trainable(model, Stage(1, ("image.last1", "head")))
        model.train()
        freeze_batchnorm_stats(model)
        bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        frozen = [m for m in bns if not any(p.requires_grad for p in m.parameters())]
        live = [m for m in bns if all(p.requires_grad for p in m.parameters())]
        assert frozen and live
        assert any(m is model.necks["img"][1] for m in frozen)  # the neck's BN (neck not trained)
        assert all(not m.training for m in frozen)
        assert all(m.training for m in live)
        assert model.heads.training and model.image.backbone.training

        before = {id(m): m.running_mean.clone() for m in bns}
        with torch.no_grad():
            model(make_batch(tokenizer, label=False))
        for m in frozen:
            torch.testing.assert_close(m.running_mean, before[id(m)])
        assert all(not torch.equal(m.running_mean, before[id(m)]) for m in live)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def run_stage(optimizer, stage: Stage, steps: int, warmup: float) -> list[list[float]]:
    """Learning rates of every group before each step and after the last."""
    scheduler = stage_scheduler(optimizer, stage, steps, warmup)
    lrs = [[g["lr"] for g in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    return lrs


def test_stage_scheduler_warmup_then_cosine(multi_model):
    cfg = multi_model.cfg
    optimizer = build_optimizer(multi_model, cfg)
    base = [g["base_lr"] for g in optimizer.param_groups]
    assert len(set(base)) >= 2
    lrs = run_stage(optimizer, Stage(1, ("all",)), steps=20, warmup=0.25)  # 5 warmup steps
    for step in range(6):
        for lr, b in zip(lrs[step], base, strict=True):
            assert lr == pytest.approx(b * step / 5)
    for step in range(5, 20):  # then non-increasing, cosine-shaped
        for now, nxt in zip(lrs[step], lrs[step + 1], strict=True):
            assert nxt <= now + 1e-15
    for lr, b in zip(lrs[12], base, strict=True):  # progress 7/15 of the cosine
        assert lr == pytest.approx(b * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    for lr, b in zip(lrs[-1], base, strict=True):
        assert lr <= 1e-6 * b

    # A second stage at lr_scale 0.1 starts from the base rates again, not from where stage 1 ended.
    lrs2 = run_stage(optimizer, Stage(1, ("head",), lr_scale=0.1), steps=10, warmup=0.2)  # 2 warmup
    for lr, b in zip(lrs2[2], base, strict=True):
        assert lr == pytest.approx(0.1 * b)
    for lr, b in zip(lrs2[1], base, strict=True):
        assert lr == pytest.approx(0.05 * b)
    assert max(max(step) for step in lrs2) == pytest.approx(0.1 * max(base))


def test_stage_scheduler_without_warmup_starts_at_the_peak(multi_model):
    optimizer = build_optimizer(multi_model, multi_model.cfg)
    base = [g["base_lr"] for g in optimizer.param_groups]
    lrs = run_stage(optimizer, Stage(1, ("all",), lr_scale=0.5), steps=4, warmup=0.0)
    for lr, b in zip(lrs[0], base, strict=True):
        assert lr == pytest.approx(0.5 * b)


# ------------------------------------------------------------------------------------------------
# margins
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["multi", "multi-shared", "late"])
def test_set_margin_and_class_margins_reach_every_head(text_dir, tokenizer, case):
    cfg = make_cfg(text_dir, **CASES[case], margin=0.5, adaptive_margin=True, adaptive_margin_min=0.2)
    model = ShopeeModel(cfg, N_CLASSES).eval()
    heads = list(model.heads.values())
    assert heads and all(h.margin == 0.5 for h in heads)
    batch = make_batch(tokenizer)
    with torch.no_grad():
        loss0 = model(batch)["loss"].item()
        model.set_margin(0.1)
        assert all(h.margin == pytest.approx(0.1) for h in heads)
        loss1 = model(batch)["loss"].item()
        assert loss1 != pytest.approx(loss0)

        sizes = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 50.0])
        model.set_class_margins(sizes)
        for h in heads:
            assert h.class_margins is not None and h.class_margins.shape == (N_CLASSES,)
            assert h.class_margins[0].item() == pytest.approx(cfg.margin)  # smallest class
            assert h.class_margins[-1].item() == pytest.approx(cfg.adaptive_margin_min)  # largest
            assert bool((h.class_margins[:-1] >= h.class_margins[1:]).all())
        loss2 = model(batch)["loss"].item()
        assert loss2 != pytest.approx(loss1)
        model.set_class_margins(sizes, factor=0.5)
        for h in heads:
            assert h.class_margins[0].item() == pytest.approx(0.5 * cfg.margin)
