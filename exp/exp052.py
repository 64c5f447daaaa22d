"""exp052: 6th place's second model: Swin-L at 224 px + multilingual BERT (uncased).

Source: the 6th-place write-up (as exp050): the same image model, recipe and head as exp050 with
google-bert/bert-base-multilingual-uncased as the text model. Published CV F1: 0.875.

Differences, as exp050: 15 epochs (early stopping: --set early_stopping_patience=3); pooled
features concatenated and projected to 2,048 before the ArcFace head.
"""

from shopee import Config, run

CFG = Config(
    image_model="swin_large_patch4_window7_224",
    image_size=224,
    image_pool="avg",
    text_model="google-bert/bert-base-multilingual-uncased",
    text_pool="mean",
    max_len=64,
    fusion="late",
    neck="linear_bn",
    embed_dim=2048,
    head="arcface",
    margin=0.5,
    scale=32.0,
    optimizer="adamw",
    weight_decay=0.1,
    lr_image=4e-5,
    lr_text=1e-5,
    lr_head=5e-4,
    batch_size=16,
    epochs=15,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
