"""Benchmarks: commands that measure and print figures (``python -m shopee bench ...``), not tests.

- ``train``: training and embedding throughput, real loader against ready tensors;
- ``embed``: per-item inference costs (JPEG decode, forward passes, GFLOPs, weight loading);
- ``match``: the matching rule's speed and memory on synthetic data at test scale.

Synthetic inputs come from ``shopee.demo.synthetic``. Neither this package nor the demo generator
is copied into a Kaggle bundle.
"""
