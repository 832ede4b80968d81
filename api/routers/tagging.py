"""``POST /tag``: tag images synchronously, nothing stored unless asked (like DetectLabels).

Images come as multipart files (field ``file``, repeated) and/or URLs (``urls``, fetched with the
SSRF-safe fetcher of ingest); options as form fields or a JSON body. The route never blocks the
event loop: downloads and decoding run in the thread pool, the model in the tagger's own thread,
where the images of concurrent requests share forwards (:mod:`indexer.microbatch`).

Errors: nothing to tag, too many images, unknown options -> 422; an image that cannot be used
(corrupt, too large, a URL that cannot be fetched or points inside) gets its own ``error`` and
the others are tagged; when none can be, 422 with every image's reason. A full model queue ->
503 with ``Retry-After``. ``store=true`` needs a write key (403 otherwise).
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.auth import Scope
from api.deps import ReadKey, ScopeDep, ServicesDep
from api.model_info import model_name
from api.problems import ProblemError
from api.query_image import query_decode_options, release_memory
from api.services import Services
from api.submit import submit_upload, upload_source
from indexer.db.collection_scope import CollectionScope
from indexer.fetch import FetchError, FetchLimits, fetch_url
from indexer.microbatch import BatcherClosed, BatcherFull
from indexer.settings import Settings
from indexer.tagger import ConceptSpec, Tagger, tagger_for
from ram_pp.preprocess import DecodeOptions, ImageDecodeError

MAX_CONCEPTS = 32
_BIG_DECODE = 4_000_000  # pixels: past this, hand the decoder's heap back after the request
_FILE_FIELDS = ("file", "files")
_LIST_FIELDS = ("urls", "concepts")


class TagOptions(BaseModel):
    """The options of ``POST /tag`` (form fields or JSON), as ``ramdex tag`` names them."""

    model_config = ConfigDict(extra="forbid")

    urls: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="image URLs to fetch (http/https)"
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="one threshold for all tags (default: per tag)"
    )
    top_k: int | None = Field(default=None, ge=1, le=100_000, description="at most K tags")
    lang: Literal["en", "zh", "both"] = Field(
        default="both", description="name_zh is given for zh and both (when the model has it)"
    )
    all_scores: bool = Field(default=False, description="every tag's probability in `scores`")
    concepts: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_CONCEPTS,
        description="stored concepts (names or ids) scored as extra tags",
    )
    exif: bool | None = Field(
        default=None, description="apply EXIF orientation (default: model.apply_exif_orientation)"
    )
    store: bool = Field(default=False, description="also ingest the images (needs write scope)")
    collection: str | None = Field(
        default=None, max_length=256, description="store=true: the collection (name or id)"
    )


class TagOut(BaseModel):
    """One tag of an image."""

    name: str = Field(description="English name (what search takes)")
    name_zh: str | None = Field(default=None, description="Chinese name (lang zh or both)")
    probability: float
    threshold: float = Field(
        description="its threshold: the tag's own (or the one given); top_k alone may keep "
        "tags below it"
    )
    source: Literal["model", "concept"]
    concept_id: int | None = None


class StoredOut(BaseModel):
    """What ``store=true`` did with an image."""

    state: str = Field(description="queued, resumed, duplicate or failed")
    asset_id: int | None = None
    job_id: int
    reason: str | None = None


class ImageTagsOut(BaseModel):
    """The tags of one image, or why it could not be tagged."""

    name: str = Field(description="the file name or the URL")
    width: int | None = None
    height: int | None = None
    tags: list[TagOut] = Field(default_factory=list)
    model: str | None = None
    scores: dict[str, float] | None = Field(
        default=None, description="all_scores: every built-in tag's and concept's probability"
    )
    error: str | None = None
    stored: StoredOut | None = None


class TagResponse(BaseModel):
    """One entry per image, in the order given (files, then URLs)."""

    images: list[ImageTagsOut]
    model: str | None


@dataclass
class _Input:
    name: str
    data: bytes | None = None
    url: str | None = None
    error: str | None = None


_OPTIONS_SCHEMA = TagOptions.model_json_schema()
_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "image files (repeat the field)",
                        },
                        **_OPTIONS_SCHEMA["properties"],
                    },
                }
            },
            "application/json": {"schema": _OPTIONS_SCHEMA},
        },
    }
}


def _invalid(errors: list[Any]) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *e.get("loc", ()))} for e in errors]  # as FastAPI says it
    )


async def _read_request(request: Request, settings: Settings) -> tuple[TagOptions, list[_Input]]:
    """Options and uploaded files from a multipart/urlencoded form or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: list[_Input] = []
    if content_type == "application/json":
        try:
            raw = await request.json()
        except ValueError:
            raise ProblemError(422, "the body is not valid JSON", kind="validation") from None
        if not isinstance(raw, dict):
            raise ProblemError(422, "the JSON body must be an object", kind="validation")
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        limit = settings.api.tag_max_images
        try:
            form = await request.form(max_files=limit + 1, max_fields=64 + 2 * MAX_CONCEPTS)
        except Exception as exc:  # Starlette's parser: too many parts, malformed body
            if "too many files" in str(exc).lower():
                raise _too_many(limit + 2, limit) from exc
            raise ProblemError(422, f"the form cannot be read: {exc}", kind="validation") from exc
        raw = {}
        for key in form:
            values = form.getlist(key)
            if key in _FILE_FIELDS:
                for value in values:
                    if not isinstance(value, UploadFile):
                        raise ProblemError(
                            422, f"form field {key!r} must be a file", kind="validation"
                        )
                    name = upload_source(value.filename).removeprefix("upload:")
                    files.append(_Input(name, await value.read()))
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise ProblemError(
                    422, f"files go in the field 'file', not {key!r}", kind="validation"
                )
            raw[key] = list(values) if key in _LIST_FIELDS else values[-1]
        await form.close()
    else:
        raise ProblemError(
            415,
            "send images as multipart/form-data (field 'file') or URLs as JSON "
            '({"urls": [...]}) or form fields',
            kind="unsupported-media-type",
        )
    try:
        options = TagOptions.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False, include_input=False)) from None
    return options, files


