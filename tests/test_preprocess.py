"""Decoding safety, EXIF orientation and fast-decode mode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ram_pp.preprocess import DecodeOptions, ImageDecodeError, Preprocessor, open_image


def _jpeg_bytes(width: int, height: int, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=90)
    return buffer.getvalue()


def _png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_exif_orientation_applied_by_default_and_switchable(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(40, 20, orientation=6))  # 6 = rotate 90 degrees clockwise
    assert open_image(path).size == (20, 40)
    assert open_image(path, DecodeOptions(apply_exif_orientation=False)).size == (40, 20)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text", "not an image"),
        (_jpeg_bytes(64, 64)[:300], "corrupt or truncated"),
        (_png_declaring_size(30000, 30000), "decompression bomb"),
    ],
    ids=["zero-byte", "non-image", "truncated", "bomb"],
)
def test_bad_files_raise_clear_errors_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad-input.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        open_image(path)
    assert "bad-input.jpg" in str(info.value)


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes(200, 100))
    assert open_image(path, DecodeOptions(max_pixels=20_000)).size == (200, 100)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        open_image(path, DecodeOptions(max_pixels=19_999))


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        open_image(tmp_path / "nope.jpg")


def test_draft_mode_decodes_large_jpeg_smaller_but_close(tmp_path):
    # a smooth photo-like image: draft (reduced DCT) decoding should barely change the pixels
    y, x = np.mgrid[0:1200, 0:1600]
    rgb = np.stack([x / 1600 * 255, y / 1200 * 255, (x + y) / 2800 * 255], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92)
    exact = open_image(buffer.getvalue())
    draft = open_image(buffer.getvalue(), DecodeOptions(draft_size=224))
    assert exact.size == (1600, 1200)
    assert draft.size[0] < exact.size[0] and min(draft.size) >= 224
    pre = Preprocessor(224)
    assert float((pre(exact) - pre(draft)).abs().mean()) < 0.05


def test_alpha_is_dropped_not_composited():
    rgba = Image.new("RGBA", (8, 8), (200, 10, 10, 0))
    tensor = Preprocessor(8, mean=(0, 0, 0), std=(1, 1, 1))(rgba)
    assert tensor[0].mean().item() == pytest.approx(200 / 255, abs=1e-6)
