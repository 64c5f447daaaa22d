"""exp005: early fusion. From exp001: instead of concatenating pooled features, a one-layer
transformer (256 wide, 4 heads) attends over the image feature-map tokens and the title tokens
together and is read at a CLS token; Linear-BN neck to 512, ArcFace head.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_lite0",
    image_size=128,
    text_model="all-MiniLM-L6-v2",
    fusion="early",
    early_layers=1,
    early_heads=4,
    early_dim=256,
    neck="linear_bn",
    embed_dim=512,
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
