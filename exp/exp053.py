"""exp053: 6th place's third model: EfficientNet-B3 at 560 px + multilingual BERT (uncased).

Source: the 6th-place write-up (as exp050): tf_efficientnet_b3 (timm's ns_jft_in1k weights) at
560 px and google-bert/bert-base-multilingual-uncased, learning rates 2e-4 (image) / 5e-5 (text) /
2e-4 (head), ArcFace m 0.5, s 50, AdamW with weight decay 0.1, batch 16. Published CV F1: 0.877.

Differences: batch 16 is reached as 8 x 2 accumulated steps so that 560 px fits a 16 GB T4 (the
update and the learning rates are those of batch 16); 15 epochs (early stopping: --set
early_stopping_patience=3); pooled features concatenated and projected to 2,048 before the head.
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_b3",
    image_size=560,
    image_pool="gem",
    text_model="google-bert/bert-base-multilingual-uncased",
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
