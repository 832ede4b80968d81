"""Video keyframes with PyAV: decode only what the index needs, bounded for any length.

- Only key frames are decoded (``skip_frame = NONKEY``: the decoder drops every other frame
  before decoding it), downscaled by swscale straight out of the decoder.
- Scene change among those keyframes (:mod:`indexer.frames.select`). A file whose key frames are
  further apart than ``max_interval_s`` (long GOPs: screen recordings, some cameras) is decoded
  again with every frame, looked at no more often than every ``min_interval_s / 2``.
- A video too long for ``max_frames`` at ``max_interval_s`` is sampled evenly instead: one
  keyframe every ``duration / max_frames`` seconds, reached by seeking, so a 10-hour file
  costs ``max_frames`` seeks, not 10 hours of demuxing.
- A time budget (``max_decode_s``) and a length cap (``max_duration_s``) stop the work; what was
  found by then is kept and the asset's notes say so.
- A time range (``start_s``, ``end_s``) decodes one part of a long video (a split task).

A file FFmpeg cannot open, without a video stream, or without one decodable frame is an
:class:`ImageDecodeError`; a corrupt packet after some frames ends decoding with a note.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from indexer.frames.base import DecodedMedia, FrameOptions, MediaFrame, MediaKind, readable_source
from indexer.frames.select import KeyframeSelector, signature
from ram_pp.preprocess import ImageDecodeError

# FFmpeg's own errors (corrupt input, missing moov) and what its wrappers raise around them.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says (no frame decoded)."""

    duration_s: float
    codec: str
    width: int
    height: int
    format: str
    keyframe_interval_s: float | None = None


def _open(source: str | Path | bytes, label: str) -> Any:
    target = readable_source(source, label)
    try:
        return av.open(target, mode="r", metadata_errors="ignore")
    except _AV_ERRORS as exc:
        raise ImageDecodeError(
            label,
            f"not a readable video ({_short(exc)}): the file is truncated or its index (moov) "
            "is missing; re-export or copy it again",
        ) from exc


