"""Open-set concepts: a name plus descriptions, and how they become a label bank.

Descriptions come from the user, from ramdex's own short visual prompt templates, or from an
optional OpenAI-compatible chat-completions endpoint (:class:`LlmDescriber`). "a photo of a
{name}." is always one of them (upstream's form, lower-cased name). Concepts may have different
numbers of descriptions; :func:`encode_concepts` builds a ragged :class:`LabelBank`.

The upstream JSON format (``[{"Concept name": ["description", ...]}, ...]``) is read by
:func:`load_upstream_json` and written by :func:`save_upstream_json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ram_pp.labels import LabelBank
from ram_pp.text_encoder import TextEncoder

MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000

# ramdex's own short visual prompts; "{}" is the concept name. Kept short because CLIP reads at
# most 77 tokens, and varied in framing (close-up, scene, style, medium) so the per-image
# re-weighting of RAM++ can pick the view that fits each image.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a close-up photo of a {}.",
    "a wide shot that shows a {}.",
    "a picture with a {} in it.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a high-resolution photo of a {}.",
    "a low-resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a photo of several {}s.",
    "a photo of a {} seen from above.",
    "a photo of a {} seen from the side.",
    "a {} in the background of a photo.",
    "a {} in the foreground of a photo.",
    "a photo of a {} outdoors.",
    "a photo of a {} indoors.",
    "a professional photograph of a {}.",
    "a snapshot of a {} taken with a phone.",
    "a black and white photo of a {}.",
    "a vintage photo of a {}.",
    "a stock photo of a {}.",
    "an illustration of a {}.",
    "a drawing of a {}.",
    "a 3d rendering of a {}.",
    "a poster featuring a {}.",
    "a video still showing a {}.",
    "an image where a {} is clearly visible.",
    "a detailed photo of a {} with its typical features.",
)

# What the descriptions of a templated concept start with (the text before the name): an encoder
# with causal attention (CLIP) encodes each once and reuses it for every name.
TEMPLATE_PREFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(t.split("{}")[0].strip() for t in ("a photo of a {}.", *PROMPT_TEMPLATES))
)

# Questions for the LLM describer: several angles on appearance, each answered several times.
LLM_PROMPTS: tuple[str, ...] = (
    "In a short sentence, describe what a {} looks like in a photograph.",
    "Which visual features let someone recognise a {} in a picture? Answer in one sentence.",
    "Describe the typical shape, colours and textures of a {} in one sentence.",
    "In one sentence, describe a typical scene in which a {} appears in a photo.",
    "How would you tell a {} apart from similar things in an image? One sentence.",
)


def base_description(name: str) -> str:
    """The description every concept has: ``"a photo of a {name}."`` (name lower-cased)."""
    return f"a photo of a {name.strip().lower()}."


def _clean(text: str, what: str, limit: int, collapse: bool = True) -> str:
    """Strip (and for names collapse) whitespace; reject empty or overlong text."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    # Descriptions keep their inner whitespace (line breaks in upstream files): the CLIP
    # tokenizer collapses it anyway, and other encoders see the text as written.
    cleaned = " ".join(text.split()) if collapse else text.strip()
    if not cleaned:
        raise ValueError(f"{what} is empty")
    if len(cleaned) > limit:
        raise ValueError(f"{what} is longer than {limit} characters: {cleaned[:40]!r}...")
    return cleaned


@dataclass(frozen=True)
class Concept:
    """A concept: a name and its descriptions (base description first).

    Constructing one strips whitespace (and collapses it in the name) and puts
    ``base_description(name)`` first, adding it when missing. Other repeated descriptions are
    kept, as upstream keeps them: a repeated row weighs more in the per-image re-weighting, and
    imported files must score as they did there.
    """

    name: str
    descriptions: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        name = _clean(self.name, "concept name", MAX_NAME_CHARS)
        if isinstance(self.descriptions, str):
            raise TypeError("descriptions must be a list of strings, not one string")
        base = base_description(name)
        out = [base]
        moved = False  # the given base description (first occurrence) is the one put in front
        for i, text in enumerate(self.descriptions):
            text = _clean(text, f"description {i} of {name!r}", MAX_DESCRIPTION_CHARS, False)
            if not moved and text.lower() == base.lower():
                moved = True
                continue
            out.append(text)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "descriptions", tuple(out))


