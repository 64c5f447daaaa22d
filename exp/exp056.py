"""exp056: 1st place's text model: IndoBERT large with a margin ramped up during training.

Source: the 1st-place write-up (as exp055): text models (xlm-roberta-large/base,
cahya/bert-base-indonesian-1.5G, indobenchmark/indobert-large-p1, bert-base-multilingual) trained
with ArcFace after BN + L2, the text margin ramped from 0.6 to 0.8. Their figure: text alone 0.64
on the public leaderboard.

Differences, said plainly: this file takes indobenchmark/indobert-large-p1 (335M parameters); the
summary gives no learning rates, epochs or scale: 2e-5 (text) / 1e-2 (head), s 32, a ramp over 6
of 10 epochs, a fifth of the steps of warm-up, batch 32, titles to 64 tokens.
"""

from shopee import Config, run

CFG = Config(
    image_model="",
    text_model="indobenchmark/indobert-large-p1",
    text_pool="mean",
    max_len=64,
    fusion="none",
    neck="bn",
    head="arcface",
    margin_start=0.6,
    margin=0.8,
    margin_ramp_epochs=6,
    scale=32.0,
    optimizer="adamw",
    weight_decay=1e-4,
    lr_text=2e-5,
    lr_head=1e-2,
    warmup=0.2,
    grad_clip=1.0,
    batch_size=32,
    epochs=10,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
