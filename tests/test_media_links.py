"""Signed links to originals (``POST /assets/{id}/link``, ``GET /media/{id}``): what lets the
web UI's ``<video src>`` stream a video with Range requests without a key header.

The real app on SQLite, a real video (PyAV) uploaded through ``POST /assets``, a real key
revoked through the auth module.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.media_fixtures import encode_video, scene_picture


@pytest.fixture
def linked(tmp_path: Path):
    """(client, read key headers, asset id, video bytes, database URL)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api_support import fresh_database, make_keys, make_settings

    pictures = [scene_picture("white background", "circle", "red")]
    data = encode_video(tmp_path / "clip.mp4", [(pictures[0], 2.0)]).read_bytes()
    with fresh_database("sqlite", tmp_path) as url:
        settings = make_settings(tmp_path / "home", url)
        keys = make_keys(url)
        with TestClient(create_app(settings)) as client:
            up = client.post(
                "/assets", files={"file": ("clip.mp4", data, "video/mp4")}, headers=keys.write
            )
            assert up.status_code == 202, up.text
            yield client, keys.read, up.json()["asset_ids"][0], data, url


def test_signed_link_streams_with_ranges(linked) -> None:
    client, read, asset_id, data, _ = linked
    assert client.post(f"/assets/{asset_id}/link").status_code == 401  # a key is needed
    made = client.post(f"/assets/{asset_id}/link", headers=read)
    assert made.status_code == 200, made.text
    link = made.json()
    assert link["expires_at"] > time.time() + 600
    whole = client.get(link["url"])  # no key header
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(link["url"], headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    # Saved under the name it was uploaded as, not the media store's sha256 name.
    for reply in (whole, client.get(f"/assets/{asset_id}/original", headers=read)):
        assert 'filename="clip.mp4"' in reply.headers["content-disposition"]


def test_the_access_log_does_not_keep_usable_links() -> None:
    """uvicorn's access line names the path with its query; the signature is masked, so a log
    reader cannot replay the link while it is valid."""
    import logging

    from api.routers.media_links import HideLinkSignatures, build_router

    build_router()  # as the app does: the filter is on uvicorn's access logger
    access = logging.getLogger("uvicorn.access").filters
    assert sum(isinstance(f, HideLinkSignatures) for f in access) == 1

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', None, None
    )
    record.args = ("127.0.0.1:5", "GET", "/media/7?key=abc&exp=99&sig=0badc0ffee", "1.1", 206)
    assert HideLinkSignatures().filter(record)
    line = record.getMessage()
    assert "0badc0ffee" not in line and "/media/7?key=abc&exp=99&sig=..." in line


def _with(url: str, **changed: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changed
    path = changed.pop("path", parts.path)
    return path + "?" + "&".join(f"{k}={v}" for k, v in query.items() if k != "path")


def test_a_link_opens_one_asset_until_it_expires_or_its_key_is_revoked(linked) -> None:
    from api.auth import revoke_key
    from indexer.db.session import session_scope

    client, read, asset_id, _, url = linked
    link = client.post(f"/assets/{asset_id}/link", headers=read).json()["url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    sig = query["sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert client.get(_with(link, sig=flipped)).status_code == 404  # tampered
    assert client.get(_with(link, exp=str(int(query["exp"]) + 1))).status_code == 404  # longer
    assert client.get(_with(link, path=f"/media/{asset_id + 1}")).status_code == 404  # other asset
    assert client.get(_with(link, exp=str(int(time.time()) - 1))).status_code == 404  # expired
    assert (
        client.get(f"/media/{asset_id}?exp={query['exp']}").status_code == 401
    )  # unsigned: no link at all
    assert client.post("/assets/999999/link", headers=read).status_code == 404
    assert client.get(link).status_code == 200
    with session_scope(url) as session:
        assert revoke_key(session, query["key"])
        session.commit()
    assert client.get(link).status_code == 404  # dies with its key
