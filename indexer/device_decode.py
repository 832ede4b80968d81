"""Batched JPEG decoding and RAM++ pre-processing on the model's device (GPU ingest path).

On a GPU worker the CPU cores that decode JPEGs with Pillow become the bottleneck long before the
model does (Swin-L at bf16 wants well over 1,000 images per second). :class:`DeviceDecoder`
decodes a batch of JPEG files with ``torchvision.io.decode_jpeg(list, device=...)`` (nvjpeg on
CUDA, libjpeg-turbo on CPU) and does step 1 of the RAM++ computation on the same device:

1. EXIF orientation, read from the header on the CPU (``decode_jpeg`` applies it only on the
   CPU, so it is applied here, identically on every device, as flips and transposes of the
   decoded tensor; the same eight cases as ``PIL.ImageOps.exif_transpose``);
2. resize to exactly S x S, bilinear with antialiasing (``F.interpolate(antialias=True)``: the
   triangle filter widened by the scale factor when downscaling, which is what Pillow's
   ``BILINEAR`` does), widths then heights, each pass rounded to 8-bit levels as Pillow's is;
3. /255 and the ImageNet mean/std.

Everything that is not a plain baseline/progressive JPEG in RGB or grey (PNG, WebP, HEIC, CMYK
JPEG, MPO, files over the pixel limit, corrupt or truncated bytes) goes through the exact CPU
path of :mod:`ram_pp.preprocess`, one image at a time; an image that fails there too is reported
in :attr:`DecodedBatch.failed` and the rest of the batch goes on. A batch is never lost to one
bad file: ``decode_jpeg`` returns nothing when one image of a list fails, so the list is retried
one image at a time before anything falls back to the CPU.

Pixels differ slightly from the CPU path (float resampling here, Pillow's fixed point there).
Measured on the golden JPEGs at 224 and 384 px: at most 1 level of 255, on 0.04-1.0 % of the
values; golden-model logits within 0.0012 (logit spread 0.9); docs/gpu.md has the table.
``DecodeOptions.draft_size`` (reduced-DCT decoding) is not used on the device: a full decode costs
the GPU little, and the pixels stay closer to the exact path.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from indexer.media import sniff_mime
from ram_pp.config import IMAGENET_MEAN, IMAGENET_STD
from ram_pp.preprocess import DecodeOptions, ImageDecodeError, Preprocessor, decode_image

EXIF_ORIENTATION = 0x0112
_DEVICE_MODES = ("RGB", "L")  # JPEG colour modes decode_jpeg(mode=RGB) converts as Pillow does


@dataclass(frozen=True)
class JpegHeader:
    """What the CPU reads from a JPEG's header before the device decodes it.

    Attributes:
        width, height: of the decoded image, after EXIF orientation.
        orientation: EXIF orientation tag (1-8; 1 = as stored).
    """

    width: int
    height: int
    orientation: int


@dataclass
class DecodedBatch:
    """The model input for the images of a batch that could be decoded.

    Attributes:
        pixels: (n, 3, S, S) normalised float32 on the decoder's device, in input order.
        index: for each row of ``pixels``, its position in the input list.
        sizes: (width, height) of each decoded image after EXIF orientation.
        on_device: per row, whether the device path decoded it (False: the CPU fallback).
        failed: input position -> reason, for images neither path could decode.
    """

    pixels: torch.Tensor
    index: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    on_device: list[bool] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def read_jpeg_header(data: bytes, options: DecodeOptions = DecodeOptions()) -> JpegHeader | None:
    """The header of a JPEG the device path can decode, or None (use the CPU path).

    Pillow reads only the markers here (no pixel data): tens of microseconds per file.
    """
    if sniff_mime(data[:64]) != "image/jpeg":
        return None
    try:
        with warnings.catch_warnings():
            # Oversize files go to the CPU path, which refuses them with its own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format != "JPEG" or opened.mode not in _DEVICE_MODES:
                    return None  # MPO (multi-picture), CMYK/YCCK: the CPU path converts those
                width, height = opened.size
                if width * height > options.max_pixels:
                    return None
                orientation = 1
                if options.apply_exif_orientation:
                    orientation = int(opened.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - anything unreadable is the CPU path's to report
        return None
    if orientation not in range(1, 9):
        orientation = 1  # as ImageOps.exif_transpose: unknown values leave the image as stored
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return JpegHeader(width, height, orientation)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Flip/rotate a (C, H, W) tensor as ``PIL.ImageOps.exif_transpose`` does for a tag value.

    Pillow's operations per tag: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE,
    6 ROTATE_270 (90 degrees clockwise), 7 TRANSVERSE, 8 ROTATE_90 (counter-clockwise).
    """
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(-2, -1))
    return image


