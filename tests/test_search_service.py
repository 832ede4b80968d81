"""The search service (indexer.search) over a demo archive with ground truth, on PostgreSQL and
SQLite: tag filters, a free-text concept, similar images, paging, deletion, hostile inputs (in
the service and at the HTTP edge), and no import circle between the layers.

Expected results come from the generator's ground truth (tests/search_support.py), never from the
search code: a broken id mapping, filter or ranking fails these tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from indexer.archive import Archive
from indexer.search import (
    AssetNotFoundError,
    CursorOutOfRangeError,
    InvalidCursorError,
    InvalidQueryError,
    SearchRequest,
    SearchService,
    UnknownTagError,
)
from tests.api_support import make_keys
from tests.search_support import SearchArchive, heldout, jaccard, search_archive

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchArchive]:
    folder = tmp_path_factory.mktemp(f"search-{request.param}")
    with search_archive(folder, request.param) as built:
        yield built


@pytest.fixture(scope="module")
def service(archive: SearchArchive) -> Iterator[SearchService]:
    with Archive(archive.settings) as opened:
        yield SearchService(opened)


def ids(page) -> list[int]:  # noqa: ANN001 - a SearchPage
    return [h.asset_id for h in page.hits]


def test_tag_search_returns_the_assets_that_show_the_tag(archive, service) -> None:
    red = archive.having("red")
    assert len(red) >= 4, "too few red images to judge"
    page = service.search(SearchRequest(all=["red"], limit=50))
    found = ids(page)
    top = found[: len(red)]
    assert sum(i in red for i in top) / len(top) >= 0.8, (top, red)
    assert len(red & set(found)) / len(red) >= 0.8
    hit = page.hits[0]
    assert hit.source == str(archive.paths[hit.asset_id])
    assert hit.reasons[0].kind == "tag" and hit.reasons[0].name == "red"
    assert hit.score == pytest.approx(hit.reasons[0].score)
    assert page.model_id == service.archive.model_id()


def test_none_excludes_and_any_widens(archive, service) -> None:
    wanted = {i for i in archive.having("large") if "red" not in archive.truth[i]}
    page = service.search(SearchRequest(all=["large"], none=["red"], limit=200))
    found = set(ids(page))
    assert found, "nothing found"
    assert len(found & archive.having("red")) <= 0.1 * len(found)
    assert len(found & wanted) >= 0.8 * len(wanted)
    either = archive.having("red") | archive.having("blue")
    page = service.search(SearchRequest(any=["red", "blue"], limit=200))
    assert len(set(ids(page)) & either) >= 0.8 * len(either)


def test_a_free_text_concept_finds_the_images_that_show_it(archive, service) -> None:
    """'navy' was never a tag; RAM++'s open-set head scores it from its descriptions over the
    embeddings stored at ingest."""
    navy = archive.showing("navy")
    assert len(navy) >= 5, "too few navy images to judge"
    concept = heldout("navy")
    page = service.search(
        SearchRequest(text="navy", descriptions=concept.descriptions, limit=len(navy))
    )
    assert sum(i in navy for i in ids(page)) / len(navy) >= 0.75, (ids(page), navy)
    assert page.concept_threshold is not None
    reason = page.hits[0].reasons[0]
    assert reason.kind == "concept" and reason.name == "navy"
    assert reason.above_threshold == (reason.score > page.concept_threshold)
    # Filters apply to the ranked list: no circle among the navy hits that exclude circles.
    page = service.search(
        SearchRequest(text="navy", descriptions=concept.descriptions, none=["circle"], limit=50)
    )
    circles = archive.having("circle")
    assert ids(page) and len(set(ids(page)) & circles) <= 0.1 * len(ids(page))


def test_similar_search_finds_assets_with_the_same_content(archive, service) -> None:
    truth = {i: t for i, t in archive.truth.items() if i not in archive.deleted}
    near, base = [], []
    for query in sorted(truth)[:8]:
        found = ids(service.search(SearchRequest(similar_to=query, limit=5)))
        assert query not in found and len(found) == 5
        near += [jaccard(truth[query], truth[i]) for i in found]
        base += [jaccard(truth[query], truth[i]) for i in truth if i != query]
    assert np.mean(near) >= np.mean(base) + 0.2, (np.mean(near), np.mean(base))


def test_a_query_image_finds_itself(archive, service) -> None:
    asset_id = min(archive.truth)
    image = service.query_image(archive.paths[asset_id].read_bytes())
    page = service.search(SearchRequest(image=image, limit=3))
    assert page.hits[0].asset_id == asset_id
    assert page.hits[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "req",
    [
        SearchRequest(all=["small"]),
        SearchRequest(all=["small"], sort="date"),
        SearchRequest(none=["red"]),
        SearchRequest(similar_to=1),
        SearchRequest(text="a large blue circle", sort="date"),
    ],
    ids=["tags", "tags-by-date", "none-only", "similar", "concept-by-date"],
)
def test_pages_add_up_to_one_big_page(service, req: SearchRequest) -> None:
    import dataclasses

    whole = ids(service.search(dataclasses.replace(req, limit=200)))
    pages, cursor = [], None
    while True:
        page = service.search(dataclasses.replace(req, limit=7, cursor=cursor))
        pages += ids(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == whole and len(set(pages)) == len(pages)


def test_bad_requests_raise_the_indexer_errors(archive, service) -> None:
    with pytest.raises(UnknownTagError) as unknown:
        service.search(SearchRequest(all=["red", "purpel"]))
    assert unknown.value.names == ["purpel"]
    with pytest.raises(AssetNotFoundError):
        service.search(SearchRequest(similar_to=10**9))
    for bad in (
        {"text": "navy", "similar_to": 1},
        {"similar_to": 10**30},
        {"similar_to": True},
        {"limit": 0},
        {"min_score": float("nan")},
        {"descriptions": ["navy blue"]},
    ):
        with pytest.raises(InvalidQueryError):
            SearchRequest(**bad)
    page = service.search(SearchRequest(text="navy", limit=2))
    with pytest.raises(InvalidCursorError, match="another query"):
        service.search(SearchRequest(text="violet", limit=2, cursor=page.next_cursor))


def _cursor(fields: object) -> str:
    raw = json.dumps(fields).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hostile_cursors(backend: str) -> list[tuple[dict, str]]:
    other = {"jd": 2461000.5} if backend == "postgresql" else {"us": 1_700_000_000_000_000}
    return [
        ({"all": ["small"]}, _cursor({"s": 1e308, "i": 5})),
        ({"all": ["small"]}, _cursor({"s": 0.5, "i": 10**30})),
        ({"all": ["small"]}, _cursor({"s": 0.5, "i": True})),
        ({"all": ["small"]}, _cursor({"s": True, "i": 5})),
        ({}, _cursor({"s": None, "i": -3})),
        ({"all": ["small"], "sort": "date"}, _cursor({**other, "i": 5})),
        ({"all": ["small"], "sort": "date"}, _cursor({"us": 10**30, "i": 5})),
        ({"all": ["small"], "sort": "date"}, _cursor({"jd": 1e308, "i": 5})),
    ]


def test_hostile_cursors_are_out_of_range_errors(archive, service) -> None:
    backend = service.archive.engine.dialect.name
    for body, cursor in _hostile_cursors(backend):
        with pytest.raises(CursorOutOfRangeError):
            service.search(SearchRequest(**body, cursor=cursor))


def test_hostile_search_inputs_are_422_at_the_http_edge(archive) -> None:
    """Issue 11: numbers past the columns' ranges, booleans for ids, a date cursor of the other
    database backend: 422 problem documents, never 500."""
    keys = make_keys(archive.settings.database_url)
    backend = "postgresql" if archive.settings.database_url.startswith("postgresql") else "sqlite"
    with TestClient(create_app(archive.settings)) as client:
        hostile = [{"similar_to": 10**30}, {"similar_to": True}, {"limit": 10**30}]
        hostile += [{**body, "cursor": c} for body, c in _hostile_cursors(backend)]
        for body in hostile:
            reply = client.post("/search", json=body, headers=keys.read)
            assert reply.status_code == 422, (body, reply.text)
            assert reply.headers["content-type"].startswith("application/problem+json")
        reply = client.get("/search", params={"similar_to": str(10**30)}, headers=keys.read)
        assert reply.status_code == 422, reply.text
        unknown = client.post("/search", json={"all": ["purpel"]}, headers=keys.read)
        assert unknown.status_code == 422 and unknown.json()["unknown"] == ["purpel"]
        # And the service answers the API as it answers Python callers.
        body = {"text": "navy", "descriptions": list(heldout("navy").descriptions), "limit": 5}
        over_http = client.post("/search", json=body, headers=keys.read).json()
        with Archive(archive.settings) as opened:
            direct = SearchService(opened).search(SearchRequest(**body))
        assert [h["asset"]["id"] for h in over_http["hits"]] == ids(direct)
        assert over_http["concept_threshold"] == pytest.approx(direct.concept_threshold)


def test_a_deleted_asset_leaves_every_kind_of_search(archive, service) -> None:
    red = ids(service.search(SearchRequest(all=["red"], limit=5)))
    victim = red[0]
    neighbour = ids(service.search(SearchRequest(similar_to=red[1], limit=50)))
    concept = heldout("navy")
    assert service.archive.delete_asset(victim)
    archive.deleted.add(victim)
    assert not service.archive.delete_asset(victim)
    assert victim not in ids(service.search(SearchRequest(all=["red"], limit=200)))
    assert victim not in ids(service.search(SearchRequest(similar_to=red[1], limit=200)))
    text = SearchRequest(text="navy", descriptions=concept.descriptions, limit=200)
    assert victim not in ids(service.search(text))
    assert len(neighbour) >= 2  # the similar list had entries to lose
    with pytest.raises(AssetNotFoundError):
        service.search(SearchRequest(similar_to=victim))


# ---------- layering ----------
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ram_pp", "indexer", "api")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (inside functions too); imports under
    ``if TYPE_CHECKING:`` never run and are left out."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, level - 1 packages up
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return {m for m in found if m in known}


def _project_modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if ".venv" not in p.parts
    }


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a longer loop (Tarjan's
    strongly connected components of more than one module, or a module importing itself)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    return found


def test_no_import_circle_between_project_modules() -> None:
    """No modules import each other, not even through imports inside functions (the circle
    between api/search.py, api/services.py and api/concept_backfill.py is gone for good)."""
    modules = _project_modules()
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    cycles = _import_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones() -> None:
    """Requests go down: api -> indexer -> ram_pp, never back (imports inside functions count)."""
    modules = _project_modules()
    known = set(modules)
    below = {"ram_pp": ("indexer", "api"), "indexer": ("api",)}
    wrong = [
        f"{name} imports {target}"
        for name, path in modules.items()
        for target in _imports(path, known)
        if target.split(".")[0] in below.get(name.split(".")[0], ())
    ]
    assert not wrong, wrong
