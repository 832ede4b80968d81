"""Query images (similar search by upload) decoded only as large as the model needs.

The model sees every image at S x S (384 for RAM++), so a huge query image buys nothing and a
small file can hold a huge image (an all-zero 88-megapixel PNG is 258 KB). Before anything is
decoded, the header's size decides:

- a JPEG decodes at a reduced DCT scale (Pillow's ``draft``, 1/2 to 1/8) whenever it is over
  ``api.query_max_pixels``, and is refused only if even the reduced image is over it;
- any other format over ``api.query_max_pixels`` is refused with a 422 that says what to send.

Images under the limit decode exactly as ingest decodes them, so an archived image sent as a
query finds itself with similarity 1. After a large decode the process hands freed heap memory
back to the system (glibc keeps it otherwise, and the server's RSS only grows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import warnings

from PIL import Image

from api.problems import ProblemError
from indexer.settings import Settings
from ram_pp.preprocess import DecodeOptions

log = logging.getLogger(__name__)


def jpeg_draft_scale(width: int, height: int, side: int) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's JPEG ``draft`` picks for a ``side`` x ``side``
    request: the largest that keeps both sides at least ``side``."""
    fits = min(width // max(side, 1), height // max(side, 1))
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def query_decode_options(settings: Settings, data: bytes, side: int) -> DecodeOptions:
    """How to decode the query image ``data`` for a model that sees ``side`` x ``side``.

    Raises:
        ProblemError: 422 when the image is over ``api.query_max_pixels`` and cannot be decoded
            at a reduced size below it.
    """
    limit = settings.api.query_max_pixels
    fast = settings.model.fast_decode
    options = DecodeOptions(
        apply_exif_orientation=settings.model.apply_exif_orientation,
        max_pixels=min(limit, settings.ingest.max_pixels),
        draft_size=side if fast else None,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:  # reads the header only
                width, height = opened.size
                fmt = opened.format
    except Exception:  # undecodable: the decoder itself says why, with its own message
        return options
    pixels = width * height
    if pixels <= limit:
        return options
    if fmt == "JPEG" and pixels <= settings.ingest.max_pixels:
        scale = jpeg_draft_scale(width, height, side)
        reduced = -(-width // scale) * -(-height // scale)
        if reduced <= limit:
            return DecodeOptions(
                apply_exif_orientation=settings.model.apply_exif_orientation,
                max_pixels=settings.ingest.max_pixels,
                draft_size=side,
            )
    raise ProblemError(
        422,
        f"the query image is {width}x{height} ({pixels / 1e6:.1f} megapixels), over the limit of "
        f"{limit / 1e6:.1f} megapixels for query images (api.query_max_pixels); the model sees "
        f"{side}x{side} pixels, so send it downscaled",
        kind="image-too-large",
        width=width,
        height=height,
        max_pixels=limit,
    )


def _load_malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Give freed heap memory back to the operating system (glibc ``malloc_trim``; a few
    milliseconds, small next to running the image model on the query)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
