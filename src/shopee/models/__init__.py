"""Models: encoders (timm, Hugging Face), pooling, necks, fusion and margin heads."""

from shopee.models.model import ShopeeModel

__all__ = ["ShopeeModel"]
