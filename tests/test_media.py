"""Media handling: formats, sniffing, EXIF orientation, bad files, thumbnails, the media store."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from indexer.media import (
    MediaStore,
    avif_available,
    decode_image,
    make_thumbnail,
    sha256_file,
    sniff_mime,
)
from ram_pp.preprocess import ImageDecodeError
from tests.ingest_fixtures import encode, photo_like, write_bad_files

FORMATS = [
    ("JPEG", "image/jpeg"),
    ("PNG", "image/png"),
    ("WEBP", "image/webp"),
    ("GIF", "image/gif"),
    ("BMP", "image/bmp"),
    ("TIFF", "image/tiff"),
    ("HEIF", "image/heic"),
    ("AVIF", "image/avif"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return photo_like(160, 120, seed=3)


@pytest.mark.parametrize(("fmt", "mime"), FORMATS)
def test_every_format_decodes_to_rgb_with_size_and_type(picture, fmt, mime):
    if fmt == "AVIF" and not avif_available():
        pytest.fail("this Pillow build has no AVIF support (Pillow >= 11.2 is required)")
    data = encode(picture, fmt)
    assert sniff_mime(data[:64]) == mime
    decoded = decode_image(data)
    rgb = decoded.model_rgb()
    assert rgb.mode == "RGB"
    assert (decoded.width, decoded.height) == (160, 120)
    assert rgb.size == (160, 120)
    # Lossy formats differ from the source a little; a wrong decode differs a lot.
    error = np.abs(np.asarray(rgb, dtype=np.float32) - np.asarray(picture, dtype=np.float32))
    limit = 60 if fmt == "GIF" else 25  # GIF quantises to 256 colours
    assert error.mean() < limit, f"{fmt}: mean abs error {error.mean():.1f}"


def test_animated_gif_gives_the_first_frame():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    out = io.BytesIO()
    red.save(out, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    decoded = decode_image(out.getvalue())
    r, g, b = np.asarray(decoded.model_rgb(), dtype=np.float32).mean(axis=(0, 1))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied_and_reported_size_follows_it(picture):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(picture, "JPEG", exif=exif.tobytes())
    upright = decode_image(data)
    assert (upright.width, upright.height) == (120, 160)
    assert upright.image.size == (120, 160)
    raw = decode_image(data, apply_exif_orientation=False)
    assert raw.image.size == (160, 120)


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, format="PNG")
    grey = np.asarray(decode_image(out.getvalue()).model_rgb(), dtype=np.float32)
    assert 100 < grey.mean() < 155  # clipping would give ~255 almost everywhere


def test_transparency_is_on_white_for_people_and_dropped_for_the_model():
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 0))
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    decoded = decode_image(out.getvalue())
    assert np.asarray(decoded.display_rgb()).min() == 255
    # RAM++'s reference pre-processing drops alpha (convert("RGB")), it does not composite
    assert np.asarray(decoded.model_rgb())[0, 0].tolist() == [10, 20, 30]


def test_draft_decoding_is_smaller_but_reports_the_full_size():
    data = encode(photo_like(1600, 1200, seed=5), "JPEG")
    fast = decode_image(data, draft_size=384)
    assert (fast.width, fast.height) == (1600, 1200)
    assert 384 <= min(fast.image.size) < 1200


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("zero_byte", "empty file"),
        ("non_image", "not an image"),
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
        ("bomb", "decompression bomb"),
        ("huge_30000", "decompression bomb"),
    ],
)
def test_bad_files_raise_a_clear_decode_error(bad_files, kind, reason):
    files = bad_files
    with pytest.raises(ImageDecodeError) as info:
        decode_image(files[kind])
    assert reason in info.value.reason
    assert str(files[kind]) in str(info.value)


def test_pixel_limit_is_configurable(picture):
    data = encode(picture, "PNG")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(data, max_pixels=160 * 120 - 1)
    assert decode_image(data, max_pixels=160 * 120).width == 160


def test_missing_path_and_folder_are_decode_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        decode_image(tmp_path)


def test_sniffing_ignores_names_and_rejects_lookalikes():
    assert sniff_mime(b"") is None
    assert sniff_mime(b"<html><body>") is None
    # MP4 is a video now (indexer.frames), not an image
    assert sniff_mime(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom") == "video/mp4"
    assert sniff_mime(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heic") == "image/heic"
    assert sniff_mime(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1") == "image/avif"


def test_thumbnail_is_webp_within_the_box(picture):
    data = make_thumbnail(photo_like(1000, 400, seed=2), size=320)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "WEBP"
    assert thumb.size == (320, 128)
    small = Image.open(io.BytesIO(make_thumbnail(picture, size=320)))
    assert small.size == (160, 120)  # never enlarged


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks plus a tail
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_media_store_is_content_addressed_and_atomic(tmp_path, picture):
    store = MediaStore(tmp_path / "media")
    data = encode(picture, "PNG")
    first = tmp_path / "a.png"
    second = tmp_path / "copy-of-a.png"
    first.write_bytes(data)
    second.write_bytes(data)
    one = store.put_file(first)
    two = store.put_file(second)
    assert one.sha256 == two.sha256 == hashlib.sha256(data).hexdigest()
    assert one.path == two.path and one.path.read_bytes() == data
    assert one.path.name == f"{one.sha256}.png" and one.mime == "image/png"
    assert store.find_original(one.sha256) == one.path
    assert list((tmp_path / "media" / "tmp").iterdir()) == []  # no temporary files left
    text = tmp_path / "t.jpg"
    text.write_text("hello")
    kept = store.put_file(text)
    assert kept.mime is None and kept.path is None  # hashed, but not kept
    from indexer.media import FileTooLargeError

    with pytest.raises(FileTooLargeError):
        store.put_file(first, max_bytes=len(data) - 1)
    thumb = store.put_thumbnail(one.sha256, b"RIFFxxxxWEBP")
    assert thumb == store.thumbnail_path(one.sha256) and thumb.read_bytes() == b"RIFFxxxxWEBP"
