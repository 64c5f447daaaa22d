"""Image (timm) and text (Hugging Face) encoders with their pooling.

Both expose ``layer_groups()``: their parameters grouped bottom to top (stem / embeddings first,
last block / layer last). Layer-wise learning-rate decay and "unfreeze the last N blocks" use it.
"""

from __future__ import annotations

import re

import torch
from timm.models import group_parameters
from torch import nn

from shopee.models.pooling import TextPool, build_image_pool
from shopee.pretrained import create_image_backbone, create_text_encoder


def fixed_input_size(name: str) -> int | None:
    """The one image side timm's ``name`` accepts (Swin, ViT: their position tables and windows are
    sized for it), or None when it takes any size. Read from timm's pretrained config, without
    building the model or fetching weights."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size:
        return None
    return int(cfg.input_size[-1])


class ImageEncoder(nn.Module):
    """Any timm model as a feature extractor, then GeM / average / max pooling."""

    def __init__(self, name: str, pretrained: bool, weights: str, pool: str, gem_p: float) -> None:
        super().__init__()
        self.backbone, self.weights_source = create_image_backbone(
            name, pretrained=pretrained, weights=weights, num_classes=0, global_pool=""
        )
        self.pool = build_image_pool(pool, gem_p)
        self.out_dim: int = self.backbone.num_features
        cfg = self.backbone.pretrained_cfg
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std: tuple[float, ...] = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Channels first (N, C, H, W), whatever layout the backbone returns (Swin: N, H, W, C)."""
        features = self.backbone.forward_features(images)
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(images))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        params = dict(self.backbone.named_parameters())
        if hasattr(self.backbone, "group_matcher"):
            groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=False))
            layers = [[params[n] for n in names] for _, names in sorted(groups.items())]
        else:  # one group per top-level child
            layers = [list(child.parameters()) for child in self.backbone.children()]
            layers = [group for group in layers if group]
        layers[-1] = layers[-1] + list(self.pool.parameters())  # GeM's p trains with the top layer
        return layers


_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


class TextEncoder(nn.Module):
    """Any Hugging Face ``AutoModel`` with its tokenizer, then mean / CLS / attentive pooling."""

    def __init__(self, name: str, pretrained: bool, weights: str, pool: str) -> None:
        super().__init__()
        self.model, self.tokenizer, self.source = create_text_encoder(
            name, pretrained=pretrained, weights=weights
        )
        self.out_dim: int = self.model.config.hidden_size
        self.pool = TextPool(pool, self.out_dim)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self.pool.needs_all_layers,
        )
        return out.last_hidden_state, out.hidden_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last, all_layers = self.token_states(input_ids, attention_mask)
        return self.pool(last, attention_mask, all_layers)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Embeddings, then each transformer layer, then anything above (pooler, attentive pool)."""
        indexed: dict[int, list[nn.Parameter]] = {}
        bottom: list[nn.Parameter] = []
        top: list[nn.Parameter] = []
        for name, param in self.model.named_parameters():
            match = _LAYER_INDEX.search(f".{name}")
            if match:
                indexed.setdefault(int(match.group(1)), []).append(param)
            elif "embed" in name:
                bottom.append(param)
            else:
                top.append(param)
        groups = [bottom] + [indexed[i] for i in sorted(indexed)]
        groups[-1] = groups[-1] + top + list(self.pool.parameters())
        return [g for g in groups if g]
