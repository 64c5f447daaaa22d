"""exp008: titles as TF-IDF -> PCA -> MLP (the same course project). From exp003: instead of
all-MiniLM-L6-v2, TF-IDF of the fold's training titles, PCA to 128 dimensions (both fitted once
and stored in the fold's checkpoint), then a two-layer MLP (512 wide, LeakyReLU) that trains with
the BatchNorm neck and the ArcFace head. No pretrained weights; a demo fold trains in seconds.
"""

from shopee import Config, run

CFG = Config(
    image_model="",
    text_model="tfidf_pca",
    tfidf_dim=128,
    tfidf_hidden=512,
    fusion="none",
    neck="bn",
    head="arcface",
    scale=30.0,
    margin=0.5,
    epochs=6,
    batch_size=32,
    lr_text=1e-3,
    lr_head=3e-3,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
