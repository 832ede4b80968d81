"""Server-Timing on search responses: every phase of a new concept's search is reported, a
repeated concept says its ranking was cached (and runs no model phase), and the header parses."""

from __future__ import annotations

import uuid

import pytest

from api.server_timing import header_value, parse_header
from indexer.search.timing import Phases

pytest_plugins = ["tests.api_support"]

MODEL_PHASES = ("encode", "calibrate", "stage1", "stage2")


def timed_search(archive, **body) -> tuple[dict[str, float], dict[str, str]]:
    reply = archive.client.post("/search", json=body, headers=archive.keys.read)
    assert reply.status_code == 200, reply.text
    return parse_header(reply.headers["server-timing"])


def test_new_concept_reports_every_phase_then_cached(archive) -> None:
    text = f"striped kite {uuid.uuid4().hex[:6]}"
    durations, notes = timed_search(archive, text=text, limit=5)
    assert notes == {"ranking": "built"}
    for name in ("request", "db", *MODEL_PHASES, "rows", "page", "respond", "total"):
        assert name in durations, (name, durations)
    parts = sum(v for k, v in durations.items() if k != "total")
    # The phases add up to the total: respond is the rest, and rounding is 0.1 ms a phase.
    assert parts == pytest.approx(durations["total"], abs=0.1 * len(durations))
    assert durations["encode"] > 0 and durations["stage2"] + durations["calibrate"] > 0

    again, notes = timed_search(archive, text=text, limit=5)
    assert notes == {"ranking": "cached"}
    assert not set(MODEL_PHASES) & set(again)


def test_tag_search_and_other_routes_have_a_total(archive) -> None:
    durations, _ = timed_search(archive, limit=3)
    assert {"db", "rows", "total"} <= set(durations)
    reply = archive.client.get("/healthz")
    assert "total" in parse_header(reply.headers["server-timing"])[0]


def test_header_round_trip() -> None:
    phases = Phases()
    phases.add("encode", 0.0123)
    phases.add("encode", 0.001)  # a phase recorded twice adds up
    phases.notes["ranking"] = "built"
    durations, notes = parse_header(header_value(phases, 0.02))
    assert durations == {"encode": 13.3, "respond": 6.7, "total": 20.0}
    assert notes == {"ranking": "built"}
