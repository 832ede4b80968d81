"""Batched RAM++ inference: load once, decode ahead, run batches, select tags.

The engine returns, per image, the probability of every tag, the selected tags, the unit-norm
image embedding ``c`` and the token embeddings ``E`` (float16) that open-set search stores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ram_pp.factory import LoadedModel
from ram_pp.preprocess import DecodeOptions, ImageDecodeError, Preprocessor, open_image


class DeviceUnavailableError(RuntimeError):
    """The requested device is unknown or not on this machine (no GPU, no such GPU index)."""


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist here.

    Raises:
        DeviceUnavailableError: an unknown device name, or CUDA/MPS (or that GPU index) is not
            available on this machine. Checked here, before any weights move, so that the
            caller gets one clear error instead of torch's driver messages.
    """
    if device != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise DeviceUnavailableError(
                f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if resolved.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise DeviceUnavailableError(
                    f"device {device!r} is not available: PyTorch finds no CUDA GPU here"
                )
            if resolved.index is not None and resolved.index >= count:
                raise DeviceUnavailableError(
                    f"device {device!r} is not available: this machine has {count} CUDA "
                    f"GPU(s), cuda:0 to cuda:{count - 1}"
                )
        elif resolved.type == "mps" and not _mps_available():
            raise DeviceUnavailableError(
                f"device {device!r} is not available: PyTorch finds no Apple MPS device here"
            )
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (the exact mode), bfloat16 on GPUs that support it, else float16."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16"
        ) from None


def cast_matmul_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store linear-layer weights and the label bank in ``dtype``, once, in place.

    Autocast would otherwise cast every weight again on each forward pass: on CPU the copies
    cost about a quarter of a bf16 Swin-L forward, and the label bank alone (4,585 x 51 x 512)
    is a 480 MB float32 tensor. Layer norms and bias tables stay float32, and autocast keeps
    their arithmetic in float32 as well.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(dtype)
    label_embed = getattr(model, "label_embed", None)
    if isinstance(label_embed, torch.nn.Parameter):
        label_embed.data = label_embed.data.to(dtype)


def compile_forward(fn: Callable, device: torch.device) -> Callable:
    """``fn`` compiled by inductor for ``device``.

    Raises:
        DeviceUnavailableError: CPU compilation without a C++ compiler (inductor builds its
            kernels with one; the message says so instead of a compiler traceback mid-run).
    """
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c
    ):
        raise DeviceUnavailableError(
            "compiling the model for the CPU needs a C++ compiler (g++ or clang++): install "
            "one or run without compile"
        )
    # A GPU worker sees one shape per batch size: no dynamic shapes, the fastest kernels.
    return torch.compile(fn, dynamic=False)


@dataclass(frozen=True)
class TagSelection:
    """How tags are chosen from probabilities.

    Per-tag thresholds by default; ``threshold`` replaces them with one global value; ``top_k``
    keeps the k most probable tags (after the threshold, if one is given).
    """

    threshold: float | None = None
    top_k: int | None = None


@dataclass(frozen=True)
class SelectedTag:
    index: int
    english: str
    chinese: str
    probability: float


@dataclass
class ImageResult:
    """Everything the model says about one image."""

    source: str
    logits: np.ndarray  # (num_tags,) float32
    probabilities: np.ndarray  # (num_tags,) float32
    tags: list[SelectedTag]
    embedding: np.ndarray  # (embed_dim,) float32, unit norm: c = E[0] / |E[0]|
    tokens: np.ndarray  # (num_tokens, embed_dim) float16: E
    width: int = 0
    height: int = 0


@dataclass
class FailedImage:
    """An input that could not be tagged, and why."""

    source: str
    error: str


@dataclass
class BatchOutput:
    logits: torch.Tensor  # (B, K) float32
    tokens: torch.Tensor  # (B, T, dim) float32


@dataclass
class _Decoded:
    source: str
    pixels: torch.Tensor | None = None
    size: tuple[int, int] = (0, 0)
    error: str | None = None
    extra: dict = field(default_factory=dict)


