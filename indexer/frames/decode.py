"""One entry point: a file of a multi-frame or RAW type -> :class:`DecodedMedia`."""

from __future__ import annotations

from pathlib import Path

from indexer.frames.base import DecodedMedia, FrameOptions
from indexer.media import ANIMATABLE_MIME, RAW_MIME, VIDEO_MIME


def is_frames_mime(mime: str | None) -> bool:
    """Whether files of this type are decoded here rather than as still images (animated
    images are found out at decode time: most GIFs and PNGs are still)."""
    return mime in VIDEO_MIME or mime in RAW_MIME


def decode_media(
    source: str | Path | bytes,
    mime: str | None,
    options: FrameOptions,
    label: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
) -> DecodedMedia | None:
    """Decode a video, a RAW or an animated image; None for a still image (the caller's
    image decoder handles it).

    Raises:
        ImageDecodeError: the file cannot be decoded (the reason says why).
    """
    if mime in VIDEO_MIME:
        from indexer.frames.video import decode_video

        return decode_video(
            source, options, label, start_s=start_s, end_s=end_s, max_frames=max_frames
        )
    if mime in RAW_MIME:
        from indexer.frames.raw import decode_raw

        return decode_raw(source, options, label)
    if mime in ANIMATABLE_MIME:
        from indexer.frames.animated import decode_animated, is_animated

        if is_animated(source):
            return decode_animated(source, options, label)
    return None
