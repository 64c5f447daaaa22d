"""exp003: text only. exp001 without the image encoder: all-MiniLM-L6-v2 with mean pooling,
BatchNorm neck and ArcFace head on titles alone (fusion "none"). The text encoder's learning
rate is doubled (1e-4), since it alone carries the loss. Never opens an image file.
"""

from shopee import Config, run

CFG = Config(
    image_model="",
    text_model="all-MiniLM-L6-v2",
    text_pool="mean",
    max_len=32,
    fusion="none",
    neck="bn",
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
    lr_text=1e-4,
    lr_head=3e-3,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
