"""Image decoding and RAM++ pre-processing (step 1 of the reference computation).

Decoding is defensive: Pillow's decompression-bomb limit is enforced (as an error, not a warning),
and truncated, empty or non-image files raise :class:`ImageDecodeError` naming the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ram_pp.config import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's default limit (about 13k x 13k)

try:  # HEIC/HEIF support, when pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - optional
    pass


class ImageDecodeError(ValueError):
    """An input that is not a decodable image, with the file named in the message."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class DecodeOptions:
    """How to open an image.

    Attributes:
        apply_exif_orientation: rotate/flip by the EXIF orientation tag (upstream does not).
        max_pixels: refuse images with more pixels than this (decompression bombs).
        draft_size: if set, let JPEG decode at a reduced DCT scale no smaller than this side
            (about 5x faster on large photos; slightly different pixels).
    """

    apply_exif_orientation: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_size: int | None = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image in its own mode (first frame, EXIF orientation applied) and file facts.

    ``image`` may be RGBA, 16-bit grey and so on: :meth:`model_rgb` is what RAM++ sees (the
    reference's ``convert("RGB")``: alpha dropped, not composited) and :meth:`display_rgb` what a
    person should see (transparency composited on white).
    """

    image: Image.Image  # smaller than width x height when decoded in draft mode
    width: int  # of the original, after EXIF orientation
    height: int
    format: str  # Pillow's format name (JPEG, PNG, HEIF, AVIF ...)

    def model_rgb(self) -> Image.Image:
        return _scale_wide_grey(self.image).convert("RGB")

    def display_rgb(self) -> Image.Image:
        image = _scale_wide_grey(self.image)
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def _scale_wide_grey(image: Image.Image) -> Image.Image:
    """16-bit or float grey scaled to 8 bits (a plain RGB conversion clips it all to white)."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return image


def decode_image(
    source: str | Path | bytes, options: DecodeOptions = DecodeOptions(), name: str | None = None
) -> DecodedImage:
    """Decode the first frame of an image file fully, refusing bombs before decoding.

    Args:
        source: a path or the file's bytes.
        options: EXIF orientation, pixel limit, JPEG draft size.
        name: how to name the input in errors (defaults to the path).

    Raises:
        ImageDecodeError: empty, unreadable, truncated, corrupt, oversize or non-image input.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageDecodeError(label, "empty file (0 bytes)")
            stream: io.BytesIO | Path = io.BytesIO(source)
        else:
            stream = Path(source)
            if stream.is_dir():
                raise ImageDecodeError(label, "is a folder, not a file")
            if stream.stat().st_size == 0:
                raise ImageDecodeError(label, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; we refuse, and check ourselves too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                width, height = opened.size
                if width * height > options.max_pixels:
                    raise ImageDecodeError(
                        label,
                        f"image is {width}x{height} pixels, over the limit of "
                        f"{options.max_pixels} (possible decompression bomb)",
                    )
                fmt = opened.format or "unknown"
                if getattr(opened, "n_frames", 1) > 1:
                    opened.seek(0)  # animated GIF/WebP, multi-page TIFF: the first frame
                if options.draft_size and fmt == "JPEG":
                    opened.draft("RGB", (options.draft_size, options.draft_size))
                opened.load()
                image: Image.Image = opened
                if options.apply_exif_orientation:
                    if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                        width, height = height, width
                    image = ImageOps.exif_transpose(opened)
                else:
                    image = opened.copy()
                return DecodedImage(image, width, height, fmt)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(label, f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(label, "not an image file (format not recognised)") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(label, "file not found") from exc
    except PermissionError as exc:
        raise ImageDecodeError(label, "permission denied") from exc
    except MemoryError as exc:
        raise ImageDecodeError(label, "image too large to decode in memory") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        raise ImageDecodeError(label, f"corrupt or truncated image: {exc}") from exc


def open_image(
    source: str | Path | bytes, options: DecodeOptions = DecodeOptions(), name: str | None = None
) -> Image.Image:
    """Decode an image file (or bytes) into the RGB image RAM++ sees (alpha dropped).

    Raises:
        ImageDecodeError: empty, truncated, oversize or non-image input.
    """
    return decode_image(source, options, name).model_rgb()


class Preprocessor:
    """RGB PIL image -> normalised (3, S, S) float32 tensor, exactly as the reference step 1."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.resized_array(image)))

    def resized_array(self, image: Image.Image) -> np.ndarray:
        """The image resized to the model's input, as an (S, S, 3) uint8 array."""
        resized = image.convert("RGB").resize(
            (self.image_size, self.image_size), Image.Resampling.BILINEAR
        )
        return np.array(resized, dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(S, S, 3) uint8 pixels -> the normalised (3, S, S) float32 model input."""
        out = pixels.permute(2, 0, 1).float().div_(255.0)
        return out.sub_(self.mean).div_(self.std)

    def load(
        self, source: str | Path | bytes, options: DecodeOptions = DecodeOptions()
    ) -> torch.Tensor:
        """Decode and pre-process one file."""
        return self(open_image(source, options))
