"""J&F scoring and the videos it is scored on, shared by training (validation), the benchmarks
and the demo.

Torch-free (numpy, OpenCV, Pillow and the runtime's DAVIS reader, `runtime.media.davis`):
`evaluation.metrics` computes J&F with the official toolkit's semantics,
`evaluation.sequences` runs a segmenter over sequences and scores it, and
`evaluation.datasets` finds, downloads, builds or generates the videos (the repository ships
none).
"""
