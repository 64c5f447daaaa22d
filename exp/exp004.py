"""exp004: multi-output heads. From exp001: separate BatchNorm necks and ArcFace heads for the
image embedding, the text embedding and the late-fused one, losses summed (fused 1.0, image 0.5,
text 0.5), so all three embeddings are trained and each can be a union member in matching.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_lite0",
    image_size=128,
    text_model="all-MiniLM-L6-v2",
    fusion="multi",
    loss_weights={"fused": 1.0, "img": 0.5, "txt": 0.5},
    neck="bn",
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
