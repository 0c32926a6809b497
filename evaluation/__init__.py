"""DAVIS data and J&F scoring, shared by training (validation), the benchmarks and the demo.

Torch-free (numpy, OpenCV, Pillow and the runtime's mask reader): `evaluation.davis` reads the
DAVIS layout, `evaluation.metrics` computes J&F with the official toolkit's semantics and
`evaluation.sequences` runs a segmenter over sequences and scores it.
"""
