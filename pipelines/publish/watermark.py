"""Invisible watermark: DWT-DCT quantisation-index modulation on luma, written with PyWavelets + scipy.

Why not the ``invisible-watermark`` package: it requires ``opencv-python`` (the GUI build, which
conflicts with ``opencv-python-headless``) and ``torch`` for a decoder it does not need, refuses images
under 256x256, and its DWT-DCT scheme tiles bits in raster order, so any crop shifts every bit. This
is the same transform family (Haar DWT, 4x4 DCT of the LL band, one coefficient per block
quantised to carry a bit) with a layout that survives crops:

* each 8x8-pixel block carries bit ``(i % 8) * 12 + (j % 12)`` of a 96-bit word (a 2-D tile), so
  a crop only shifts the tile cyclically;
* the decoder tries all 64 pixel phases and 96 cyclic shifts and accepts a word only when its
  CRC-32 matches (false-positive rate about 6144 / 2**32 per image);
* the word is ``dataset tag (4 bytes) | sample tag (4 bytes) | CRC-32``: the tags are the first
  bytes of sha256 of the dataset fingerprint and of the sample id, so a decoded mark names both.

Each bit needs several blocks: below ``MIN_SIDE`` pixels a side the word does not fit (a 32x32
image has 16 blocks for 96 bits) and ``embed`` refuses rather than write an unreadable mark.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np
import pywt
from scipy.fft import dctn, idctn

TILE = (8, 12)  # blocks per tile: 96 bits
BITS = TILE[0] * TILE[1]
BLOCK = 8  # pixels per block side (4x4 in the LL band)
MIN_SIDE = 128
METHOD = "dwt-dct-qim-y/v1"
_COEF = (0, 0)  # the block's DC term in the LL band: the most robust to JPEG and to chroma subsampling


@dataclass(frozen=True)
class Mark:
    dataset_tag: str  # 8 hex digits
    sample_tag: str

    @property
    def payload(self) -> str:
        return self.dataset_tag + self.sample_tag


def tag(text: str) -> str:
    """First 4 bytes (8 hex digits) of sha256: how the mark names a dataset or a sample."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def mark_for(fingerprint: str, sample_id: str) -> Mark:
    return Mark(tag(fingerprint), tag(sample_id))


def _word(mark: Mark) -> np.ndarray:
    body = bytes.fromhex(mark.payload)
    data = body + zlib.crc32(body).to_bytes(4, "big")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)


def _luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _blocks(y: np.ndarray) -> np.ndarray:
    """DCT of each 4x4 block of the Haar LL band: shape (rows, cols, 4, 4)."""
    h, w = (y.shape[0] // BLOCK) * BLOCK, (y.shape[1] // BLOCK) * BLOCK
    ll, _ = pywt.dwt2(y[:h, :w], "haar")
    q = BLOCK // 2
    tiles = ll.reshape(h // BLOCK, q, w // BLOCK, q).transpose(0, 2, 1, 3)
    return dctn(tiles, axes=(2, 3), norm="ortho")


def embed(rgb: np.ndarray, mark: Mark, strength: float = 24.0) -> np.ndarray:
    """Return a marked copy of an HxWx3 uint8 image. ``strength`` is the quantisation step of the
    coefficient (24 moves an 8x8 block's luma mean by at most 1.5 levels)."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image {w}x{h} is below the watermark's {MIN_SIDE}x{MIN_SIDE} minimum")
    y = _luma(rgb)
    hb, wb = (h // BLOCK) * BLOCK, (w // BLOCK) * BLOCK
    coeffs = _blocks(y)
    rows, cols = coeffs.shape[:2]
    word = _word(mark)
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    bits = word[(ii % TILE[0]) * TILE[1] + (jj % TILE[1])]
    c = coeffs[..., _COEF[0], _COEF[1]]
    target = (np.round((c - bits * strength / 2) / strength) * strength) + bits * strength / 2
    coeffs[..., _COEF[0], _COEF[1]] = target
    ll = idctn(coeffs, axes=(2, 3), norm="ortho").transpose(0, 2, 1, 3).reshape(hb // 2, wb // 2)
    _, details = pywt.dwt2(y[:hb, :wb], "haar")
    y_new = y.copy()
    y_new[:hb, :wb] = pywt.idwt2((ll, details), "haar")
    out = rgb.astype(np.float64) + (y_new - y)[..., None]  # a luma change, spread equally on RGB
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _cell_scores(y: np.ndarray, dy: int, dx: int, strength: float) -> np.ndarray:
    """Mean soft bit (+1 for 0, -1 for 1) per tile cell, for the grid starting at (dy, dx)."""
    c = _blocks(y[dy:, dx:])[..., _COEF[0], _COEF[1]]
    soft = np.cos(2 * np.pi * c / strength)
    rows, cols = soft.shape
    sums = np.zeros(TILE)
    counts = np.zeros(TILE)
    np.add.at(sums, (np.arange(rows)[:, None] % TILE[0], np.arange(cols)[None, :] % TILE[1]), soft)
    np.add.at(counts, (np.arange(rows)[:, None] % TILE[0], np.arange(cols)[None, :] % TILE[1]), 1)
    return sums / np.maximum(counts, 1)


def decode(rgb: np.ndarray, strength: float = 24.0) -> Mark | None:
    """The mark in an image (any crop that keeps >= MIN_SIDE/2 a side), or None when no word's
    CRC matches. Tries every pixel phase and every cyclic shift of the tile."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    y = _luma(rgb[..., :3])
    if min(y.shape) < BLOCK * max(TILE):
        return None
    for dy in range(BLOCK):
        for dx in range(BLOCK):
            scores = _cell_scores(y, dy, dx, strength)
            for sy in range(TILE[0]):
                rolled_rows = np.roll(scores, sy, axis=0)
                for sx in range(TILE[1]):
                    bits = (np.roll(rolled_rows, sx, axis=1).ravel() < 0).astype(np.uint8)
                    data = np.packbits(bits).tobytes()
                    if zlib.crc32(data[:8]) == int.from_bytes(data[8:], "big"):
                        return Mark(data[:4].hex(), data[4:8].hex())
    return None
