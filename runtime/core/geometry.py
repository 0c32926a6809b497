"""Where a frame lands in the graphs' fixed (H, W) input, and how masks come back from it.

Graphs are exported for one static size. A frame whose aspect ratio matches it (within
ASPECT_TOLERANCE, e.g. 854x480 into 432x240) is simply resized, as in training. Another aspect
ratio (a 9:16 phone video on 16:9 graphs) is handled by `fit`:

    letterbox  resized to fit inside (H, W) keeping its aspect ratio, centred, the rest padded
               with the normalisation mean (zero after normalisation); objects are kept out of
               the padding, and masks are cropped back out of it (as detection runtimes do).
    stretch    resized to (H, W) whatever the distortion (a 9:16 frame on 16:9 graphs is
               squeezed 3.2x vertically).

The default is the one that kept J&F on 9:16 crops of DAVIS clips (see DEFAULT_FIT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.core.manifest import STRIDE
from runtime.core.resize import onehot, prob_to_labels, resize_frame

FITS = ("letterbox", "stretch")
# letterbox is the more accurate on 9:16 and 1:1 crops (benchmarks/aspect_fit.py; README).
DEFAULT_FIT = "letterbox"
# Two sizes within this relative difference of aspect ratio have "the same aspect ratio": a
# frame is then resized into the graphs without padding, and a mask or a later frame of another
# size is resized to the first frame's instead of being refused.
ASPECT_TOLERANCE = 0.02


def same_aspect(a_hw: tuple[int, int], b_hw: tuple[int, int]) -> bool:
    """Whether sizes (h, w) a and b have the same aspect ratio (ASPECT_TOLERANCE)."""
    (ha, wa), (hb, wb) = a_hw, b_hw
    return abs((wa / ha) / (wb / hb) - 1.0) <= ASPECT_TOLERANCE
PAD_RGB = (124, 116, 104)  # the ImageNet mean the graphs subtract: zero after normalisation


@dataclass(frozen=True)
class Placement:
    """A (h0, w0) frame's box inside the (height, width) graph input: rows top..top+inner_h,
    columns left..left+inner_w (the whole input unless letterboxed)."""

    height: int
    width: int
    top: int
    left: int
    inner_h: int
    inner_w: int

    @classmethod
    def of(cls, frame_hw: tuple[int, int], graph_hw: tuple[int, int], fit: str) -> Placement:
        (h0, w0), (h, w) = frame_hw, graph_hw
        if fit not in FITS:
            raise ValueError(f"fit {fit!r} not in {FITS}")
        if fit == "stretch" or same_aspect((h0, w0), (h, w)):
            return cls(h, w, 0, 0, h, w)
        scale = min(h / h0, w / w0)
        ih, iw = max(1, min(h, round(h0 * scale))), max(1, min(w, round(w0 * scale)))
        return cls(h, w, (h - ih) // 2, (w - iw) // 2, ih, iw)

    def distorts(self, frame_hw: tuple[int, int]) -> bool:
        """Whether the frame's aspect ratio changes on its way into the graphs."""
        return not same_aspect(frame_hw, (self.inner_h, self.inner_w))

    @property
    def padded(self) -> bool:
        return (self.inner_h, self.inner_w) != (self.height, self.width)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """(h0, w0, 3) uint8 -> (height, width, 3) uint8 graph input."""
        if not self.padded:
            return resize_frame(rgb, self.height, self.width)
        out = np.empty((self.height, self.width, 3), np.uint8)
        out[:] = PAD_RGB
        out[self._box] = resize_frame(rgb, self.inner_h, self.inner_w)
        return out

    def masks(self, labels: np.ndarray, ids: tuple[int, ...], n: int) -> np.ndarray:
        """(h0, w0) ids -> (n, height, width) float32 one-hot, zero in the padding."""
        if not self.padded:
            return onehot(labels, ids, n, self.height, self.width)
        out = np.zeros((n, self.height, self.width), np.float32)
        out[(slice(None), *self._box)] = onehot(labels, ids, n, self.inner_h, self.inner_w)
        return out

    def clear_padding(self, probs: np.ndarray) -> None:
        """Zero the object probabilities (N, H, W) outside the frame, in place."""
        if self.padded:
            keep = np.zeros((self.height, self.width), bool)
            keep[self._box] = True
            probs[:, ~keep] = 0.0

    def labels(self, prob: np.ndarray, ids: tuple[int, ...], h0: int, w0: int) -> np.ndarray:
        """prob (C, height, width), background first -> (h0, w0) uint8 ids of the frame."""
        return prob_to_labels(prob[(slice(None), *self._box)], ids, h0, w0)

    @property
    def _box(self) -> tuple[slice, slice]:
        return (slice(self.top, self.top + self.inner_h),
                slice(self.left, self.left + self.inner_w))



def export_size(frame_hw: tuple[int, int], graph_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) with the frame's aspect ratio and about the graphs' pixel count, multiples of
    STRIDE: the `--size` to export for videos of this shape."""
    (h0, w0), (h, w) = frame_hw, graph_hw
    area = h * w
    eh = max(STRIDE, round((area * h0 / w0) ** 0.5 / STRIDE) * STRIDE)
    ew = max(STRIDE, round((area * w0 / h0) ** 0.5 / STRIDE) * STRIDE)
    return eh, ew
