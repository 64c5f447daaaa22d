"""exp054: 6th place's fourth model: EfficientNet-B3 at 560 px + BERT base (English, uncased).

Source: the 6th-place write-up (as exp050): exp053's recipe with google-bert/bert-base-uncased as
the text model. Published CV F1: 0.873.

Differences, as exp053: batch 16 as 8 x 2 accumulated steps, 15 epochs (early stopping: --set
early_stopping_patience=3), pooled features projected to 2,048 before the head.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_b3",
    image_size=560,
    image_pool="gem",
    text_model="google-bert/bert-base-uncased",
    text_pool="mean",
    max_len=64,
    fusion="late",
    neck="linear_bn",
    embed_dim=2048,
    head="arcface",
    margin=0.5,
    scale=50.0,
    optimizer="adamw",
    weight_decay=0.1,
    lr_image=2e-4,
    lr_text=5e-5,
    lr_head=2e-4,
    batch_size=8,
    accum_steps=2,
    epochs=15,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