def _too_many(count: int, limit: int) -> ProblemError:
    more = "more than " if count > limit + 1 else ""  # the parser stops counting past limit + 1
    return ProblemError(
        422,
        f"{more}{count - 1 if more else count} images in one request, over the limit of {limit} "
        "(api.tag_max_images): split them over several requests",
        kind="too-many-images",
        max_images=limit,
    )


def _check_counts(options: TagOptions, files: list[_Input], settings: Settings) -> None:
    count = len(files) + len(options.urls)
    if count == 0:
        raise ProblemError(
            422,
            "no image given: send files in the multipart field 'file' or URLs in 'urls'",
            kind="no-image",
        )
    limit = settings.api.tag_max_images
    if count > limit:
        raise _too_many(count, limit)
    for url in options.urls:
        if not url.lower().startswith(("http://", "https://")):
            raise ProblemError(422, f"not an http(s) URL: {url[:100]!r}", kind="validation")


@dataclass
class _Resolved:
    tagger: Tagger
    concepts: list[ConceptSpec]
    overrides: dict[int, float]
    collection_id: int | None
    model_id: str
    shown_model: str | None  # the model's name as responses give it


def _resolve(services: Services, scope: CollectionScope, options: TagOptions) -> _Resolved:
    """The tagger (loads the model on first use), the concepts, the threshold overrides and the
    collection to store into: the database part of a request, in a worker thread."""
    import sqlalchemy as sa

    from indexer.db.concept_repo import find_concept, get_concept
    from indexer.db.tags import Tag

    tagger = tagger_for(services)
    model_id = services.model_id()
    specs: list[ConceptSpec] = []
    collection_id: int | None = None
    with services.sessions() as session:
        unknown: list[str] = []
        for ref in dict.fromkeys(r.strip() for r in options.concepts):
            row = get_concept(session, int(ref)) if ref.isdigit() and len(ref) < 10 else None
            if row is None:  # a collection's own concept wins over a global one of the name
                row = find_concept(session, model_id, ref, visible=scope.concept_condition())
            # Another model's concept, or one of a collection the key does not see: as absent.
            if row is None or row.model_name != model_id or not scope.sees_concept(row):
                unknown.append(ref)
                continue
            specs.append(tagger.concept_spec(row))
        if unknown:
            raise ProblemError(
                422,
                f"no concept {', '.join(repr(u[:100]) for u in unknown)} (give a concept's name "
                "or id: GET /concepts lists them)",
                kind="unknown-concept",
                unknown=unknown,
            )
        overrides = {  # position and override are NOT NULL by the WHERE
            int(pos): float(value)  # type: ignore[arg-type]
            for pos, value in session.execute(
                sa.select(Tag.position, Tag.threshold_override).where(
                    Tag.model_name == model_id,
                    Tag.position.is_not(None),
                    Tag.threshold_override.is_not(None),
                )
            )
        }
        if options.store:
            collection_id = _store_collection(session, scope, options.collection)
    # Named once per process (a checkpoint's digest may be hashed): never on the event loop.
    return _Resolved(tagger, specs, overrides, collection_id, model_id, model_name(services))