def _decode_jpegs(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    # Lazy import: torchvision's image extension is only needed here. Its image I/O is marked
    # deprecated from 0.29 on (TorchCodec replaces it); the warning is not for our users.
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return list(out)


class DeviceDecoder:
    """Decodes batches of image files into RAM++ input on a device, JPEGs on the device itself.

    Args:
        image_size: the model's input side S.
        device: ``cuda``, ``cuda:N`` or ``cpu`` (the same code, libjpeg-turbo: tests, fallback).
        mean, std: the model's normalisation.
        options: EXIF orientation and the pixel limit (as the CPU path).
    """

    def __init__(
        self,
        image_size: int,
        device: str | torch.device = "cpu",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        options: DecodeOptions = DecodeOptions(),
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r}: PyTorch finds no CUDA GPU here")
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"device decoding runs on cuda or cpu, not {self.device.type!r}")
        self.image_size = image_size
        self.options = options
        self.cpu_preprocess = Preprocessor(image_size, mean, std)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)

    # -- device path --------------------------------------------------------------------------

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, S, S) float32 holding 8-bit levels (0..255, integers).

        Bilinear with antialiasing in two passes, widths first, each rounded half up to 8-bit
        levels: Pillow resamples horizontally into a uint8 image, then vertically, rounding half
        up in fixed point. One joint float pass differs from Pillow by one level on 11-21 % of the
        golden images' values, two passes rounded half to even (``round``) on 0.04-3 %, these
        on 0.04-1.0 % (measured, docs/gpu.md).
        """
        s = self.image_size
        x = image.unsqueeze(0).float()
        if x.shape[-1] != s:
            x = (
                F.interpolate(
                    x, size=(x.shape[-2], s), mode="bilinear", align_corners=False, antialias=True
                )
                .add_(0.5)
                .floor_()
                .clamp_(0, 255)
            )
        if x.shape[-2] != s:
            x = (
                F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
                .add_(0.5)
                .floor_()
                .clamp_(0, 255)
            )
        return x.squeeze(0)

    def normalize(self, levels: torch.Tensor) -> torch.Tensor:
        """8-bit levels (..., 3, S, S) -> the normalised model input."""
        return levels.div(255.0).sub_(self._mean).div_(self._std)

    def _device_decode(self, data: list[bytes]) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 tensors on the device, None where an image failed."""
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        try:
            return list(_decode_jpegs(tensors, self.device))
        except RuntimeError:
            pass  # one bad image fails the whole list: retry one by one
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(_decode_jpegs([t], self.device)[0])
            except RuntimeError:
                out.append(None)
        return out

    # -- public -------------------------------------------------------------------------------

    def decode(self, data: Sequence[bytes], names: Sequence[str] | None = None) -> DecodedBatch:
        """Decode and pre-process a batch of files (their bytes).

        Args:
            data: the files' bytes, any image type.
            names: how to name each input in failure reasons (default ``#i``).

        Returns:
            A :class:`DecodedBatch`; inputs that cannot be decoded are in ``failed``.
        """
        names = [f"#{i}" for i in range(len(data))] if names is None else list(names)
        if len(names) != len(data):
            raise ValueError(f"{len(names)} names for {len(data)} inputs")
        headers = [read_jpeg_header(d, self.options) for d in data]
        jpeg_pos = [i for i, h in enumerate(headers) if h is not None]
        decoded = self._device_decode([data[i] for i in jpeg_pos]) if jpeg_pos else []
        by_pos = dict(zip(jpeg_pos, decoded, strict=True))
        rows: list[torch.Tensor] = []
        batch = DecodedBatch(pixels=torch.empty(0))
        for i, raw in enumerate(data):
            header, image = headers[i], by_pos.get(i)
            if header is not None and image is not None:
                oriented = apply_orientation(image, header.orientation)
                rows.append(self.resize(oriented))
                batch.sizes.append((header.width, header.height))
                batch.on_device.append(True)
            else:
                try:
                    decoded_cpu = decode_image(raw, self.options, names[i])
                except ImageDecodeError as exc:
                    batch.failed[i] = str(exc)
                    continue
                levels = self.cpu_preprocess.resized_array(decoded_cpu.model_rgb())
                rows.append(torch.from_numpy(levels).permute(2, 0, 1).float().to(self.device))
                batch.sizes.append((decoded_cpu.width, decoded_cpu.height))
                batch.on_device.append(False)
            batch.index.append(i)
        size = self.image_size
        if rows:
            batch.pixels = self.normalize(torch.stack(rows))
        else:
            batch.pixels = torch.empty(0, 3, size, size, device=self.device)
        return batch
