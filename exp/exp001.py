"""exp001: the baseline. Late fusion of EfficientNet-Lite0 (GeM) and all-MiniLM-L6-v2 (mean
pooling): each pooled feature L2-normalized, concatenated, BatchNorm neck, ArcFace head
(s=30, m=0.5). AdamW with separate learning rates for image, text and head; warmup + cosine.
Sized for the demo on 2 CPU cores: 128 px images, 6 epochs, one fold in about 12 minutes.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_lite0",
    image_size=128,
    image_pool="gem",
    text_model="all-MiniLM-L6-v2",
    text_pool="mean",
    max_len=32,
    fusion="late",
    neck="bn",
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
    lr_image=3e-4,
    lr_text=5e-5,
    lr_head=3e-3,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
