"""Small videos, camera RAW files and animations built in the test (no downloads).

- :func:`encode_video`: PyAV encodes a sequence of scenes (still pictures shown for a given
  time), so the scene changes, and so the keyframes a correct selector must pick, are known.
- :func:`build_dng`: a minimal DNG written by hand (a TIFF with DNG tags: a 16-bit Bayer CFA
  image, optionally a JPEG preview in a SubIFD, an orientation), which LibRaw reads.
- :func:`animated`: GIF / WebP / APNG with Pillow.
- :func:`scene_picture`: a picture of the procedural data set (``ram_pp.synth``) with known
  tags, so the demo model's search results on video frames can be asserted.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ram_pp import synth

SOLID = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 50, 220),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
}


def solid(colour: str, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A picture of one colour with a darker square (so encoders have an edge to code)."""
    image = Image.new("RGB", size, SOLID[colour])
    inner = tuple(int(c * 0.6) for c in SOLID[colour])
    image.paste(inner, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


def scene_picture(background: str, name: str, colour: str, size: int = 128) -> Image.Image:
    """One large item of the procedural data set on a background (its tags are known)."""
    item = synth.Item("shape", name, colour, "large", "solid", (0.5, 0.5), 0.3)
    return synth.render(synth.Scene(background, (item,)), size)


def encode_video(
    path: Path,
    scenes: Sequence[tuple[Image.Image, float]],
    *,
    fps: int = 10,
    codec: str = "libx264",
    gop: int = 5,
    pix_fmt: str = "yuv420p",
    display_rotation: int = 0,
) -> Path:
    """Encode ``(picture, seconds)`` scenes one after the other; returns ``path``.

    ``gop``: frames between key frames (the selector sees only key frames).
    ``display_rotation``: the container's display matrix, degrees counter-clockwise (-90: a
    phone held upright, shown turned 90 degrees clockwise).
    """
    width, height = scenes[0][0].size
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = gop
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop)}
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "g": str(gop)}
        stream.time_base = Fraction(1, fps)
        index = 0
        for picture, seconds in scenes:
            for _ in range(max(1, round(seconds * fps))):
                frame = av.VideoFrame.from_image(picture.convert("RGB"))
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    out.mux(packet)
                index += 1
        for packet in stream.encode():
            out.mux(packet)
    return path


def animated(
    frames: Sequence[Image.Image], fmt: str, duration_ms: int = 200, **kwargs: object
) -> bytes:
    """An animation (``GIF``, ``WEBP`` or ``PNG`` = APNG) of ``frames``."""
    out = io.BytesIO()
    first, rest = frames[0], list(frames[1:])
    first.save(
        out, format=fmt, save_all=True, append_images=rest, duration=duration_ms, loop=0, **kwargs
    )
    return out.getvalue()


# -------------------------------------------------------------------------------------- DNG

_SHORT, _LONG, _ASCII, _RATIONAL, _SRATIONAL, _BYTE = 3, 4, 2, 5, 10, 1
# ColorMatrix1 (XYZ -> camera): the sensor of these files sees linear sRGB primaries.
_XYZ_TO_SRGB = np.array(
    [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]
)


def bayer_of(picture: Image.Image, white: int = 4095) -> np.ndarray:
    """An RGGB Bayer mosaic (uint16, ``white`` at full scale) sampling ``picture``."""
    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0 * (white * 0.9) + 64
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint16)
    out[0::2, 0::2] = rgb[0::2, 0::2, 0]
    out[0::2, 1::2] = rgb[0::2, 1::2, 1]
    out[1::2, 0::2] = rgb[1::2, 0::2, 1]
    out[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return out


def _ifd(entries: list[tuple[int, int, int, bytes]], base: int) -> bytes:
    """One IFD at file offset ``base``: entries sorted by tag, long values after it."""
    entries = sorted(entries, key=lambda e: e[0])
    size = 2 + 12 * len(entries) + 4
    head, extra = struct.pack("<H", len(entries)), b""
    for tag, kind, count, payload in entries:
        if len(payload) <= 4:
            head += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, kind, count, base + size + len(extra))
            extra += payload + (b"\0" if len(payload) % 2 else b"")
    return head + struct.pack("<I", 0) + extra