def _store_collection(session: Any, scope: CollectionScope, ref: str | None) -> int | None:
    """The collection stored images go to (None: none), as ``POST /assets`` decides it: a
    restricted key's only collection by default, one of its collections when it has several
    (422 ``collection-required`` otherwise). A name or id the key does not see: as absent."""
    from indexer import collection_uploads
    from indexer.db.collection_repo import resolve_collection
    from indexer.db.errors import NotFoundError

    requested = None
    if ref is not None and ref.strip():
        try:
            found = resolve_collection(session, ref)
        except NotFoundError:
            found = None
        if found is None or not scope.sees_collection(found.id):
            raise ProblemError(422, f"no collection {ref[:100]!r}", kind="unknown-collection")
        requested = int(found.id)
    return collection_uploads.upload_target(session, scope, requested)


def _fetch(settings: Settings, url: str) -> bytes:
    """Download one image URL with ingest's SSRF rules, capped at ``api.tag_max_bytes``."""
    from indexer.media import MediaStore

    base = FetchLimits.from_settings(settings)
    limits = FetchLimits(
        max_bytes=min(base.max_bytes, settings.api.tag_max_bytes),
        timeout_s=base.timeout_s,
        # A caller waits on this request: the whole download within one timeout, not ten.
        total_timeout_s=base.timeout_s,
        max_redirects=base.max_redirects,
        allow_private=base.allow_private,
    )
    fetched = fetch_url(url, MediaStore(settings.media_dir).tmp_dir, limits)
    try:
        return fetched.path.read_bytes()
    finally:
        fetched.path.unlink(missing_ok=True)


async def _load(settings: Settings, item: _Input) -> None:
    """Fill ``item.data`` from its URL, or ``item.error`` with why not."""
    if item.url is None:
        return
    try:
        item.data = await run_in_threadpool(_fetch, settings, item.url)
    except FetchError as exc:
        item.error = f"cannot fetch the URL: {exc.reason}"


def _decode_options(settings: Settings, data: bytes, side: int, exif: bool | None) -> Any:
    options = query_decode_options(settings, data, side)
    if exif is None:
        return options
    return DecodeOptions(
        apply_exif_orientation=exif, max_pixels=options.max_pixels, draft_size=options.draft_size
    )


def _prepare(tagger: Tagger, settings: Settings, item: _Input, exif: bool | None) -> Any:
    """Decode one image for the model; None (with ``item.error``) when it cannot be used."""
    assert item.data is not None
    try:
        options = _decode_options(settings, item.data, tagger.image_size, exif)
        return tagger.prepare(item.data, item.name, options)
    except ProblemError as exc:  # over the pixel limit (api.query_max_pixels)
        item.error = exc.detail
    except ImageDecodeError as exc:
        item.error = f"not a usable image: {exc.reason}"
    return None


def _store(
    services: Services, scope: CollectionScope, item: _Input, collection_id: int | None
) -> StoredOut:
    """Ingest one image as ``POST /assets`` does (a worker thread): into ``collection_id``, and
    answered as that route answers the key (a duplicate held by collections it does not see
    reads as new)."""
    from indexer import collection_uploads

    job_id, registered = submit_upload(
        services, io.BytesIO(item.data or b""), item.name, collection_id
    )
    with services.sessions() as session:
        # Judged on the collections that held it before: then, new or a duplicate, the asset
        # is the collection's (idempotent).
        registered = collection_uploads.as_seen_by(session, scope, job_id, registered)
        if collection_id is not None and registered.asset_id is not None:
            from indexer.db.collection_repo import add_assets_to_collection

            add_assets_to_collection(session, collection_id, [int(registered.asset_id)])
            session.commit()
    return StoredOut(
        state=registered.state,
        asset_id=registered.asset_id,
        job_id=job_id,
        reason=registered.reason,
    )


def _outputs(
    tagger: Tagger,
    ready: list[tuple[_Input, Any]],
    results: list[Any],
    resolved: _Resolved,
    options: TagOptions,
) -> dict[int, ImageTagsOut]:
    """Concept scores and each image's selected tags (a worker thread: thousands of
    probabilities per image are compared, and maybe all serialised)."""
    if resolved.concepts:
        tokens = np.stack([r.tokens for r in results])
        concept_probs = tagger.concept_probabilities(tokens, resolved.concepts)
    else:
        concept_probs = np.zeros((len(results), 0), np.float32)
    return {
        id(item): _image_out(
            tagger, item, prep, result, concept_probs[k], resolved, options, resolved.shown_model
        )
        for k, ((item, prep), result) in enumerate(zip(ready, results, strict=True))
    }


