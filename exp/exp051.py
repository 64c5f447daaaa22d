"""exp051: the 6th-place diary's exp051_2: BERT + a transformer over image and text tokens.

Source: the 6th-place diary behind this project: exp051_2, a multilingual BERT whose title tokens
and the image model's feature-map tokens go through a shared transformer, read at a CLS token,
then one ArcFace head; CV F1 0.879 alone, 0.9005 for their four-model ensemble.

Differences, said plainly: the diary's summary names neither the image model nor the fusion
transformer's size; this file takes the 6th place's EfficientNet-B3 (exp053's learning rates and
head) at 512 px, and two fusion layers 768 wide with 8 heads. Batch 16 as 8 x 2 accumulated
steps; 15 epochs (--set early_stopping_patience=3 to stop early).
"""

from shopee import Config, run

CFG = Config(
    image_model="tf_efficientnet_b3",
    image_size=512,
    text_model="google-bert/bert-base-multilingual-uncased",
    max_len=64,
    fusion="early",
    early_layers=2,
    early_heads=8,
    early_dim=768,
    neck="linear_bn",
    embed_dim=1024,
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
