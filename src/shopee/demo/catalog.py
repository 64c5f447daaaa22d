"""A synthetic product catalogue: families of sibling products, and seller-written titles for them.

A *family* is a brand's product line in one category (``Lumora Gold Susu Bubuk``); its products
differ only by variant (flavour, scent, colour, phone model ...), size and unit, or pack count.
Siblings are the hard negatives: ``400 gr`` and ``800 gr`` are different products, as on Shopee.
Each posting of a product gets its own title, written the way Indonesian sellers write them:
synonyms, reordering, casing, unit spellings, promo words, typos, compatibility lists, and a few
percent with literal ``\\xNN`` escape text as in the real ``train.csv``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

COLOURS = {
    "Hitam": (30, 30, 34),
    "Putih": (240, 240, 236),
    "Merah": (200, 40, 45),
    "Biru": (40, 90, 200),
    "Hijau": (50, 150, 70),
    "Pink": (240, 140, 180),
    "Kuning": (245, 205, 40),
    "Abu-abu": (140, 140, 145),
    "Navy": (25, 40, 90),
    "Ungu": (120, 60, 160),
    "Coklat": (120, 75, 40),
    "Maroon": (110, 20, 35),
}

PHONE_MODELS = [
    "Samsung A10",
    "Samsung A20",
    "Samsung A30",
    "Samsung A50",
    "Samsung M10",
    "Samsung J2 Prime",
    "Oppo A3s",
    "Oppo A5s",
    "Oppo A37",
    "Oppo F9",
    "Oppo A52",
    "Oppo Reno 4",
    "Vivo Y12",
    "Vivo Y91",
    "Vivo Y20",
    "Vivo V11",
    "Xiaomi Redmi 9",
    "Xiaomi Redmi Note 8",
    "Xiaomi Redmi Note 9",
    "Xiaomi Redmi 5A",
    "Realme 5",
    "Realme C3",
    "Realme C11",
    "iPhone 7",
    "iPhone 8 Plus",
    "iPhone X",
    "iPhone 11",
    "iPhone 12 Pro",
]

# Unit spellings sellers use for the same unit (first one is the canonical form on the package).
UNIT_SPELLINGS = {
    "gr": ["gr", "g", "gram", "grm", "GR", "Gr", "gr"],
    "kg": ["kg", "KG", "Kg", "kilo"],
    "ml": ["ml", "ML", "mL", "ml"],
    "L": ["L", "liter", "ltr", "Lt"],
    "mm": ["mm", "MM", "mm"],
    "m": ["m", "meter", "M"],
    "pcs": ["pcs", "pc", "Pcs", "PCS", "pcs"],
}
# Larger unit -> (smaller unit, factor) for sellers who convert ("1 kg" written "1000 gr").
UNIT_CONVERSIONS = {"kg": ("gr", 1000), "L": ("ml", 1000)}

PROMO_WORDS = [
    "PROMO",
    "MURAH",
    "READY STOCK",
    "ORIGINAL",
    "ORI 100%",
    "COD",
    "BISA COD",
    "Grosir",
    "TERLARIS",
    "Best Seller",
    "Free Ongkir",
    "Hemat",
    "Termurah",
    "Promo Gajian",
    "Flash Sale",
    "Diskon",
    "Asli",
    "Import",
    "Bayar Ditempat",
    "Garansi",
    "Stok Terbatas",
    "New",
    "Hot Item",
    "Big Sale",
    "Paling Laris",
    "Kualitas Terbaik",
    "Harga Grosir",
    "Cuci Gudang",
    "Limited",
    "Official Store",
]
PROMO_WRAPS = ["[{}]", "({})", "{}!!", "**{}**", "{}", "{}", "{}", "{} -"]
EMOJI = ["🔥", "✨", "⭐", "💯", "❤️", "✅", "🎁", "⚡"]

BRAND_SYLLABLES = [
    "lu",
    "mo",
    "ra",
    "ka",
    "vi",
    "sa",
    "ne",
    "to",
    "ri",
    "na",
    "zo",
    "be",
    "ti",
    "ko",
    "ma",
    "shi",
    "do",
    "fe",
    "ga",
    "ha",
    "ji",
    "la",
    "pe",
    "qu",
    "ro",
    "su",
    "ve",
    "wi",
    "xa",
    "yu",
    "ze",
    "bo",
]
LINE_NAMES = ["Gold", "Kids", "Premium", "Plus", "Pro", "Active", "Classic", "Ultra", "Fresh", "Junior"]


@dataclass(frozen=True)
class Category:
    """A product type: what varies between siblings and how sellers name it."""

    key: str
    nouns: tuple[str, ...]  # synonyms, most common first
    shape: str  # how images draw it
    variants: tuple[str, ...]  # flavour / scent / colour / model ...
    sizes: tuple[tuple[float, str], ...] = ()  # (quantity, unit)
    packs: tuple[int, ...] = ()  # pack counts
    pack_word: str = "pcs"
    extras: tuple[str, ...] = ()  # descriptive words sellers add
    colour_variants: bool = False  # variants are colours (drawn as the body colour)
    compat_lists: bool = False  # titles list other compatible models


CATEGORIES: tuple[Category, ...] = (
    Category(
        "milk",
        ("Susu Bubuk", "Susu Formula", "Susu", "Milk Powder"),
        "can",
        ("Vanila", "Coklat", "Madu", "Stroberi", "Original", "Pisang"),
        ((200, "gr"), (400, "gr"), (800, "gr"), (1, "kg")),
        (),
        extras=("Kaleng", "Box", "1-3 Tahun", "3-12 Tahun", "Bayi", "Nutrisi"),
    ),
    Category(
        "coffee",
        ("Kopi Instan", "Kopi Sachet", "Kopi", "Coffee"),
        "pouch",
        ("Latte", "Mocca", "Cappuccino", "Gula Aren", "Éclair", "Café Noir", "Crème Caramel"),
        ((20, "gr"), (25, "gr"), (200, "gr")),
        (5, 10, 20, 30),
        "sachet",
        extras=("3in1", "Renceng", "Kopi Susu", "Instant"),
    ),
    Category(
        "shampoo",
        ("Sampo", "Shampoo", "Shampo"),
        "bottle",
        ("Anti Ketombe", "Lembut Berkilau", "Menthol", "Hijab Clean", "Rambut Rontok", "Aloe Vera"),
        ((70, "ml"), (170, "ml"), (340, "ml"), (680, "ml")),
        extras=("Perawatan Rambut", "Botol", "Refill"),
    ),
    Category(
        "soap",
        ("Sabun Cair", "Body Wash", "Sabun Mandi Cair", "Sabun Mandi"),
        "pouch",
        ("Rose", "Lavender", "Lemon", "Crème Vanille", "Green Tea", "Sakura", "Charcoal"),
        ((250, "ml"), (450, "ml"), (825, "ml")),
        extras=("Pouch", "Refill", "Antibakteri", "Wangi"),
    ),
    Category(
        "toothpaste",
        ("Pasta Gigi", "Odol", "Toothpaste"),
        "tube",
        ("Whitening", "Herbal", "Sensitive", "Cool Mint", "Kids Strawberry", "Charcoal"),
        ((75, "gr"), (120, "gr"), (190, "gr")),
        (1, 2, 3),
        "pcs",
        extras=("Gigi Putih", "Mulut Segar", "Family Pack"),
    ),
    Category(
        "oil",
        ("Minyak Goreng", "Minyak Sawit", "Cooking Oil"),
        "bottle",
        ("Original", "Premium", "Sawit", "Kelapa", "Canola"),
        ((900, "ml"), (1, "L"), (2, "L")),
        (1, 2, 6),
        "pcs",
        extras=("Pouch", "Botol", "Sehat", "Jernih"),
    ),
    Category(
        "mask",
        ("Masker", "Masker Medis", "Masker Earloop", "Face Mask"),
        "box",
        ("Hitam", "Putih", "Biru", "Pink", "Hijau", "Abu-abu"),
        (),
        (10, 25, 50),
        "pcs",
        extras=("3 Ply", "4 Ply", "Earloop", "Kemenkes", "1 Box"),
        colour_variants=True,
    ),
    Category(
        "case",
        ("Case", "Softcase", "Casing HP", "Hardcase", "Silikon Case"),
        "phone",
        tuple(PHONE_MODELS),
        extras=("Anti Crack", "Motif", "Transparan", "Shockproof", "Slim"),
        compat_lists=True,
    ),
    Category(
        "cable",
        ("Kabel Data", "Kabel Charger", "Cable", "Charger Cable"),
        "cable",
        ("Micro USB", "Type C", "Lightning", "Fast Charging Type C"),
        ((1, "m"), (2, "m")),
        (),
        extras=("Fast Charging", "2.4A", "Original", "Nylon", "Braided"),
    ),
    Category(
        "screw",
        ("Baut", "Sekrup", "Baut Mur", "Screw"),
        "box",
        ("Stainless", "Besi", "Hitam", "Galvanis"),
        ((3, "mm"), (4, "mm"), (5, "mm"), (6, "mm"), (8, "mm")),
        (10, 50, 100),
        "pcs",
        extras=("Kepala Bulat", "Drat", "Obeng Plus", "Set"),
    ),
    Category(
        "tumbler",
        ("Botol Minum", "Tumbler", "Botol", "Water Bottle"),
        "bottle",
        ("Hitam", "Putih", "Merah", "Biru", "Pink", "Navy", "Ungu", "Kuning"),
        ((500, "ml"), (750, "ml"), (1000, "ml")),
        extras=("BPA Free", "Anti Bocor", "Stainless", "Motivasi"),
        colour_variants=True,
    ),
    Category(
        "noodle",
        ("Mie Instan", "Mie", "Mi Instan", "Indomie"),
        "pouch",
        ("Ayam Bawang", "Soto", "Rendang", "Kari Ayam", "Goreng Pedas", "Jjang"),
        ((85, "gr"), (90, "gr")),
        (5, 10, 40),
        "pcs",
        extras=("1 Dus", "Renceng", "Halal"),
    ),
    Category(
        "serum",
        ("Serum Wajah", "Face Serum", "Serum"),
        "bottle",
        ("Vitamin C", "Niacinamide", "Retinol", "Hyaluronic", "Brightening", "Acne"),
        ((20, "ml"), (30, "ml")),
        extras=("BPOM", "Skincare", "Glowing", "Wajah Cerah"),
    ),
    Category(
        "tshirt",
        ("Kaos Polos", "Kaos", "T-Shirt", "Baju Kaos"),
        "shirt",
        ("Hitam", "Putih", "Merah", "Navy", "Abu-abu", "Maroon", "Kuning", "Hijau"),
        (),
        (),
        extras=("Cotton Combed 30s", "Unisex", "S M L XL", "Lengan Pendek"),
        colour_variants=True,
    ),
)

VARIANT_SYNONYMS = {
    "Coklat": ("Coklat", "Cokelat", "Choco", "Chocolate"),
    "Vanila": ("Vanila", "Vanilla"),
    "Stroberi": ("Stroberi", "Strawberry"),
    "Mocca": ("Mocca", "Mocha", "Moka"),
    "Abu-abu": ("Abu-abu", "Abu", "Grey"),
    "Hitam": ("Hitam", "Black"),
    "Putih": ("Putih", "White"),
    "Type C": ("Type C", "Tipe C", "USB C"),
    "Micro USB": ("Micro USB", "Micro", "Android"),
    "Lightning": ("Lightning", "iPhone", "Lightning iOS"),
}


# --------------------------------------------------------------------------------------------
# Families and products
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    family_id: int
    category: Category
    brand: str
    line: str  # may be ""
    palette: tuple[tuple[int, int, int], tuple[int, int, int]]  # body, label


@dataclass(frozen=True)
class Product:
    product_id: int
    family: Family
    variant: str
    size: tuple[float, str] | None
    pack: int | None
    compat: tuple[str, ...] = field(default=())  # phone models listed beside the variant

    @property
    def size_text(self) -> str:
        if self.size is None:
            return ""
        return f"{format_quantity(self.size[0])} {self.size[1]}"

    @property
    def colour(self) -> tuple[int, int, int] | None:
        return COLOURS.get(self.variant) if self.family.category.colour_variants else None


def format_quantity(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else f"{q:g}"


def _brand_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        n = int(rng.choice([2, 2, 3]))
        name = "".join(rng.choice(BRAND_SYLLABLES, size=n)).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def make_family(family_id: int, rng: np.random.Generator, brands: set[str]) -> Family:
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    line = str(rng.choice(LINE_NAMES)) if rng.random() < 0.5 else ""
    palette = (_hsv_colour(rng, (0.4, 0.9), (0.5, 0.95)), _hsv_colour(rng, (0.0, 0.3), (0.85, 1.0)))
    return Family(family_id, category, _brand_name(rng, brands), line, palette)


def sibling_products(family: Family, n: int, first_id: int, rng: np.random.Generator) -> list[Product]:
    """Up to ``n`` distinct products of ``family``: the same line in other variants, sizes, packs."""
    cat = family.category
    variants = list(rng.permutation(cat.variants))[: max(1, int(rng.integers(1, 4)))]
    sizes: list = list(cat.sizes) or [None]
    sizes = [sizes[i] for i in rng.permutation(len(sizes))][: int(rng.integers(1, 4))]
    packs: list = list(cat.packs) or [None]
    packs = [packs[i] for i in rng.permutation(len(packs))][: int(rng.integers(1, 3))]
    combos = [(v, s, p) for v in variants for s in sizes for p in packs]
    combos = [combos[i] for i in rng.permutation(len(combos))][:n]
    products = []
    for i, (variant, size, pack) in enumerate(combos):
        compat: tuple[str, ...] = ()
        if cat.compat_lists:
            others = [m for m in PHONE_MODELS if m != variant]
            compat = tuple(rng.choice(others, size=int(rng.integers(2, 7)), replace=False))
        products.append(Product(first_id + i, family, str(variant), size, pack, compat))
    return products


def make_products(n_products: int, rng: np.random.Generator) -> list[Product]:
    """``n_products`` products in families of 1 to 8 siblings."""
    products: list[Product] = []
    brands: set[str] = set()
    family_id = 0
    while len(products) < n_products:
        family = make_family(family_id, rng, brands)
        family_id += 1
        want = min(int(rng.integers(1, 9)), n_products - len(products))
        products.extend(sibling_products(family, want, len(products), rng))
    return products


# --------------------------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TitleStyle:
    """How noisy seller titles are. The defaults calibrate the demo to the real data's baselines."""

    p_copy: float = 0.65  # a posting copies the wording of an earlier listing of its product
    p_brand: float = 0.85
    p_line: float = 0.7
    p_variant: float = 0.85
    p_size: float = 0.8
    p_pack: float = 0.75
    p_promo: float = 0.55
    p_extra: float = 0.6
    p_shuffle: float = 0.35
    p_typo_word: float = 0.04
    p_emoji: float = 0.03
    p_escape: float = 0.4  # of titles holding non-ASCII text, written as literal \xNN escapes
    p_html_amp: float = 0.03