def template_descriptions(name: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> list[str]:
    """The prompt templates filled with the concept name."""
    name = _clean(name, "concept name", MAX_NAME_CHARS)
    return [t.format(name) for t in templates]


def make_concept(
    name: str,
    descriptions: Iterable[str] = (),
    use_templates: bool = True,
    llm: LlmDescriber | None = None,
) -> Concept:
    """Build a concept from the user's descriptions, the templates and optionally an LLM.

    Args:
        name: the concept name.
        descriptions: the user's own descriptions (kept first, after the base description).
        use_templates: add :data:`PROMPT_TEMPLATES` filled with the name.
        llm: when given, add its generated descriptions.
    """
    texts = list(descriptions)
    if use_templates:
        texts += template_descriptions(name)
    if llm is not None:
        texts += llm.describe(name)
    seen = {base_description(name).lower()}
    unique = []  # sources overlap (a template may repeat a user text): keep each text once
    for text in texts:
        key = " ".join(str(text).split()).lower()
        if key not in seen:
            seen.add(key)
            unique.append(text)
    return Concept(name, tuple(unique))


def load_upstream_json(path: str | Path) -> list[Concept]:
    """Read concepts in the upstream format ``[{"Concept": ["desc", ...]}, ...]``.

    Raises:
        ValueError: not that format (the message says where), or a concept name repeats.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{name: [descriptions]}}")
    concepts: list[Concept] = []
    names: set[str] = set()
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"{path}: entry {i} must be an object with exactly one concept name")
        ((name, descs),) = entry.items()
        if not isinstance(descs, list) or not all(isinstance(d, str) for d in descs):
            raise ValueError(f"{path}: entry {i} ({name!r}) must map to a list of strings")
        try:
            concept = Concept(name, tuple(descs))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from exc
        if concept.name.lower() in names:
            raise ValueError(f"{path}: concept {concept.name!r} appears twice")
        names.add(concept.name.lower())
        concepts.append(concept)
    return concepts


def save_upstream_json(concepts: Sequence[Concept], path: str | Path) -> Path:
    """Write concepts in the upstream format, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = [{c.name: list(c.descriptions)} for c in concepts]
    _atomic_write(path, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    return path


def encode_concepts(
    concepts: Sequence[Concept], encoder: TextEncoder, batch_size: int = 64
) -> LabelBank:
    """Encode every concept's descriptions into one (ragged) label bank.

    All descriptions go through the encoder in one flat pass (batched), then are split back per
    concept, so K concepts cost one encoder pass, not K.
    """
    if not concepts:
        raise ValueError("no concepts to encode")
    encoder.share_prefixes(TEMPLATE_PREFIXES)  # once per encoder: later calls find them kept
    texts = [d for c in concepts for d in c.descriptions]
    rows = encoder.encode(texts, batch_size=batch_size)
    counts = [len(c.descriptions) for c in concepts]
    return LabelBank.from_ragged(list(torch.split(rows, counts)))


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LlmError(RuntimeError):
    """The description endpoint failed or answered in an unusable way."""


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,2}[.)\]:])\s*")


def parse_answers(text: str, limit: int) -> list[str]:
    """Split an LLM reply into at most ``limit`` descriptions (one per line, bullets removed)."""
    answers = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip().strip('"').strip()
        if len(line) >= 3:
            answers.append(line[:MAX_DESCRIPTION_CHARS])
    return answers[:limit]


class LlmDescriber:
    """Asks an OpenAI-compatible chat-completions endpoint what a concept looks like.

    Each of ``prompts`` is sent once, asking for ``answers_per_prompt`` different one-sentence
    answers, one per line. Results are cached on disk per (model, concept), so a concept costs
    one round of requests ever.

    Args:
        url: the endpoint, either the full ``.../chat/completions`` URL or its base (``.../v1``).
        model: model name sent in the request.
        api_key: bearer token; empty sends no Authorization header.
        timeout_s: per-request timeout.
        cache_dir: where answers are cached; None disables the cache.
        prompts: questions with ``{}`` for the concept name.
        answers_per_prompt: answers asked for per question.
        temperature: sampling temperature sent to the endpoint.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 60.0,
        cache_dir: str | Path | None = None,
        prompts: Sequence[str] = LLM_PROMPTS,
        answers_per_prompt: int = 5,
        temperature: float = 0.7,
    ) -> None:
        if not url:
            raise ValueError("no LLM endpoint configured (set RAMDEX_LLM__URL)")
        if not model:
            raise ValueError("no LLM model configured (set RAMDEX_LLM__MODEL)")
        if answers_per_prompt < 1:
            raise ValueError("answers_per_prompt must be >= 1")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.prompts = tuple(prompts)
        self.answers_per_prompt = answers_per_prompt
        self.temperature = temperature

    def cache_path(self, name: str) -> Path | None:
        """The cache file of a concept (None when caching is off)."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{self.model}\0{name.strip().lower()}".encode()).hexdigest()
        return self.cache_dir / f"{key[:32]}.json"

    def describe(self, name: str) -> list[str]:
        """Descriptions of a concept (from the cache when present).

        Raises:
            LlmError: network failure, HTTP error, or a reply without usable answers.
        """
        name = _clean(name, "concept name", MAX_NAME_CHARS)
        cache = self.cache_path(name)
        if cache is not None and cache.is_file():
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("model") == self.model and cached.get("concept") == name.lower():
                return list(cached["descriptions"])
        answers: list[str] = []
        import httpx  # imported here: only this optional path needs it

        with httpx.Client(timeout=self.timeout_s) as client:
            for prompt in self.prompts:
                answers += self._ask(client, prompt.format(name))
        if not answers:
            raise LlmError(f"{self.url} gave no usable descriptions for {name!r}")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            record = {"model": self.model, "concept": name.lower(), "descriptions": answers}
            _atomic_write(cache, json.dumps(record, ensure_ascii=False))
        return answers

    def _ask(self, client, question: str) -> list[str]:
        import httpx

        body = {
            "model": self.model,
            "temperature": self.temperature,
            "messages": [
                {
                    "role": "system",
                    "content": "You describe how things look in photographs. Answer with plain"
                    " sentences, one per line, no numbering, no extra text.",
                },
                {
                    "role": "user",
                    "content": f"{question} Give {self.answers_per_prompt} different answers,"
                    " one per line.",
                },
            ],
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            resp = client.post(self.url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise LlmError(f"LLM request to {self.url} failed: {exc}") from exc
        if resp.status_code != 200:
            raise LlmError(
                f"LLM endpoint {self.url} answered HTTP {resp.status_code}: {resp.text[:200]}"
            )
        try:
            choices = resp.json()["choices"]
            texts = [c["message"]["content"] for c in choices]
        except (ValueError, KeyError, TypeError) as exc:
            raise LlmError(
                f"LLM endpoint {self.url} gave a reply that is not chat-completions "
                f"JSON: {resp.text[:200]}"
            ) from exc
        answers: list[str] = []
        for text in texts:
            answers += parse_answers(text or "", self.answers_per_prompt)
        return answers[: self.answers_per_prompt]
