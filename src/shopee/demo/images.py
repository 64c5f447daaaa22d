"""Rendered product shots and per-posting photos of them.

A product is drawn once (shape by category, family palette, brand, variant text and size label);
each posting photographs it differently: background, crop, scale, rotation, lighting, blur,
watermark or price sticker, frame and JPEG quality.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from shopee.demo.catalog import Product

PRODUCT_CANVAS = 240  # products are drawn on a square transparent canvas of this size


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * factor))) for c in colour)  # type: ignore[return-value]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (20, 20, 20) if luminance > 140 else (250, 250, 250)


def _centered_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int,
    fill: tuple[int, int, int],
    max_width: float,
) -> None:
    while size > 8:
        f = font(size)
        box = draw.textbbox((0, 0), text, font=f)
        if box[2] - box[0] <= max_width:
            break
        size -= 2
    f = font(size)
    box = draw.textbbox((0, 0), text, font=f)
    draw.text((xy[0] - (box[2] - box[0]) / 2, xy[1] - (box[3] - box[1]) / 2), text, font=f, fill=fill)


def _variant_accent(product: Product) -> tuple[int, int, int]:
    """A colour that tells flavours apart on the label (stable per variant name)."""
    code = sum(ord(c) * (i + 1) for i, c in enumerate(product.variant))
    return ((code * 67) % 200 + 40, (code * 131) % 200 + 40, (code * 29) % 200 + 40)


def render_product(product: Product) -> Image.Image:
    """The product on a transparent RGBA canvas; deterministic for a product."""
    s = PRODUCT_CANVAS
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    fam = product.family
    body = product.colour or fam.palette[0]
    label = fam.palette[1]
    accent = _variant_accent(product)
    outline = _shade(body, 0.6)
    shape = fam.category.shape
    # The label box (x0, y0, x1, y1) where the brand, variant and size are written.
    if shape == "can":
        d.rectangle((50, 40, 190, 210), fill=body, outline=outline, width=2)
        d.ellipse((50, 25, 190, 55), fill=_shade(body, 1.2), outline=outline, width=2)
        d.ellipse((50, 195, 190, 225), fill=body, outline=outline, width=2)
        box = (55, 75, 185, 180)
    elif shape == "bottle":
        d.rounded_rectangle((65, 70, 175, 225), radius=25, fill=body, outline=outline, width=2)
        d.rectangle((100, 35, 140, 72), fill=_shade(body, 0.9), outline=outline, width=2)
        d.rectangle((95, 18, 145, 38), fill=accent)
        box = (70, 100, 170, 195)
    elif shape == "pouch":
        d.polygon([(55, 30), (185, 30), (200, 225), (40, 225)], fill=body, outline=outline)
        d.line((58, 48, 182, 48), fill=_shade(body, 0.7), width=3)
        box = (60, 80, 180, 190)
    elif shape == "tube":
        d.polygon([(45, 40), (195, 40), (160, 200), (80, 200)], fill=body, outline=outline)
        d.rectangle((100, 200, 140, 228), fill=accent)
        box = (60, 55, 180, 140)
    elif shape == "box":
        d.polygon([(45, 60), (75, 30), (210, 30), (180, 60)], fill=_shade(body, 1.25))
        d.polygon([(180, 60), (210, 30), (210, 190), (180, 220)], fill=_shade(body, 0.7))
        d.rectangle((45, 60, 180, 220), fill=body, outline=outline, width=2)
        box = (50, 85, 175, 200)
    elif shape == "phone":
        d.rounded_rectangle((70, 15, 170, 225), radius=18, fill=body, outline=outline, width=3)
        d.rounded_rectangle((82, 27, 118, 75), radius=8, fill=_shade(body, 0.5))
        d.ellipse((88, 33, 104, 49), fill=(20, 20, 20))
        d.ellipse((88, 53, 104, 69), fill=(20, 20, 20))
        box = (75, 110, 165, 200)
    elif shape == "cable":
        d.arc((30, 30, 210, 210), start=30, end=330, fill=body, width=12)
        d.rectangle((185, 50, 215, 95), fill=_shade(body, 0.8), outline=outline, width=2)
        d.rectangle((185, 145, 215, 190), fill=accent, outline=outline, width=2)
        box = (70, 80, 170, 160)
    else:  # shirt
        d.polygon(
            [
                (70, 30),
                (170, 30),
                (225, 75),
                (195, 105),
                (175, 90),
                (175, 225),
                (65, 225),
                (65, 90),
                (45, 105),
                (15, 75),
            ],
            fill=body,
            outline=outline,
        )
        d.ellipse((100, 20, 140, 45), fill=_shade(body, 0.7))
        box = (80, 90, 160, 180)
    x0, y0, x1, y1 = box
    if shape not in ("shirt", "cable", "phone"):
        d.rounded_rectangle(box, radius=6, fill=label)
        d.rectangle((x0, y1 - 18, x1, y1), fill=accent)
    width = x1 - x0 - 8
    bg = label if shape not in ("shirt", "cable", "phone") else body
    _centered_text(
        d,
        ((x0 + x1) / 2, y0 + 16),
        fam.brand.upper(),
        24,
        fam.palette[0] if shape not in ("shirt", "cable", "phone") else _text_colour(bg),
        width,
    )
    if fam.line:
        _centered_text(d, ((x0 + x1) / 2, y0 + 38), fam.line, 14, _text_colour(bg), width)
    if not product.colour:
        _centered_text(d, ((x0 + x1) / 2, y0 + 58), product.variant, 15, _text_colour(bg), width)
    if product.size:
        badge = product.size_text
        if product.pack:
            badge += f" x{product.pack}"
        _centered_text(d, ((x0 + x1) / 2, y1 - 9), badge, 14, _text_colour(accent), width)
    elif product.pack:
        _centered_text(d, ((x0 + x1) / 2, y1 - 9), f"{product.pack} pcs", 14, _text_colour(accent), width)
    return img


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    kind = rng.random()
    base = rng.integers(120, 256, size=3)
    if kind < 0.35:  # plain studio colour
        return Image.new("RGB", (size, size), tuple(int(c) for c in base))
    if kind < 0.65:  # vertical gradient
        other = rng.integers(60, 256, size=3)
        t = np.linspace(0, 1, size)[:, None, None]
        arr = (base[None, None, :] * (1 - t) + other[None, None, :] * t).repeat(size, axis=1)
        return Image.fromarray(arr.astype(np.uint8))
    if kind < 0.85:  # table top and wall
        img = Image.new("RGB", (size, size), tuple(int(c) for c in base))
        horizon = int(rng.integers(size // 2, size * 5 // 6))
        ImageDraw.Draw(img).rectangle((0, horizon, size, size), fill=tuple(int(c) for c in base * 0.6))
        return img
    noise = rng.normal(0, 18, size=(size // 8, size // 8, 3)) + base  # blotchy texture
    small = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.BILINEAR)


def photograph(product_img: Image.Image, size: int, rng: np.random.Generator, shop: str) -> Image.Image:
    """One posting's photo of a rendered product (RGB, ``size`` x ``size``)."""
    canvas = _background(size, rng)
    copies = 2 if rng.random() < 0.08 else 1
    for c in range(copies):
        scale = rng.uniform(0.55, 1.0) / copies**0.5
        item = product_img.rotate(float(rng.uniform(-18, 18)), resample=Image.BICUBIC, expand=True)
        px = max(8, int(size * scale))
        item = item.resize((px, px), Image.BILINEAR)
        if rng.random() < 0.1:  # some sellers post mirrored shots
            item = item.transpose(Image.FLIP_LEFT_RIGHT)
        slack = max(1, size - px)
        x = int(rng.integers(0, slack)) if copies == 1 else int(c * slack / copies + rng.integers(0, 10))
        y = int(rng.integers(0, slack))
        canvas.paste(item, (x, y), item)
    canvas = ImageEnhance.Brightness(canvas).enhance(rng.uniform(0.7, 1.25))
    canvas = ImageEnhance.Contrast(canvas).enhance(rng.uniform(0.75, 1.2))
    canvas = ImageEnhance.Color(canvas).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.35:  # crop and zoom
        keep = rng.uniform(0.75, 0.95)
        w = int(size * keep)
        x0, y0 = (int(v) for v in rng.integers(0, size - w + 1, size=2))
        canvas = canvas.crop((x0, y0, x0 + w, y0 + w)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.3:  # shop watermark
        f = font(max(10, size // 14))
        draw.text(
            (int(rng.integers(0, size // 3)), int(rng.integers(size // 2, size - size // 8))),
            shop,
            font=f,
            fill=(255, 255, 255),
        )
    if rng.random() < 0.25:  # price sticker
        r = size // 9
        cx, cy = int(rng.integers(r, size - r)), int(rng.integers(r, size // 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 30, 40))
        price = f"{int(rng.integers(5, 300)) * 1000:,}".replace(",", ".")
        _centered_text(draw, (cx, cy), f"Rp{price}", size // 18, (255, 255, 255), 2 * r - 4)
    if rng.random() < 0.2:  # shop template frame
        width = int(rng.integers(size // 40, size // 14))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.rectangle((0, 0, size - 1, size - 1), outline=colour, width=width)
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.5))))
    return canvas
