"""Animated GIF, WebP and APNG: a few frames spread over the animation, like a short video.

Frames are taken at evenly spaced times over the animation's length (from the frames' own
durations), at most ``animated_frames``; a frame whose colours barely differ from the last one
kept (a looping logo) is dropped, so a near-static animation stays one frame. GIF and APNG
frames are deltas: reaching frame N decodes the ones before it, so the scan is capped at
:data:`MAX_SCANNED` frames.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.frames.base import DecodedMedia, FrameOptions, MediaFrame, MediaKind, downscale
from indexer.frames.select import difference, signature
from ram_pp.preprocess import ImageDecodeError

MAX_SCANNED = 2000  # frames of an animation looked at (timing read) at most
SAME_SCENE = 0.05  # colour difference under which a frame adds nothing
ANIMATED_FORMATS = frozenset({"GIF", "WEBP", "PNG"})


def is_animated(source: str | Path | bytes) -> bool:
    """Whether a GIF / WebP / PNG file has more than one frame (header only, no decode)."""
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
        with Image.open(stream) as opened:
            return opened.format in ANIMATED_FORMATS and getattr(opened, "n_frames", 1) > 1
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False  # the still-image decoder reports what is wrong with it (or its size)


def _display_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_animated(source: str | Path | bytes, options: FrameOptions, label: str) -> DecodedMedia:
    """A few frames of an animated image, with their times.

    Raises:
        ImageDecodeError: unreadable, oversize, or truncated before its second frame.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with Image.open(stream) as opened:
            width, height = opened.size
            count = min(int(getattr(opened, "n_frames", 1)), MAX_SCANNED)
            if width * height * count > options.max_pixels * 4:
                raise ImageDecodeError(
                    label, f"animation of {count} frames of {width}x{height} is over the limit"
                )
            fmt = opened.format or "unknown"
            starts: list[float] = []
            clock = 0.0
            for index in range(count):
                opened.seek(index)
                if fmt == "WEBP":
                    opened.load()  # WebP sets a frame's duration only once it is decoded
                starts.append(clock)
                clock += max(float(opened.info.get("duration", 100) or 100), 10.0) / 1000.0
            duration = clock
            wanted = _even_indices(starts, duration, options.animated_frames)
            frames: list[MediaFrame] = []
            last_sig: np.ndarray | None = None
            notes: list[str] = []
            for index in wanted:
                try:
                    opened.seek(index)
                    opened.load()
                except (OSError, EOFError) as exc:
                    notes.append(f"animation truncated at frame {index} ({exc})")
                    break
                picture = downscale(_display_rgb(opened), options.frame_side)
                sig = signature(np.asarray(picture.resize((32, 32))))
                if last_sig is not None and difference(sig, last_sig) < SAME_SCENE:
                    continue
                last_sig = sig
                frames.append(MediaFrame(picture, starts[index]))
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(label, f"corrupt or truncated animation: {exc}") from exc
    if not frames:
        raise ImageDecodeError(label, "no decodable frame in the animation")
    return DecodedMedia(
        kind=MediaKind.ANIMATED,
        frames=frames,
        width=width,
        height=height,
        format=fmt,
        duration_s=duration,
        poster=frames[0].image,
        notes=notes,
        frames_decoded=len(wanted),
    )


def _even_indices(starts: list[float], duration: float, n: int) -> list[int]:
    """Frame indices showing at ``n`` evenly spaced times (the first frame always)."""
    if len(starts) <= n:
        return list(range(len(starts)))
    times = [duration * k / n for k in range(n)]
    out: list[int] = []
    for t in times:
        index = int(np.searchsorted(starts, t, side="right")) - 1
        if not out or index != out[-1]:
            out.append(max(index, 0))
    return out
