"""exp006: sub-center ArcFace, margin ramp, head first. From exp001: sub-center ArcFace (3
centres per class, robust to odd postings in a group); the margin ramps from 0.2 to 0.5 over the
first 3 epochs; a staged schedule trains the neck and head alone for one epoch (the encoders
frozen, so the random head does not wreck them) and then everything for five (LP-FT).
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_lite0",
    image_size=128,
    text_model="all-MiniLM-L6-v2",
    fusion="late",
    neck="bn",
    head="subcenter_arcface",
    subcenters=3,
    scale=30.0,
    margin=0.5,
    margin_start=0.2,
    margin_ramp_epochs=3,
    stages=[
        {"name": "head first", "epochs": 1, "train": ["neck", "head"]},
        {"name": "everything", "epochs": 5, "train": ["all"]},
    ],
    batch_size=32,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
