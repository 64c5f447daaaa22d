"""Image augmentation: an albumentations pipeline from the Config's list of transforms."""

from __future__ import annotations

import warnings
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                transforms.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(f"augment[{i}] ({name}): {reason}") from None
        # albumentations only warns about unknown arguments and then ignores them: a typo in a
        # config would silently change nothing.
        for warning in caught:
            if "not valid" in str(warning.message):
                raise ConfigError(f"augment[{i}] ({name}): {warning.message}")
    return A.Compose(transforms) if transforms else None
