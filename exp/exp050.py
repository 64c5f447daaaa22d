"""exp050: 6th place's first model (shopee-product-matching, 2021): Swin-L at 224 px + XLM-R base.

Source: the 6th-place write-up (the diary this project grew from): four fused CNN + BERT models,
each with its embeddings concatenated and one ArcFace head; AdamW with weight decay 0.1, batch 16,
up to 15 epochs. This one: swin_large_patch4_window7_224 (timm's ms_in22k_ft_in1k weights) at
224 px and FacebookAI/xlm-roberta-base, learning rates 4e-5 (image) / 1e-5 (text) / 5e-4 (head),
ArcFace m 0.5, s 32. Published CV F1: 0.877 (their folds, their matching).

Differences, said plainly: they stopped early (patience 3); this file trains the 15 epochs
(--set early_stopping_patience=3 stops as they did). The two pooled features are concatenated and projected to
2,048 (Linear + BN) before the head; their exact projection is not in the write-up. Weights come
from the hub when the machine is online (or --set image_weights / text_weights): see the README.
"""

from shopee import Config, run

CFG = Config(
    image_model="swin_large_patch4_window7_224",
    image_size=224,
    image_pool="avg",
    text_model="FacebookAI/xlm-roberta-base",
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
