"""Image augmentation: an albumentations pipeline from the Config's list of transforms."""

from __future__ import annotations

from typing import Any

import albumentations as A

from shopee.config import ConfigError


def build_augment(spec: list[dict[str, Any]]) -> A.Compose | None:
    """``[{"name": "HorizontalFlip", "p": 0.5}, ...]`` as an ``A.Compose`` (None when empty)."""
    transforms = []
    for i, item in enumerate(spec):
        kwargs = dict(item)
        name = kwargs.pop("name", None)
        cls = getattr(A, str(name), None)
        if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
            raise ConfigError(f"augment[{i}]: {name!r} is not an albumentations transform")
        try:
            transforms.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(f"augment[{i}] ({name}): {reason}") from None
    return A.Compose(transforms) if transforms else None