def _spell_unit(unit: str, rng: np.random.Generator) -> str:
    return str(rng.choice(UNIT_SPELLINGS.get(unit, [unit])))


def _size_phrase(size: tuple[float, str], rng: np.random.Generator) -> str:
    q, unit = size
    if unit in UNIT_CONVERSIONS and rng.random() < 0.25:
        unit, factor = UNIT_CONVERSIONS[unit]
        q = q * factor
    sep = "" if rng.random() < 0.5 else " "
    return f"{format_quantity(q)}{sep}{_spell_unit(unit, rng)}"


def _pack_phrase(pack: int, word: str, rng: np.random.Generator) -> str:
    forms = [
        f"isi {pack}",
        f"{pack} {word}",
        f"x{pack}",
        f"({pack} {word})",
        f"isi {pack} {word}",
        f"{pack}{word}",
        f"1 pack isi {pack}",
    ]
    return str(rng.choice(forms))


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:  # swap two letters
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double a letter


def escape_non_ascii(text: str) -> str:
    r"""Write every non-ASCII character as literal UTF-8 escape text (``É`` -> ``\xc3\x89``)."""
    return "".join(c if ord(c) < 128 else "".join(f"\\x{b:02x}" for b in c.encode()) for c in text)


def _casing(text: str, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.2:
        return text.upper()
    if r < 0.3:
        return text.lower()
    if r < 0.45:
        return text.title()
    return text


def make_title(
    product: Product, rng: np.random.Generator, style: TitleStyle | None = None, core_seed: int | None = None
) -> str:
    """One seller's title for ``product``.

    With ``core_seed`` the words and their order come from that seed (sellers copying one
    listing share it) while promo words, casing, typos and emoji still vary per posting.
    """
    style = style or TitleStyle()
    noise = rng
    if core_seed is not None:
        rng = np.random.default_rng(core_seed)
    fam, cat = product.family, product.family.category
    noun = str(rng.choice(cat.nouns[:1] * 2 + cat.nouns))  # the common name more often
    core: list[str] = []
    if rng.random() < style.p_brand:
        core.append(fam.brand.upper() if rng.random() < 0.3 else fam.brand)
    if fam.line and rng.random() < style.p_line:
        core.append(fam.line)
    core.append(noun)
    variant_words = []
    if rng.random() < style.p_variant or cat.colour_variants or cat.compat_lists:
        synonyms = VARIANT_SYNONYMS.get(product.variant, (product.variant,))
        variant_words.append(str(rng.choice(synonyms)))
    if product.compat:
        listed = list(product.compat[: int(rng.integers(0, len(product.compat) + 1))])
        variant_words.extend(listed)
    if product.size and rng.random() < style.p_size:
        variant_words.append(_size_phrase(product.size, rng))
    if product.pack and rng.random() < style.p_pack:
        variant_words.append(_pack_phrase(product.pack, cat.pack_word, rng))
    if rng.random() < style.p_shuffle:
        parts = core + variant_words
        parts = [parts[i] for i in rng.permutation(len(parts))]
    else:
        parts = core + variant_words
    if cat.extras and rng.random() < style.p_extra:
        extras = rng.choice(cat.extras, size=int(rng.integers(1, 3)), replace=False)
        parts.extend(str(e) for e in extras)
    words = " ".join(parts).split(" ")
    rng = noise
    words = [_typo(w, rng) if rng.random() < style.p_typo_word else w for w in words]
    title = _casing(" ".join(words), rng)
    if rng.random() < style.p_promo:
        for _ in range(int(rng.integers(1, 4))):
            promo = str(rng.choice(PROMO_WRAPS)).format(rng.choice(PROMO_WORDS))
            title = f"{promo} {title}" if rng.random() < 0.6 else f"{title} {promo}"
    if rng.random() < style.p_html_amp:
        title = f"{title} {'&amp;' if rng.random() < 0.6 else '&'} {rng.choice(PROMO_WORDS)}"
    if rng.random() < style.p_emoji:
        emoji = str(rng.choice(EMOJI))
        title = f"{emoji} {title}" if rng.random() < 0.5 else f"{title} {emoji}"
    if not title.isascii() and rng.random() < style.p_escape:
        title = escape_non_ascii(title)
    return " ".join(title.split())
