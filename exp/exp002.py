"""exp002: image only. exp001 without the text encoder: EfficientNet-Lite0 with GeM pooling,
BatchNorm neck and ArcFace head on the image embedding alone (fusion "none"). Shows what the
photos carry by themselves; never loads a tokenizer.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_lite0",
    image_size=128,
    image_pool="gem",
    text_model="",
    fusion="none",
    neck="bn",
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
    lr_image=3e-4,
    lr_head=3e-3,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