class TaggingEngine:
    """Loads a model once and tags batches of images.

    Args:
        loaded: model, config and vocabulary (see :func:`ram_pp.factory.load_model`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: ``auto`` (float32 on CPU), ``float32``, ``bfloat16`` or ``float16``. Reduced
            precision stores the matmul weights in that type (in place: the engine owns the
            model) and runs under autocast, which keeps layer norms and softmax in float32.
        batch_size: images per forward pass.
        decode: decoding options (EXIF orientation, pixel limit, JPEG draft mode).
        decode_workers: threads decoding the next batch while the model runs (0 = none).
        compile: run the forward through :func:`torch.compile` (inductor). The first batch of
            each shape pays the compilation (minutes for Swin-L on a small CPU); meant for long
            runs and GPU workers. On CPU it needs a C++ compiler.
        channels_last: channels-last pixels and patch-embedding weights (the only convolution
            of the Swin trunk; a GPU's convolution kernels prefer it).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        decode: DecodeOptions = DecodeOptions(),
        decode_workers: int = 2,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.loaded = loaded
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.decode_options = decode
        self.decode_workers = decode_workers
        self.model = loaded.model.to(self.device).eval()
        if self.dtype != torch.float32:
            cast_matmul_weights(self.model, self.dtype)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Pinned host memory lets the copy to a GPU run asynchronously (non_blocking); only
        # where CUDA is the device, so a machine without one never touches the CUDA runtime.
        self.pin_memory = self.device.type == "cuda"
        self._forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self._plain
        if compile:
            prepare = getattr(self.model.visual_encoder, "prepare_attention", None)
            if prepare is not None:  # a cache filled mid-graph would make it recompile
                prepare(self.dtype, self.device)
            self._forward = compile_forward(self._plain, self.device)
        cfg = loaded.config
        self.preprocess = Preprocessor(cfg.vision.image_size, cfg.mean, cfg.std)
        self.thresholds = torch.from_numpy(loaded.vocabulary.thresholds.astype(np.float32))

    @property
    def vocabulary(self):
        return self.loaded.vocabulary

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _plain(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            tokens = self.model.encode_image(pixels)
            logits = self.model.logits_from_embeddings(tokens)
        return logits.float(), tokens.float()

    @torch.inference_mode()
    def run(self, pixels: torch.Tensor) -> BatchOutput:
        """Forward a pre-processed batch (B, 3, S, S): logits and token embeddings E."""
        if self.pin_memory and pixels.device.type == "cpu":
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        logits, tokens = self._forward(pixels)
        return BatchOutput(logits, tokens)

    def select(self, probabilities: np.ndarray, selection: TagSelection) -> list[SelectedTag]:
        """Selected tags for one image, most probable first."""
        vocab = self.loaded.vocabulary
        if selection.threshold is not None:
            keep = probabilities > selection.threshold
        elif selection.top_k is not None:
            keep = np.ones_like(probabilities, dtype=bool)
        else:
            keep = probabilities > vocab.thresholds
        index = np.flatnonzero(keep)
        index = index[np.argsort(-probabilities[index], kind="stable")]
        if selection.top_k is not None:
            index = index[: selection.top_k]
        return [
            SelectedTag(int(i), vocab.english[i], vocab.chinese[i], float(probabilities[i]))
            for i in index
        ]

    def results_for_batch(
        self,
        pixels: torch.Tensor,
        sources: Sequence[str],
        selection: TagSelection = TagSelection(),
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[ImageResult]:
        """Run a batch and package one :class:`ImageResult` per image."""
        out = self.run(pixels)
        logits = out.logits.cpu().numpy()
        probs = 1.0 / (1.0 + np.exp(-logits))
        tokens = out.tokens.cpu()
        cls = tokens[:, 0]
        emb = (cls / cls.norm(dim=-1, keepdim=True)).numpy().astype(np.float32)
        tok16 = tokens.to(torch.float16).numpy()
        results = []
        for i, source in enumerate(sources):
            w, h = sizes[i] if sizes else (0, 0)
            results.append(
                ImageResult(
                    source,
                    logits[i],
                    probs[i],
                    self.select(probs[i], selection),
                    emb[i],
                    tok16[i],
                    w,
                    h,
                )
            )
        return results

    def _decode(self, source: str | Path) -> _Decoded:
        try:
            image = open_image(source, self.decode_options)
            return _Decoded(str(source), self.preprocess(image), image.size)
        except ImageDecodeError as exc:
            return _Decoded(str(source), error=exc.reason)

    def tag_files(
        self,
        sources: Iterable[str | Path],
        selection: TagSelection = TagSelection(),
        on_done: Callable[[int], None] | None = None,
    ) -> Iterator[ImageResult | FailedImage]:
        """Tag image files in batches; failures are yielded as :class:`FailedImage`, not raised.

        Decoding of the next images overlaps with the forward pass of the current batch.
        """
        pool = ThreadPoolExecutor(max(1, self.decode_workers)) if self.decode_workers else None
        try:
            pending: list[Future[_Decoded] | _Decoded] = []
            batch: list[_Decoded] = []
            iterator = iter(sources)
            lookahead = self.batch_size * 2
            exhausted = False
            while True:
                while not exhausted and len(pending) < lookahead:
                    try:
                        src = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(self._decode, src) if pool else self._decode(src))
                if not pending:
                    break
                head = pending.pop(0)
                item = head.result() if isinstance(head, Future) else head
                if item.error is not None:
                    yield FailedImage(item.source, item.error)
                    if on_done:
                        on_done(1)
                else:
                    batch.append(item)
                if len(batch) == self.batch_size or (not pending and batch):
                    pixels = torch.stack([b.pixels for b in batch])  # type: ignore[misc]
                    sizes = [b.size for b in batch]
                    yield from self.results_for_batch(
                        pixels, [b.source for b in batch], selection, sizes
                    )
                    if on_done:
                        on_done(len(batch))
                    batch = []
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)
