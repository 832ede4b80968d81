"""A real S3-protocol server for tests: moto's, started as a subprocess on a free loopback port
(``pytest_plugins = ["tests.s3_support"]`` gives a module its ``server`` and ``bucket`` fixtures).

Used by tests/test_token_store_s3.py, tests/test_cli_tokens.py and tests/test_api_s3_unavailable.py.
moto[server] is a dev extra; boto3 a runtime dependency.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    """Start a moto S3 server; returns the process and its endpoint URL once it accepts."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, endpoint
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """Kill a server started by :func:`start_server` (also when it was SIGSTOPped)."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=10)


def s3_client(endpoint: str):  # noqa: ANN201 - a boto3 client
    """A plain boto3 S3 client on ``endpoint`` (to set up buckets and look at objects)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def s3_creds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake credentials in the environment for one test."""
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A moto S3 server for the module, with fake credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDS.items():
            mp.setenv(key, value)
        proc, endpoint = start_server()
        try:
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def bucket(server: str) -> str:
    """A new, empty bucket on the module's server."""
    name = f"tok-{uuid.uuid4().hex[:10]}"
    s3_client(server).create_bucket(Bucket=name)
    return name
