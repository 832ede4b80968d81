"""Media beyond still images: video keyframes, camera RAW and animated images (docs/media.md).

Pure decoding (no database): a file becomes a :class:`DecodedMedia`, its frames already
downscaled for the model and the thumbnail, each with its timestamp. Every failure is an
:class:`ram_pp.preprocess.ImageDecodeError` with a reason a person can act on, as for images.

- :mod:`indexer.frames.select`: scene-change keyframe choice (min/max interval, frame cap).
- :mod:`indexer.frames.video`: PyAV, keyframes only, seeking on long videos, time budget.
- :mod:`indexer.frames.raw`: rawpy/LibRaw, embedded preview or a half-size demosaic.
- :mod:`indexer.frames.animated`: GIF / WebP / APNG, a few frames spread over the animation.
- :mod:`indexer.frames.decode`: one entry point by MIME type.
"""

from indexer.frames.base import DecodedMedia, FrameOptions, MediaFrame, MediaKind
from indexer.frames.decode import decode_media, is_frames_mime

__all__ = [
    "DecodedMedia",
    "FrameOptions",
    "MediaFrame",
    "MediaKind",
    "decode_media",
    "is_frames_mime",
]
