"""Routes under /taxonomy: the vocabulary of synonyms, preferred labels and hierarchy.

- ``GET /taxonomy/terms/{term}`` (read key): the concept a name names, with its preferred
  labels, aliases, parents and children.
- ``GET /taxonomy/expand?term=animal&descendants=true`` (read key): the label keys a search
  for the term matches (what search uses), each with the matching term and why.
- ``GET /taxonomy`` (read key): the stored taxonomy as a vocabulary file (``format=json|csv``).
- ``GET /taxonomy/stats`` (read key): counts.
- ``PUT /taxonomy`` (admin key: it changes what every search matches, like a threshold
  override): a vocabulary file as the body, ``application/json`` or ``text/csv`` (anything
  else: told apart by its first character); replaces the stored taxonomy in one transaction,
  ``?merge=true`` merges it on top. The body is capped at ``api.max_json_bytes``; larger files
  go through ``ramdex taxonomy import``. An invalid file is a 422 problem naming the line or
  entry, and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import AdminKey, ReadKey, ScopeDep, SessionDep
from api.problems import ProblemError
from api.schemas import NO_NUL
from indexer.db import taxonomy_repo as repo
from indexer.taxonomy import TaxonomyFileError, parse_bytes, to_csv, to_json

router = APIRouter(prefix="/taxonomy", tags=["taxonomy"])

TermName = Annotated[
    str, Path(min_length=1, max_length=256, pattern=NO_NUL, description="any name of a concept")
]


class ConceptRefOut(BaseModel):
    """A concept by key and preferred English label."""

    key: str
    label: str


class AliasOut(BaseModel):
    """A name of a concept other than its preferred English label."""

    label: str
    lang: str
    preferred: bool = Field(description="the preferred label of its language")


class TermOut(BaseModel):
    """The concept a name names."""

    key: str = Field(description="the concept's key: its preferred English label, case-folded")
    label: str = Field(description="preferred English label")
    matched: str = Field(description="the name asked about, as the taxonomy writes it")
    labels: dict[str, str] = Field(description="preferred label per language")
    aliases: list[AliasOut]
    parents: list[ConceptRefOut]
    children: list[ConceptRefOut]


class ExpansionOut(BaseModel):
    """One label key a search term matches."""

    key: str
    matched_term: str
    via: Literal["name", "synonym", "descendant"]
    depth: int


class ExpandOut(BaseModel):
    """What a search for ``term`` matches."""

    term: str
    expansions: list[ExpansionOut]


class ImportOut(BaseModel):
    """What an upload stored."""

    concepts: int
    terms: int
    edges: int
    bare: list[str] = Field(description="broader tag names without an entry, stored as concepts")


class StatsOut(BaseModel):
    """What the stored taxonomy holds."""

    concepts: int
    terms: int
    terms_by_lang: dict[str, int]
    edges: int
    roots: int
    depth: int


@router.get("/terms/{term}", response_model=TermOut, summary="A term's concept")
def term(term: TermName, _: ReadKey, session: SessionDep) -> TermOut:
    info = repo.describe(session, term)
    if info is None:
        raise ProblemError(404, f"the taxonomy has no term {term!r}", kind="not-found")
    return TermOut.model_validate(asdict(info))


@router.get("/expand", response_model=ExpandOut, summary="What a search for a term matches")
def expand(
    _: ReadKey,
    session: SessionDep,
    term: Annotated[str, Query(min_length=1, max_length=256, pattern=NO_NUL)],
    descendants: Annotated[bool, Query(description="include narrower concepts")] = False,
) -> ExpandOut:
    found = repo.expand(session, term, descendants=descendants)
    return ExpandOut(term=term, expansions=[ExpansionOut(**asdict(e)) for e in found])


@router.get("/stats", response_model=StatsOut, summary="Counts of the stored taxonomy")
def stats(_: ReadKey, session: SessionDep) -> StatsOut:
    return StatsOut(**asdict(repo.stats(session)))


@router.get(
    "",
    summary="The stored taxonomy as a vocabulary file",
    response_class=Response,
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def export(_: ReadKey, session: SessionDep, format: Literal["json", "csv"] = "json") -> Response:
    taxonomy = repo.load(session)
    if format == "csv":
        return Response(to_csv(taxonomy), media_type="text/csv; charset=utf-8")
    return Response(to_json(taxonomy), media_type="application/json")


def _store(session: SessionDep, data: bytes, content_type: str | None, merge: bool) -> ImportOut:
    try:
        concepts = parse_bytes(data, content_type=content_type)
        result = repo.import_concepts(session, concepts, merge=merge)
    except TaxonomyFileError as exc:
        session.rollback()
        raise ProblemError(422, exc.message, kind="invalid-taxonomy") from exc
    session.commit()
    return ImportOut(**asdict(result))


@router.put(
    "",
    response_model=ImportOut,
    summary="Replace (or merge into) the taxonomy with a vocabulary file",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
    responses={422: {"description": "not a valid vocabulary file (the detail names the line)"}},
)
async def upload(
    request: Request,
    _: AdminKey,
    scope: ScopeDep,
    session: SessionDep,
    merge: Annotated[bool, Query(description="merge on top of the stored taxonomy")] = False,
) -> ImportOut:
    scope.require_unrestricted("the taxonomy")  # what every collection's searches match
    data = await request.body()  # capped by the app's body limit (api.max_json_bytes)
    if not data.strip():
        raise ProblemError(
            422, "the body is empty: send a vocabulary file", kind="invalid-taxonomy"
        )
    return await run_in_threadpool(
        _store, session, data, request.headers.get("content-type"), merge
    )
