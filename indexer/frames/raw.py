"""Camera RAW with rawpy (LibRaw): the embedded preview when it is large enough, else a
half-size demosaic.

Most cameras embed a full-size or 1-2 MP JPEG rendering in their RAW files; decoding it takes
milliseconds where demosaicing the sensor data takes a second. The preview is used when its
shorter side is at least ``raw_preview_min_px`` (the model's input by default); otherwise
LibRaw demosaics at half size (``half_size``: each 2x2 Bayer cell one pixel, no interpolation),
with the camera's white balance. Orientation: LibRaw's ``flip`` (from the RAW's own EXIF) is
applied to the preview unless the preview carries its own orientation; ``postprocess`` applies
it to the demosaiced picture itself.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import rawpy
from PIL import Image, ImageOps

from indexer.frames.base import (
    DecodedMedia,
    FrameOptions,
    MediaFrame,
    MediaKind,
    downscale,
    readable_source,
)
from ram_pp.preprocess import ImageDecodeError

# LibRaw's flip codes -> the PIL transpose that shows the picture upright.
_FLIP = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,  # 90 degrees counter-clockwise
    6: Image.Transpose.ROTATE_270,  # 90 degrees clockwise
}


def _open(source: str | Path | bytes, label: str) -> Any:
    target = readable_source(source, label)
    try:
        return rawpy.imread(target)
    except rawpy.LibRawFileUnsupportedError as exc:
        raise ImageDecodeError(
            label, "camera RAW format not supported by LibRaw (a newer camera? update rawpy)"
        ) from exc
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageDecodeError(label, f"corrupt or truncated RAW file ({exc})") from exc


def _preview(raw: Any, orient: bool) -> Image.Image | None:
    """The embedded preview (upright when ``orient``), or None when LibRaw gives none."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError:
        return None  # a damaged preview: the sensor data may still be fine
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            with Image.open(io.BytesIO(thumb.data)) as opened:
                opened.load()
                own = opened.getexif().get(0x0112, 1) if orient else 1
                image = ImageOps.exif_transpose(opened) if own != 1 else opened.copy()
            if own != 1:  # the preview's own orientation wins over the RAW's
                return image.convert("RGB")
        else:
            image = Image.fromarray(np.asarray(thumb.data, dtype=np.uint8))
    except (OSError, ValueError, SyntaxError):
        return None
    transpose = _FLIP.get(int(raw.sizes.flip)) if orient else None
    image = image.convert("RGB")
    return image.transpose(transpose) if transpose is not None else image


def decode_raw(source: str | Path | bytes, options: FrameOptions, label: str) -> DecodedMedia:
    """The picture of a camera RAW file, downscaled to ``options.frame_side``.

    Raises:
        ImageDecodeError: not a RAW LibRaw reads, corrupt, over the pixel limit, or neither a
            usable preview nor decodable sensor data.
    """
    raw = _open(source, label)
    with raw:
        sizes = raw.sizes
        if int(sizes.raw_width) * int(sizes.raw_height) > options.max_pixels:
            raise ImageDecodeError(
                label, f"RAW sensor is {sizes.raw_width}x{sizes.raw_height}, over the pixel limit"
            )
        width, height = int(sizes.width), int(sizes.height)
        if int(sizes.flip) in (5, 6):
            width, height = height, width
        notes: list[str] = []
        preview = _preview(raw, options.apply_exif_orientation)
        if preview is not None and min(preview.size) >= options.raw_preview_min_px:
            picture, how = preview, "embedded preview"
        else:
            notes.append(
                "no embedded preview"
                if preview is None
                else f"embedded preview {preview.size[0]}x{preview.size[1]} too small"
            )
            try:
                rgb = raw.postprocess(
                    half_size=True,
                    use_camera_wb=True,
                    output_bps=8,
                    user_flip=None if options.apply_exif_orientation else 0,
                )
            except (rawpy.LibRawError, MemoryError, ValueError) as exc:
                raise ImageDecodeError(
                    label, f"RAW sensor data cannot be decoded and there is no preview ({exc})"
                ) from exc
            picture, how = Image.fromarray(np.ascontiguousarray(rgb)), "demosaiced (half size)"
        notes.append(how)
        small = downscale(picture, options.frame_side)
        return DecodedMedia(
            kind=MediaKind.RAW,
            frames=[MediaFrame(small, 0.0)],
            width=width,
            height=height,
            format="RAW",
            poster=small,
            notes=notes,
            frames_decoded=1,
        )
