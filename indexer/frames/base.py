"""What a decoded multi-frame file is, and how to decode one."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ram_pp.preprocess import ImageDecodeError

if TYPE_CHECKING:
    from indexer.settings import MediaSettings


class MediaKind(StrEnum):
    """What an asset is (``assets.kind``)."""

    IMAGE = "image"
    VIDEO = "video"
    ANIMATED = "animated"
    RAW = "raw"


@dataclass(frozen=True)
class FrameOptions:
    """How frames are chosen and how large they are kept.

    Attributes:
        frame_side: longer side frames are downscaled to as soon as they are decoded (the
            larger of the model's input and the thumbnail: nothing finer is ever used).
        min_interval_s, max_interval_s: keyframes at least / at most this far apart.
        scene_threshold: histogram difference (0-1) that makes a scene change.
        max_frames: most frames kept (per file, or per time range of a split video).
        max_decode_s: decoding time budget; what was found by then is kept.
        max_duration_s: a video is indexed over this much of its length at most.
        animated_frames: frames kept from an animated image.
        analysis_size: side of the small image scene change is judged on.
        raw_preview_min_px: smallest shorter side of a RAW's embedded preview that is used.
        max_pixels: decompression-bomb limit (RAW sensor size, video frame size).
        apply_exif_orientation: rotate RAW previews by the file's orientation.
    """

    frame_side: int = 384
    min_interval_s: float = 1.0
    max_interval_s: float = 10.0
    scene_threshold: float = 0.2
    max_frames: int = 64
    max_decode_s: float = 120.0
    max_duration_s: float = 4 * 3600.0
    animated_frames: int = 4
    analysis_size: int = 64
    raw_preview_min_px: int = 384
    max_pixels: int = 178_956_970
    apply_exif_orientation: bool = True

    @classmethod
    def from_settings(
        cls,
        media: MediaSettings,
        *,
        model_size: int,
        thumbnail_size: int,
        max_pixels: int,
        apply_exif_orientation: bool = True,
    ) -> FrameOptions:
        """Options from the ``media`` settings and the model's input size."""
        return cls(
            frame_side=max(model_size, thumbnail_size),
            min_interval_s=media.min_interval_s,
            max_interval_s=max(media.max_interval_s, media.min_interval_s),
            scene_threshold=media.scene_threshold,
            max_frames=media.max_frames,
            max_decode_s=media.max_decode_s,
            max_duration_s=media.max_duration_s,
            animated_frames=media.animated_frames,
            analysis_size=media.analysis_size,
            raw_preview_min_px=media.raw_preview_min_px or model_size,
            max_pixels=max_pixels,
            apply_exif_orientation=apply_exif_orientation,
        )


@dataclass(frozen=True)
class MediaFrame:
    """One frame: the RGB picture (downscaled) and where it is in the file."""

    image: Image.Image
    timestamp_s: float = 0.0


@dataclass
class DecodedMedia:
    """A decoded video, RAW or animated image.

    Attributes:
        kind: video, raw or animated.
        frames: the frames to score, in time order (one for a RAW).
        width, height: of the original picture (after orientation).
        format: the container or file format (``mp4``, ``matroska,webm``, ``DNG`` ...).
        duration_s: the video's or animation's length; None for a RAW.
        codec: the video codec (``h264``, ``vp9`` ...); None otherwise.
        poster: the picture the thumbnail is made from.
        notes: what was left out and why (a time budget reached, a corrupt tail).
        frames_decoded: frames the decoder produced (benchmarks: decode work done).
    """

    kind: MediaKind
    frames: list[MediaFrame]
    width: int
    height: int
    format: str
    duration_s: float | None = None
    codec: str | None = None
    poster: Image.Image | None = None
    notes: list[str] = field(default_factory=list)
    frames_decoded: int = 0

    def poster_image(self) -> Image.Image:
        """The poster (the first frame when none was chosen)."""
        return self.poster if self.poster is not None else self.frames[0].image

    def poster_index(self) -> int:
        """Which of :attr:`frames` the poster is (0 when none was chosen)."""
        poster = self.poster_image()
        return next((i for i, f in enumerate(self.frames) if f.image is poster), 0)


def downscale(image: Image.Image, side: int) -> Image.Image:
    """``image`` with its longer side at most ``side`` (aspect kept; never enlarged)."""
    width, height = image.size
    scale = side / max(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = int(min(width / size[0], height / size[1]) // 2)
    small = image.reduce(factor) if factor > 1 else image  # box pre-shrink: fast, alias-free
    return small.resize(size, Image.Resampling.BILINEAR)


def readable_source(source: str | Path | bytes, label: str) -> io.BytesIO | str:
    """What a decoder opens: the bytes as a file object, or the path as a string, after the
    checks every decoder makes first (a missing or empty file fails with a reason)."""
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError(label, "empty file (0 bytes)")
        return io.BytesIO(source)
    path = Path(source)
    if not path.is_file():
        raise ImageDecodeError(label, "file not found")
    if path.stat().st_size == 0:
        raise ImageDecodeError(label, "empty file (0 bytes)")
    return str(path)
