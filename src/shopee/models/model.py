"""The matching model: encoders, fusion, necks and margin heads, chosen by ``Config`` fields.

``model(batch)`` takes a batch dict (``image``, ``input_ids``, ``attention_mask``, ``label``)
and returns a dict with one embedding per kind (``img``, ``txt``, ``fused``; not normalized) and,
when labels are given, ``loss``.

Fusion:
  * ``none``: one encoder, its neck and head (``img`` or ``txt``).
  * ``late``: L2-normalize the pooled image and text features, concatenate, neck, head (``fused``).
  * ``early``: a small transformer over image tokens (the feature map) and text tokens, read at a
    CLS token, then neck and head (``fused``).
  * ``multi``: separate necks and heads for ``img``, ``txt`` and the late-fused ``fused``; losses
    summed with ``loss_weights``. With ``shared_projection`` image and text are projected to one
    width and share a neck and a head, so both land in one embedding space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shopee.config import Config, embedding_kinds
from shopee.constants import TFIDF_TEXT_MODEL
from shopee.models.encoders import ImageEncoder, TextEncoder
from shopee.models.heads import MarginHead, adaptive_margins, build_head
from shopee.models.necks import build_neck
from shopee.models.tfidf_encoder import TfidfPcaEncoder


class EarlyFusion(nn.Module):
    """A small transformer over [CLS, image tokens, text tokens]; returns the CLS state."""

    def __init__(self, img_dim: int, txt_dim: int, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.img_proj = nn.Linear(img_dim, dim)
        self.txt_proj = nn.Linear(txt_dim, dim)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))  # tells image tokens from text tokens
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.type_embed, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * 2, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, feature_map: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        img = self.img_proj(feature_map.flatten(2).transpose(1, 2)) + self.type_embed[0]
        txt = self.txt_proj(tokens) + self.type_embed[1]
        cls = self.cls.expand(len(img), -1, -1)
        x = torch.cat([cls, img, txt], dim=1)
        keep = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        padding = ~torch.cat([keep[:, :1], keep, mask.bool()], dim=1)
        return self.norm(self.encoder(x, src_key_padding_mask=padding)[:, 0])


class ShopeeModel(nn.Module):
    """``with_heads=False`` builds the model for inference only: no margin heads (the embeddings
    never pass them at match time), so no loss; a slim checkpoint without them loads into it."""

    def __init__(self, cfg: Config, n_classes: int, with_heads: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.with_heads = with_heads
        self.kinds = embedding_kinds(cfg)
        self.image = (
            ImageEncoder(cfg.image_model, cfg.image_pretrained, cfg.image_weights, cfg.image_pool, cfg.gem_p)
            if cfg.image_model
            else None
        )
        if cfg.text_model == TFIDF_TEXT_MODEL:
            self.text = TfidfPcaEncoder(cfg.tfidf_dim, cfg.tfidf_hidden)
        else:
            self.text = (
                TextEncoder(cfg.text_model, cfg.text_pretrained, cfg.text_weights, cfg.text_pool)
                if cfg.text_model
                else None
            )
        self.necks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.early: EarlyFusion | None = None
        img_dim = self.image.out_dim if self.image else 0
        txt_dim = self.text.out_dim if self.text else 0

        def member(kind: str, in_dim: int) -> None:
            neck, width = build_neck(cfg.neck, in_dim, cfg.projection_dim, cfg.dropout)
            self.necks[kind] = neck
            if with_heads:
                self.heads[kind] = build_head(
                    cfg.head,
                    width,
                    n_classes,
                    cfg.scale,
                    cfg.margin,
                    cfg.subcenters,
                    cfg.neg_samples,
                    cfg.neg_scale,
                )

        if cfg.fusion == "none":
            member(self.kinds[0], img_dim or txt_dim)
        elif cfg.fusion == "late":
            member("fused", img_dim + txt_dim)
        elif cfg.fusion == "early":
            self.early = EarlyFusion(
                img_dim, txt_dim, cfg.early_dim, cfg.early_layers, cfg.early_heads, cfg.dropout
            )
            member("fused", cfg.early_dim)
        elif cfg.shared_projection:
            self.projections["img"] = nn.Linear(img_dim, cfg.projection_dim)
            self.projections["txt"] = nn.Linear(txt_dim, cfg.projection_dim)
            member("shared", cfg.projection_dim)
        else:  # multi
            member("img", img_dim)
            member("txt", txt_dim)
            member("fused", img_dim + txt_dim)
        self.loss_weights = {
            kind: (cfg.loss_weights.get(kind, 1.0) if cfg.fusion == "multi" else 1.0) for kind in self.kinds
        }

    # ------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        feature_map = tokens = None
        if self.image is not None:
            feature_map = self.image.feature_map(batch["image"])
            feats["img"] = self.image.pool(feature_map)
        if self.text is not None:
            if "text_features" in batch:  # TF-IDF + PCA features, not tokens
                feats["txt"] = self.text(batch["text_features"])
            else:
                tokens, all_layers = self.text.token_states(batch["input_ids"], batch["attention_mask"])
                feats["txt"] = self.text.pool(tokens, batch["attention_mask"], all_layers)

        out: dict[str, torch.Tensor] = {}
        fusion = self.cfg.fusion
        if fusion == "none":
            kind = self.kinds[0]
            out[kind] = self.necks[kind](feats[kind])
        elif fusion in ("late", "early"):
            out["img"], out["txt"] = feats["img"], feats["txt"]
            if fusion == "late":
                fused_in = torch.cat([F.normalize(feats["img"], dim=1), F.normalize(feats["txt"], dim=1)], 1)
            else:
                fused_in = self.early(feature_map, tokens, batch["attention_mask"])
            out["fused"] = self.necks["fused"](fused_in)
        elif self.cfg.shared_projection:
            for kind in ("img", "txt"):
                out[kind] = self.necks["shared"](self.projections[kind](feats[kind]))
            out["fused"] = F.normalize(out["img"], dim=1) + F.normalize(out["txt"], dim=1)
        else:
            out["img"] = self.necks["img"](feats["img"])
            out["txt"] = self.necks["txt"](feats["txt"])
            fused_in = torch.cat([F.normalize(feats["img"], dim=1), F.normalize(feats["txt"], dim=1)], 1)
            out["fused"] = self.necks["fused"](fused_in)

        if "label" in batch:
            out["loss"] = self.loss(out, batch["label"])
        return out

    def head_for(self, kind: str) -> MarginHead | None:
        if "shared" in self.heads:
            return self.heads["shared"]
        return self.heads[kind] if kind in self.heads else None  # noqa: SIM401 - ModuleDict has no get

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if not self.with_heads:
            raise RuntimeError("this model was built for inference only (with_heads=False): no loss")
        total = None
        for kind in self.kinds:
            head = self.head_for(kind)
            if head is None:  # e.g. pooled features in late fusion: matched, not trained directly
                continue
            if getattr(head, "returns_loss", False):  # a loss over the batch's own embeddings
                term = self.loss_weights[kind] * head(out[kind], labels)
            else:
                term = self.loss_weights[kind] * F.cross_entropy(head(out[kind], labels), labels)
            total = term if total is None else total + term
        assert total is not None
        return total

    # ------------------------------------------------------------------------------------------
    def set_margin(self, margin: float) -> None:
        for head in self.heads.values():
            head.set_margin(margin)

    def set_class_margins(self, sizes: torch.Tensor, factor: float = 1.0) -> None:
        """Class-size-adaptive margins: smaller classes get a larger margin (up to ``margin``).

        ``factor`` scales them all, so a margin ramp applies to adaptive margins too.
        """
        margins = adaptive_margins(sizes, self.cfg.margin, self.cfg.adaptive_margin_min) * factor
        for head in self.heads.values():
            head.set_class_margins(margins)

    def part_modules(self) -> dict[str, list[nn.Module]]:
        """Modules by trainable part: ``image``, ``text``, ``neck`` (fusion too), ``head``."""
        neck: list[nn.Module] = [self.necks, self.projections]
        if self.early is not None:
            neck.append(self.early)
        return {
            "image": [self.image] if self.image is not None else [],
            "text": [self.text] if self.text is not None else [],
            "neck": neck,
            "head": [self.heads],
        }

    def encoder_layers(self, part: str) -> list[list[nn.Parameter]]:
        encoder = self.image if part == "image" else self.text
        return encoder.layer_groups() if encoder is not None else []
