"""exp009: ProtoNCE first (a PCL training log), then the margin head. From exp003: one
unsupervised stage of instance contrast (two dropout views of each title) plus prototype
contrast against k-means clusters of the current embeddings, re-clustered every epoch with every
cluster's size held within [2/3, 4/3] of the mean (one cluster per training group on average),
at a tenth of the learning rate; then exp003's ArcFace training for the remaining epochs.
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
    stages=[
        {"name": "protonce", "epochs": 1, "train": ["text", "neck"], "loss": "protonce", "lr_scale": 0.1},
        {"name": "margin head", "epochs": 5, "train": ["all"]},
    ],
    proto_temperature=0.1,
    batch_size=32,
    lr_text=1e-4,
    lr_head=3e-3,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