def _s(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}H", *v)


def _l(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}I", *v)


def _srational(values: object) -> bytes:
    return b"".join(struct.pack("<ii", round(v * 10000), 10000) for v in values)  # type: ignore[attr-defined]


def _a(text: str) -> bytes:
    return text.encode() + b"\0"


def build_dng(
    picture: Image.Image, *, preview: Image.Image | None = None, orientation: int = 1
) -> bytes:
    """A little-endian DNG 1.4 of ``picture`` as RGGB sensor data (its size must be even),
    with an optional JPEG ``preview`` (SubIFD) and an EXIF ``orientation``."""
    bayer = bayer_of(picture)
    height, width = bayer.shape
    raw = bayer.astype("<u2").tobytes()
    jpeg = b""
    if preview is not None:
        buf = io.BytesIO()
        preview.convert("RGB").save(buf, "JPEG", quality=92)
        jpeg = buf.getvalue()

    def main(raw_at: int, sub_at: int) -> list[tuple[int, int, int, bytes]]:
        entries = [
            (254, _LONG, 1, _l(0)),
            (256, _LONG, 1, _l(width)),
            (257, _LONG, 1, _l(height)),
            (258, _SHORT, 1, _s(16)),
            (259, _SHORT, 1, _s(1)),
            (262, _SHORT, 1, _s(32803)),  # CFA
            (271, _ASCII, 7, _a("Ramdex")),
            (272, _ASCII, 5, _a("Test")),
            (273, _LONG, 1, _l(raw_at)),
            (274, _SHORT, 1, _s(orientation)),
            (277, _SHORT, 1, _s(1)),
            (278, _LONG, 1, _l(height)),
            (279, _LONG, 1, _l(len(raw))),
            (284, _SHORT, 1, _s(1)),
            (33421, _SHORT, 2, _s(2, 2)),  # CFARepeatPatternDim
            (33422, _BYTE, 4, bytes([0, 1, 1, 2])),  # CFAPattern RGGB
            (50706, _BYTE, 4, bytes([1, 4, 0, 0])),  # DNGVersion
            (50707, _BYTE, 4, bytes([1, 1, 0, 0])),
            (50708, _ASCII, 12, _a("Ramdex Test")),
            (50717, _LONG, 1, _l(4095)),  # WhiteLevel
            (50721, _SRATIONAL, 9, _srational(_XYZ_TO_SRGB.flat)),
            (50728, _RATIONAL, 3, _l(1, 1, 1, 1, 1, 1)),  # AsShotNeutral: no white balance
            (50778, _SHORT, 1, _s(21)),  # CalibrationIlluminant1 D65
        ]
        if preview is not None:
            entries.append((330, _LONG, 1, _l(sub_at)))  # SubIFDs
        return entries

    def sub(at: int) -> list[tuple[int, int, int, bytes]]:
        pw, ph = preview.size  # type: ignore[union-attr]
        return [
            (254, _LONG, 1, _l(1)),  # a reduced-resolution preview
            (256, _LONG, 1, _l(pw)),
            (257, _LONG, 1, _l(ph)),
            (258, _SHORT, 3, _s(8, 8, 8)),
            (259, _SHORT, 1, _s(7)),  # JPEG
            (262, _SHORT, 1, _s(6)),  # YCbCr
            (273, _LONG, 1, _l(at)),
            (277, _SHORT, 1, _s(3)),
            (278, _LONG, 1, _l(ph)),
            (279, _LONG, 1, _l(len(jpeg))),
            (284, _SHORT, 1, _s(1)),
        ]

    ifd0 = _ifd(main(0, 0), 8)  # sizes do not depend on the offsets: lay out, then fill in
    sub_at = 8 + len(ifd0)
    sub_len = len(_ifd(sub(0), sub_at)) if preview is not None else 0
    raw_at = sub_at + sub_len
    jpeg_at = raw_at + len(raw)
    ifd0 = _ifd(main(raw_at, sub_at), 8)
    subifd = _ifd(sub(jpeg_at), sub_at) if preview is not None else b""
    return b"II*\0" + _l(8) + ifd0 + subifd + raw + jpeg