def _image_out(
    tagger: Tagger,
    item: _Input,
    prepared: Any,
    result: Any,
    concept_probs: np.ndarray,
    resolved: _Resolved,
    options: TagOptions,
    shown_model: str | None,
) -> ImageTagsOut:
    selected = tagger.select(
        result,
        resolved.concepts,
        concept_probs,
        threshold=options.threshold,
        top_k=options.top_k,
        overrides=resolved.overrides,
    )
    zh = options.lang != "en"
    out = ImageTagsOut(
        name=item.name,
        width=prepared.width,
        height=prepared.height,
        model=shown_model,
        tags=[
            TagOut(
                name=s.name,
                name_zh=s.name_zh if zh else None,
                probability=round(s.probability, 6),
                threshold=round(s.threshold, 6),
                source=s.source,  # type: ignore[arg-type]
                concept_id=s.concept_id,
            )
            for s in selected
        ],
    )
    if options.all_scores:
        vocab = tagger.engine.vocabulary
        scores = {n: float(p) for n, p in zip(vocab.english, result.probabilities, strict=True)}
        for c, p in zip(resolved.concepts, concept_probs, strict=True):
            scores.setdefault(c.name, float(p))  # a concept never hides a built-in tag's score
        out.scores = scores
    return out


def build_router(settings: Settings) -> APIRouter:
    """The tagging route; the body is capped at ``api.tag_max_bytes``."""
    router = APIRouter(tags=["tagging"])

    @router.post(
        "/tag",
        response_model=TagResponse,
        response_model_exclude_none=True,
        summary="Tag images now (files or URLs); nothing stored unless store=true",
        max_body_size=settings.api.tag_max_bytes,
        openapi_extra=_OPENAPI_EXTRA,
        responses={
            403: {"description": "store=true with a read-only key"},
            413: {"description": "the body is over api.tag_max_bytes"},
            415: {"description": "neither multipart, form nor JSON"},
            422: {"description": "no image, too many, bad options, or no image usable"},
            503: {"description": "the model queue is full (Retry-After) or no model here"},
        },
    )
    async def tag(
        request: Request, principal: ReadKey, scope: ScopeDep, services: ServicesDep
    ) -> TagResponse:
        settings = services.settings
        options, files = await _read_request(request, settings)
        _check_counts(options, files, settings)
        if options.store and not principal.allows(Scope.write):
            raise ProblemError(
                403,
                "store=true ingests the images: it needs a key with the 'write' scope "
                f"(this one has: {', '.join(sorted(principal.scopes)) or 'none'})",
                kind="forbidden",
            )
        resolved = await run_in_threadpool(_resolve, services, scope, options)
        tagger = resolved.tagger
        items = files + [_Input(url, url=url) for url in options.urls]
        await asyncio.gather(*(_load(settings, item) for item in items))
        usable = [item for item in items if item.error is None]
        prepared = await asyncio.gather(
            *(run_in_threadpool(_prepare, tagger, settings, it, options.exif) for it in usable)
        )
        ready = [(it, p) for it, p in zip(usable, prepared, strict=True) if p is not None]
        if any(p.width * p.height > _BIG_DECODE for _, p in ready):
            await run_in_threadpool(release_memory)
        if not ready:
            detail = "; ".join(f"{it.name[:100]}: {it.error}" for it in items[:5])
            raise ProblemError(
                422,
                f"no image could be tagged: {detail}",
                kind="bad-image",
                images=[{"name": it.name, "error": it.error} for it in items],
            )
        results = await _run_model(tagger, [p for _, p in ready])
        outs = await run_in_threadpool(_outputs, tagger, ready, results, resolved, options)
        if options.store:
            for item, _ in ready:
                outs[id(item)].stored = await run_in_threadpool(
                    _store, services, scope, item, resolved.collection_id
                )
        images = [
            outs.get(id(item)) or ImageTagsOut(name=item.name, error=item.error) for item in items
        ]
        return TagResponse(images=images, model=resolved.shown_model)

    return router


async def _run_model(tagger: Tagger, prepared: list[Any]) -> list[Any]:
    """The model's results for the prepared images, through the micro-batcher; 503 with
    Retry-After when its queue is full (what this request queued already is withdrawn)."""
    futures = []
    try:
        for image in prepared:
            futures.append(tagger.submit(image))
    except (BatcherFull, BatcherClosed) as exc:
        for future in futures:
            future.cancel()  # not run if the model thread has not taken it yet
        wait = max(1, math.ceil(tagger.batcher.drain_estimate_s()))
        raise ProblemError(
            503,
            f"the model is busy: {exc}; retry in {wait} s (api.tag_queue_size)",
            kind="busy",
            headers={"Retry-After": str(wait)},
        ) from None
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
