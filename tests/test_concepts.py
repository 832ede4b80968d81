"""Concepts: construction rules, the upstream JSON format, encoding, and the LLM describer.

The LLM describer is tested against a real HTTP server on 127.0.0.1 (a stand-in for the
OpenAI-compatible endpoint, which cannot be reached here) that answers with canned
chat-completions JSON and records what it was sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ram_pp.concepts import (
    LLM_PROMPTS,
    PROMPT_TEMPLATES,
    Concept,
    LlmDescriber,
    LlmError,
    base_description,
    encode_concepts,
    load_upstream_json,
    make_concept,
    parse_answers,
    save_upstream_json,
)
from ram_pp.text_encoder import build_random_clip_text_encoder, load_text_encoder

SAMPLE = Path(__file__).parent / "fixtures" / "concepts_sample.json"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_text_encoder(build_random_clip_text_encoder(tmp_path_factory.mktemp("clip")))


def test_concept_always_has_base_description_first_once():
    c = Concept(
        "  Brutalist   Stairwell ",
        ("Concrete  steps.", "concrete steps.", "a photo of a brutalist stairwell."),
    )
    assert c.name == "Brutalist Stairwell"
    # Repeats other than the base are kept: upstream weighs a repeated description twice.
    assert c.descriptions == (
        "a photo of a brutalist stairwell.",
        "Concrete  steps.",
        "concrete steps.",
    )
    assert Concept("Khinkali").descriptions == (base_description("Khinkali"),)


def test_concept_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        Concept("   ")
    with pytest.raises(TypeError):
        Concept("x", "one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="description 0"):
        Concept("x", ("",))
    with pytest.raises(ValueError, match="longer"):
        Concept("x" * 500)


def test_templates_are_filled_and_within_the_required_count():
    assert 20 <= len(PROMPT_TEMPLATES) <= 60
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)
    c = make_concept(
        "khinkali", ["Georgian dumplings with pleated tops.", "a drawing of a khinkali."]
    )
    assert c.descriptions[:2] == ("a photo of a khinkali.", "Georgian dumplings with pleated tops.")
    assert "a close-up photo of a khinkali." in c.descriptions
    assert len(c.descriptions) == 2 + len(PROMPT_TEMPLATES)
    assert make_concept("khinkali", use_templates=False).descriptions == ("a photo of a khinkali.",)


def test_load_upstream_sample_and_round_trip(tmp_path):
    raw = json.loads(SAMPLE.read_text())
    concepts = load_upstream_json(SAMPLE)
    assert [c.name for c in concepts] == [next(iter(e)) for e in raw]
    for c, entry in zip(concepts, raw, strict=True):
        descs = next(iter(entry.values()))
        assert c.descriptions == tuple(descs)  # upstream rows kept as they are, base first
        assert descs[0] == base_description(c.name)
    out = save_upstream_json(concepts, tmp_path / "sub" / "c.json")
    assert load_upstream_json(out) == concepts


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON"),
        ('{"a": ["x"]}', "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"a": ["x"], "b": ["y"]}]', "exactly one concept"),
        ('[{"a": "x"}]', "list of strings"),
        ('[{"a": ["x"]}, {"A": ["y"]}]', "appears twice"),
        ('[{"": ["x"]}]', "entry 0"),
    ],
)
def test_load_upstream_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_upstream_json(path)


def test_encode_concepts_builds_a_ragged_bank(encoder):
    concepts = [Concept("ale", ("a glass of beer.",)), Concept("aloe"), make_concept("anole")]
    bank = encode_concepts(concepts, encoder, batch_size=7)
    counts = [len(c.descriptions) for c in concepts]
    assert bank.embeddings.shape == (3, max(counts), 512)
    assert bank.mask is not None and bank.mask.sum(1).tolist() == counts
    for k, c in enumerate(concepts):
        torch.testing.assert_close(
            bank.embeddings[k, : counts[k]], encoder.encode(list(c.descriptions)), atol=1e-5, rtol=0
        )
        assert bank.embeddings[k, counts[k] :].abs().sum() == 0
    norms = bank.embeddings.norm(dim=-1)[bank.mask]
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert not torch.allclose(F.normalize(bank.embeddings[0, 0], dim=0), bank.embeddings[1, 0])
    with pytest.raises(ValueError):
        encode_concepts([], encoder)


def test_parse_answers_strips_bullets_and_limits():
    text = '1. Round dumplings.\n- "Pleated top"\n\n2) Steaming hot\n* x\n3: Served on a plate'
    assert parse_answers(text, 3) == ["Round dumplings.", "Pleated top", "Steaming hot"]


class _ChatServer:
    """A real local HTTP server that speaks just enough chat-completions."""

    def __init__(self, status: int = 200, reply: str | None = None) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                question = body["messages"][-1]["content"]
                n = len(outer.requests)
                content = "\n".join(
                    f"{i + 1}. answer {n}.{i} to: {question[:30]}" for i in range(5)
                )
                payload = (
                    reply
                    if reply is not None
                    else json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "choices": [
                                {"index": 0, "message": {"role": "assistant", "content": content}}
                            ],
                        }
                    )
                )
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_llm_describer_asks_each_prompt_and_caches(tmp_path):
    with _ChatServer() as srv:
        llm = LlmDescriber(
            srv.url, "tiny-llm", api_key="k123", cache_dir=tmp_path, answers_per_prompt=3
        )
        answers = llm.describe("Khinkali")
        assert len(srv.requests) == len(LLM_PROMPTS)
        path, headers, body = srv.requests[0]
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer k123"
        assert body["model"] == "tiny-llm" and "Khinkali" in body["messages"][-1]["content"]
        assert len(answers) == 3 * len(LLM_PROMPTS)  # 5 lines each, limited to 3
        assert answers[0].startswith("answer 1.0 to:")
        # Cached per (model, concept): no new request, same answers, case-insensitive name.
        assert llm.describe("khinkali") == answers
        assert len(srv.requests) == len(LLM_PROMPTS)
        # Another model is another cache entry.
        other = LlmDescriber(srv.url + "/chat/completions", "other", cache_dir=tmp_path)
        other.describe("khinkali")
        assert len(srv.requests) == 2 * len(LLM_PROMPTS)
        assert "Authorization" not in srv.requests[-1][1]
        c = make_concept("Khinkali", use_templates=False, llm=llm)
        assert c.descriptions == ("a photo of a khinkali.", *answers)


def test_llm_describer_errors_are_clear(tmp_path):
    with _ChatServer(status=500, reply='{"error": "boom"}') as srv:
        with pytest.raises(LlmError, match="HTTP 500"):
            LlmDescriber(srv.url, "m").describe("x")
    with _ChatServer(reply='{"nothing": 1}') as srv:
        with pytest.raises(LlmError, match="not chat-completions"):
            LlmDescriber(srv.url, "m").describe("x")
    with _ChatServer() as srv:
        dead = srv.url  # server closed below: connection refused
    with pytest.raises(LlmError, match="failed"):
        LlmDescriber(dead, "m", timeout_s=2).describe("x")
    with pytest.raises(ValueError, match="RAMDEX_LLM__URL"):
        LlmDescriber("", "m")


@pytest.fixture()
def cli_home(tmp_path, monkeypatch):
    from indexer.settings import get_settings

    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAMDEX_LLM__URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


# `ramdex concepts import` (into the database) is tested in tests/test_concepts_cli.py.


def test_cli_describe(cli_home, monkeypatch):
    from typer.testing import CliRunner

    from api.cli.concepts import app
    from indexer.settings import get_settings

    runner = CliRunner()
    res = runner.invoke(app, ["describe", "Khinkali", "-d", "Georgian dumplings.", "--json"])
    assert res.exit_code == 0, res.output
    descs = json.loads(res.output)["Khinkali"]
    assert descs[:2] == ["a photo of a khinkali.", "Georgian dumplings."]
    assert len(descs) == 2 + len(PROMPT_TEMPLATES)
    assert runner.invoke(app, ["import", str(SAMPLE)]).exit_code == 0
    res = runner.invoke(app, ["describe", "aloe"])
    raw = json.loads(SAMPLE.read_text())
    aloe = next(e["Aloe"] for e in raw if "Aloe" in e)
    assert res.exit_code == 0 and f"Aloe (imported, {len(aloe)} descriptions)" in res.output
    with _ChatServer() as srv:
        monkeypatch.setenv("RAMDEX_LLM__URL", srv.url)
        monkeypatch.setenv("RAMDEX_LLM__MODEL", "tiny-llm")
        get_settings.cache_clear()
        res = runner.invoke(app, ["describe", "brutalist stairwell", "--no-templates"])
        assert res.exit_code == 0, res.output
        assert "generated with LLM" in res.output and "answer 1.0 to:" in res.output
        assert len(srv.requests) == len(LLM_PROMPTS)
        res = runner.invoke(app, ["describe", "quay", "--no-llm", "--no-templates", "--json"])
        assert json.loads(res.output) == {"quay": ["a photo of a quay."]}
        assert len(srv.requests) == len(LLM_PROMPTS)
