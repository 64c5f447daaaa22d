"""exp055: 1st place's image model: ECA-NFNet-L1 with a margin ramped up during training.

Source: the 1st-place write-up (shopee-product-matching, 2021): eca_nfnet_l1 image models (timm's
ra2_in1k weights) trained with ArcFace after BN + L2 on the pooled features (no extra FC), the
margin ramped from 0.2 to 0.8-1.0, a long warm-up, a higher learning rate for the head, gradient
clipping. Their figure: the image model alone 0.70 on the public leaderboard (before
concatenation, min2, full-data retraining, union and blending).

Differences, said plainly: the write-up's summary gives no image size, scale, epochs or learning
rates; this file takes 512 px, s 32, a ramp over 10 of 15 epochs to 0.8, a fifth of the steps of
warm-up, learning rates 1e-4 (image) / 1e-2 (head), batch 16 as 8 x 2 accumulated steps.
"""

from shopee import Config, run

CFG = Config(
    image_model="eca_nfnet_l1",
    image_size=512,
    image_pool="gem",
    text_model="",
    fusion="none",
    neck="bn",
    head="arcface",
    margin_start=0.2,
    margin=0.8,
    margin_ramp_epochs=10,
    scale=32.0,
    optimizer="adamw",
    weight_decay=1e-4,
    lr_image=1e-4,
    lr_head=1e-2,
    warmup=0.2,
    grad_clip=1.0,
    batch_size=8,
    accum_steps=2,
    epochs=15,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
