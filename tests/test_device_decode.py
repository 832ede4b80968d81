"""Device JPEG decoding (indexer/device_decode.py): the same code on CPU here, CUDA when present."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from indexer.device_decode import (
    DeviceDecoder,
    apply_orientation,
    read_jpeg_header,
)
from ram_pp.config import IMAGENET_STD
from ram_pp.inference import TaggingEngine
from ram_pp.preprocess import DecodeOptions, Preprocessor, open_image
from tests.conftest import GOLDEN_IMAGES

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
CUDA = torch.cuda.is_available()


def _levels(pixels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|difference| of two normalised batches in 8-bit levels."""
    return ((pixels.cpu() - reference) * STD * 255).abs()


def _jpeg(image: Image.Image, orientation: int | None = None, **save) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes(), **save)
    return buf.getvalue()


def _asymmetric(width: int = 96, height: int = 64) -> Image.Image:
    """A smooth image with no symmetry (a wrong flip or rotation cannot match)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + 2 * y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def golden_bytes(golden_dir) -> list[bytes]:
    return [(golden_dir / n).read_bytes() for n in GOLDEN_IMAGES]


@pytest.mark.parametrize("size", [224, 384])
def test_golden_images_match_the_cpu_path(golden_bytes, size):
    batch = DeviceDecoder(size).decode(golden_bytes, GOLDEN_IMAGES)
    reference = torch.stack([Preprocessor(size)(open_image(d)) for d in golden_bytes])
    assert batch.index == [0, 1, 2] and not batch.failed
    assert batch.on_device == [True, False, True]  # the PNG takes the CPU path
    assert batch.pixels.shape == (3, 3, size, size) and batch.pixels.dtype == torch.float32
    diff = _levels(batch.pixels, reference)
    assert torch.equal(batch.pixels[1], reference[1])  # the fallback is the exact path itself
    for i in (0, 2):
        assert diff[i].max() <= 1.0 + 1e-3, GOLDEN_IMAGES[i]
        share = (diff[i] > 0.5).float().mean().item()
        assert share < 0.02, f"{GOLDEN_IMAGES[i]}: {share:.2%} of values differ by one level"
    sizes = [open_image(d).size for d in golden_bytes]
    assert batch.sizes == sizes


def test_golden_logits_stay_close(golden_bytes, golden_model):
    engine = TaggingEngine(golden_model, device="cpu")
    batch = DeviceDecoder(224).decode(golden_bytes)
    reference = torch.stack([Preprocessor(224)(open_image(d)) for d in golden_bytes])
    got, want = engine.run(batch.pixels).logits, engine.run(reference).logits
    assert (got - want).abs().max().item() < 0.005  # measured 0.0012; logit spread 0.9


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow(orientation):
    data = _jpeg(_asymmetric(), orientation)
    from torchvision.io import ImageReadMode, decode_jpeg

    header = read_jpeg_header(data)
    assert header is not None and header.orientation == orientation
    stored = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    turned = apply_orientation(stored, orientation).permute(1, 2, 0).numpy()
    expected = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(turned, expected)
    assert (header.width, header.height) == expected.shape[1::-1]
    batch = DeviceDecoder(48).decode([data])
    assert batch.on_device == [True] and batch.sizes == [expected.shape[1::-1]]
    reference = Preprocessor(48)(open_image(data)).unsqueeze(0)
    assert _levels(batch.pixels, reference).max() <= 1.0 + 1e-3


def test_orientation_ignored_when_switched_off():
    data = _jpeg(_asymmetric(), 6)
    options = DecodeOptions(apply_exif_orientation=False)
    batch = DeviceDecoder(32, options=options).decode([data])
    reference = Preprocessor(32)(open_image(data, options)).unsqueeze(0)
    assert batch.sizes == [(96, 64)]
    assert _levels(batch.pixels, reference).max() <= 1.0 + 1e-3


def test_bad_inputs_fall_back_or_fail_alone():
    good = _jpeg(_asymmetric())
    png = io.BytesIO()
    _asymmetric().save(png, "PNG")
    cmyk = io.BytesIO()
    _asymmetric().convert("CMYK").save(cmyk, "JPEG")
    grey = _jpeg(_asymmetric().convert("L"))
    progressive = _jpeg(_asymmetric(), progressive=True)
    inputs = [
        good,
        good[: len(good) // 2],  # truncated JPEG: fails the device list, then the CPU path
        b"",
        b"not an image at all",
        png.getvalue(),
        cmyk.getvalue(),
        grey,
        progressive,
    ]
    names = [f"f{i}" for i in range(len(inputs))]
    batch = DeviceDecoder(40).decode(inputs, names)
    assert sorted(batch.failed) == [1, 2, 3]
    assert batch.failed[1].startswith("f1: ") and "truncated" in batch.failed[1]
    assert "empty" in batch.failed[2] and "not an image" in batch.failed[3]
    assert batch.index == [0, 4, 5, 6, 7]
    assert batch.on_device == [True, False, False, True, True]  # PNG, CMYK: the CPU path
    reference = torch.stack([Preprocessor(40)(open_image(inputs[i])) for i in batch.index])
    diff = _levels(batch.pixels, reference)
    assert diff.max() <= 1.0 + 1e-3
    assert torch.equal(batch.pixels[1:3], reference[1:3])  # the CPU path exactly


def test_pixel_limit_refused_like_the_cpu_path():
    data = _jpeg(_asymmetric(96, 64))
    batch = DeviceDecoder(32, options=DecodeOptions(max_pixels=1000)).decode([data, data])
    assert sorted(batch.failed) == [0, 1] and "over the limit" in batch.failed[0]
    assert batch.pixels.shape == (0, 3, 32, 32)


def test_names_must_match_inputs():
    with pytest.raises(ValueError, match="2 names for 1 inputs"):
        DeviceDecoder(32).decode([b""], ["a", "b"])


@pytest.mark.skipif(CUDA, reason="checks the guard of machines without CUDA")
def test_cuda_refused_without_a_gpu():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        DeviceDecoder(32, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu_decoding(golden_bytes):  # pragma: no cover - run on GPU machines
    inputs = golden_bytes + [_jpeg(_asymmetric(), o) for o in range(1, 9)]
    on_gpu = DeviceDecoder(384, device="cuda").decode(inputs)
    on_cpu = DeviceDecoder(384).decode(inputs)
    assert on_gpu.on_device == on_cpu.on_device and on_gpu.sizes == on_cpu.sizes
    assert _levels(on_gpu.pixels, on_cpu.pixels.cpu()).max() <= 2.0 + 1e-3  # nvjpeg's IDCT
