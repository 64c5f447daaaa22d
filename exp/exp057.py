"""exp057: 2nd place's image model: NFNet-F0 with CurricularFace and sample weights 1/size^0.4.

Source: the 2nd-place write-up (shopee-product-matching, 2021): NFNet-F0 and ViT/DeiT image models
and IndoBERT / multilingual BERT / paraphrase-XLM text models, each with a CurricularFace head,
samples weighted 1/size^0.4 by their group's size, two-fold GroupKFold.

Differences, said plainly: this file is the NFNet-F0 image model alone (timm's dm_nfnet_f0);
the summary gives no image size, margin, scale or learning rates: 384 px, m 0.5, s 30, 1e-4
(image) / 1e-2 (head), 12 epochs, batch 16 as 8 x 2 accumulated steps. Two folds as published:
its out-of-fold rows do not line up with the five-fold recipes', so it ensembles with them only
through a separate optimize-ensemble run.
"""

from shopee import Config, run

CFG = Config(
    n_folds=2,
    image_model="dm_nfnet_f0",
    image_size=384,
    image_pool="gem",
    text_model="",
    fusion="none",
    neck="bn",
    head="curricularface",
    margin=0.5,
    scale=30.0,
    sample_weight_power=0.4,
    optimizer="adamw",
    weight_decay=1e-4,
    lr_image=1e-4,
    lr_head=1e-2,
    batch_size=8,
    accum_steps=2,
    epochs=12,
)

if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