def _short(exc: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without the errno
    and the media store's path it quotes (the user knows the file by its source)."""
    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _video_stream(container: Any, label: str) -> Any:
    if not list(container.streams):
        raise ImageDecodeError(
            label, "the video has no streams: its index (moov) is empty; re-export the file"
        )
    streams = list(container.streams.video)
    if not streams:
        raise ImageDecodeError(label, "the file has no video stream (audio only?)")
    stream = streams[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise ImageDecodeError(label, "no decoder for this video's codec in this build")
    return stream


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe_video(source: str | Path | bytes, label: str) -> VideoInfo:
    """Duration, codec, size and container of a video, from its header.

    Raises:
        ImageDecodeError: not a readable video.
    """
    container = _open(source, label)
    with container:
        stream = _video_stream(container, label)
        ctx = stream.codec_context
        return VideoInfo(
            duration_s=_duration(container, stream),
            codec=ctx.name,
            width=int(ctx.width or 0),
            height=int(ctx.height or 0),
            format=container.format.name,
        )


def _target_size(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height, 1))
    return max(2, round(width * scale)), max(2, round(height * scale))


def _picture(frame: Any, side: int) -> Image.Image:
    """The frame downscaled (longer side ``side``) as RGB, display rotation applied."""
    width, height = _target_size(frame.width, frame.height, side)
    image = frame.reformat(width=width, height=height, format="rgb24").to_image()
    rotation = _rotation(frame)
    if rotation in (90, 180, 270):  # the display matrix's counter-clockwise rotation
        image = image.rotate(rotation, expand=True)
    return image


def _rotation(frame: Any) -> int:
    """The frame's display rotation in degrees counter-clockwise, 0-359 (phones: 270)."""
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def _analysis(frame: Any, size: int) -> np.ndarray:
    return frame.reformat(width=size, height=size, format="rgb24").to_ndarray()


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def over(self) -> bool:
        return time.monotonic() > self.deadline


def _frames(container: Any, stream: Any, notes: list[str], label: str) -> Iterator[Any]:
    """Decoded frames from the current position; a corrupt packet ends them with a note."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except _AV_ERRORS as exc:
        notes.append(f"decoding stopped at a corrupt or truncated part ({_short(exc)})")


def decode_video(
    source: str | Path | bytes,
    options: FrameOptions,
    label: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    max_frames: int | None = None,
) -> DecodedMedia:
    """Keyframes of a video (or of its range ``[start_s, end_s)``), chosen by scene change.

    Args:
        source: a path or the file's bytes.
        options: intervals, threshold, caps, sizes.
        label: how errors name the file.
        start_s, end_s: the time range to index (a split task's share).
        max_frames: frame cap for this range (default ``options.max_frames``).

    Raises:
        ImageDecodeError: not a readable video, no video stream, or no decodable frame.
    """
    cap = max_frames or options.max_frames
    budget = _Budget(options.max_decode_s)
    container = _open(source, label)
    with container:
        stream = _video_stream(container, label)
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width * height > options.max_pixels:
            raise ImageDecodeError(
                label, f"video frames are {width}x{height} pixels, over the limit"
            )
        duration = _duration(container, stream)
        notes: list[str] = []
        end = duration if end_s is None or duration <= 0 else min(end_s, duration)
        if end_s is not None and duration <= 0:
            end = end_s
        if end > options.max_duration_s:
            notes.append(
                f"indexed over the first {options.max_duration_s:.0f} s of "
                f"{end:.0f} s (media.max_duration_s)"
            )
            end = options.max_duration_s
        span = max(0.0, end - start_s) if end > 0 else 0.0
        # Too long for the cap at the longest interval: sample evenly, by seeking.
        stride = span / cap if span > 0 else 0.0
        evenly = stride > options.max_interval_s
        selector = KeyframeSelector(
            min_interval_s=stride if evenly else options.min_interval_s,
            max_interval_s=stride if evenly else options.max_interval_s,
            threshold=options.scene_threshold,
            max_frames=cap,
        )
        ctx.skip_frame = "NONKEY"
        ctx.thread_type = "AUTO"
        kept: list[MediaFrame] = []
        turned = False  # displayed a quarter turn from how it is coded (a phone held upright)
        decoded = 0
        dense = False
        look_every = max(options.min_interval_s / 2, 0.04)
        last_look: float | None = None
        last_key: float | None = None

        def every_frame_from_start() -> KeyframeSelector:
            """Start over from the range's start decoding every frame (key frames too sparse
            for the interval rule): what was kept is dropped, a fresh selector returned."""
            ctx.skip_frame = "DEFAULT"
            kept.clear()
            _seek(container, stream, start_s)
            return KeyframeSelector(
                options.min_interval_s, options.max_interval_s, options.scene_threshold, cap
            )

        if start_s > 0:
            _seek(container, stream, start_s)
        while True:
            restart = False
            seek_to: float | None = None
            for frame in _frames(container, stream, notes, label):
                decoded += 1
                t = _time(frame, stream)
                if t is None or t < start_s - 1e-6:
                    continue  # before the range (a backward seek lands on the earlier key)
                if end > 0 and t >= end:
                    break
                if budget.over():
                    notes.append(
                        f"decoding time budget of {budget.seconds:.0f} s reached at {t:.1f} s "
                        "(media.max_decode_s); frames after that are not indexed"
                    )
                    break
                if not dense and not evenly and frame.key_frame:
                    if last_key is not None and t - last_key > options.max_interval_s:
                        # Key frames too sparse for the interval rule: every frame, from the start.
                        dense, restart = True, True
                        break
                    last_key = t
                if dense and last_look is not None and t - last_look < look_every - 1e-6:
                    continue
                last_look = t
                if not selector.due(t):
                    continue
                if selector.offer(t, signature(_analysis(frame, options.analysis_size))):
                    kept.append(MediaFrame(_picture(frame, options.frame_side), t))
                    turned = _rotation(frame) in (90, 270)
                    if selector.full:
                        break
                    if evenly:  # the next sample is a stride away: seek there, skip the rest
                        seek_to = t + stride
                        break
            if restart:
                selector, last_look = every_frame_from_start(), None
                continue
            if seek_to is not None and (end <= 0 or seek_to < end) and not budget.over():
                _seek(container, stream, seek_to)
                continue
            gap = end - last_key if last_key is not None and end > 0 else 0.0
            sparse_tail = gap > options.max_interval_s
            if not dense and not evenly and sparse_tail and not selector.full and not budget.over():
                dense = True  # one key frame for longer than max_interval_s: look at every frame
                selector, last_look = every_frame_from_start(), None
                continue
            break
        if not kept:
            raise ImageDecodeError(
                label,
                "no decodable video frame"
                + (f" ({notes[0]})" if notes else " (the file is truncated or empty)"),
            )
        return DecodedMedia(
            kind=MediaKind.VIDEO,
            frames=kept,
            width=height if turned else width,  # as displayed
            height=width if turned else height,
            format=container.format.name,
            duration_s=duration if duration > 0 else None,
            codec=ctx.name,
            poster=_poster(kept),
            notes=notes,
            frames_decoded=decoded,
        )


def _time(frame: Any, stream: Any) -> float | None:
    if frame.time is not None:
        return float(frame.time)
    if frame.pts is not None and stream.time_base:
        return float(frame.pts * stream.time_base)
    return None


def _seek(container: Any, stream: Any, seconds: float) -> None:
    """Seek to the key frame at or before ``seconds`` (the decoder's buffers are flushed)."""
    offset = int(math.floor(seconds / stream.time_base)) if stream.time_base else 0
    try:
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    except _AV_ERRORS:
        pass  # unseekable input: decoding goes on from where it is, frames before are skipped


def _poster(frames: list[MediaFrame]) -> Image.Image:
    """The poster frame: the first kept frame that is not nearly uniform (a black opening
    fade makes a useless thumbnail), else the first."""
    for frame in frames[:8]:
        small = np.asarray(frame.image.reduce(4) if min(frame.image.size) >= 8 else frame.image)
        if float(small.std()) > 12.0:
            return frame.image
    return frames[0].image
