"""Deployment files: Docker cannot run here, so check what can be checked without it.

The Dockerfiles and the compose file parse and hang together (every copied path exists, every
service has a health check, the API waits for the migration, the GPU worker reserves a GPU), and
the commands they run exist and work outside a container: the migration, the key command, the
API server with its health-check command, and the worker health-check command.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def dockerfile(name: str) -> DockerfileParser:
    parser = DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))
    assert parser.structure, f"{name} is empty"
    return parser


def instructions(parser: DockerfileParser, kind: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == kind]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_parse_and_copy_existing_paths(name: str) -> None:
    parser = dockerfile(name)
    assert parser.baseimage, "no FROM"
    for value in instructions(parser, "COPY"):
        *sources, _dest = shlex.split(value)
        for source in sources:
            matches = list(ROOT.glob(source))
            assert matches or source.endswith("*"), f"{name}: COPY {source} matches nothing"
    users = instructions(parser, "USER")
    assert users and users[-1] not in ("root", "0"), "runs as root"
    cmd = json.loads(instructions(parser, "CMD")[-1])
    assert cmd[0] == "ramdex"
    assert instructions(parser, "HEALTHCHECK"), "no health check"


def test_worker_image_has_cuda_and_the_api_image_cpu_torch() -> None:
    assert dockerfile("Dockerfile.worker").baseimage.startswith("nvidia/cuda:")
    runs = " ".join(instructions(dockerfile("Dockerfile.api"), "RUN"))
    assert "download.pytorch.org/whl/cpu" in runs


def test_compose_wires_the_services(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu"} <= set(services)
    for name in ("postgres", "redis", "api", "worker-gpu", "worker-cpu"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker-gpu", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    named = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in named, f"{name}: volume {source}"
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        env = service.get("environment") or {}
        if name not in ("postgres", "redis"):
            assert env["RAMDEX_DATABASE__URL"].startswith("postgresql+psycopg://"), name
            assert env["RAMDEX_BROKER__URL"].startswith("redis://"), name
    # Workers consume the queues the settings name.
    from indexer.settings import BrokerSettings

    queues = {
        services[n]["command"][services[n]["command"].index("--queues") + 1]
        for n in ("worker-gpu", "worker-cpu")
    }
    assert queues == {BrokerSettings().model_queue, BrokerSettings().default_queue}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    return {
        **os.environ,
        "RAMDEX_HOME": str(tmp_path / "home"),
        "RAMDEX_DATABASE__URL": url,
        "RAMDEX_MODEL__NAME": "test_micro",
        "RAMDEX_BROKER__URL": "",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def _run(
    command: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_migrate_then_serve_then_health_check_work_outside_a_container(compose, tmp_path) -> None:
    env = _env(tmp_path)
    migrate = _run(compose["services"]["migrate"]["command"], env)
    assert migrate.returncode == 0, migrate.stderr
    from indexer.migrate import is_up_to_date

    assert is_up_to_date(env["RAMDEX_DATABASE__URL"])

    key = _run(["ramdex", "keys", "create", "--scope", "read", "--name", "compose", "--json"], env)
    assert key.returncode == 0, key.stderr
    assert json.loads(key.stdout)["token"].startswith("rdx_")

    port = _free_port()
    command = compose["services"]["api"]["command"]
    command = [
        *command[: command.index("--port") + 1],
        str(port),
        *command[command.index("--port") + 2 :],
    ]
    command[command.index("--host") + 1] = "127.0.0.1"  # not 0.0.0.0 on a shared test machine
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        probe = [
            part.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            for part in compose["services"]["api"]["healthcheck"]["test"][1:]
        ]
        deadline = time.monotonic() + 60
        while True:
            check = _run(probe, env, timeout=10)
            if check.returncode == 0:
                break
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The same health check fails once the server is gone.
    assert _run(probe, env, timeout=10).returncode != 0


def test_worker_commands_exist_and_the_health_check_needs_a_live_worker(compose, tmp_path) -> None:
    env = _env(tmp_path, RAMDEX_BROKER__URL="redis://127.0.0.1:6379/15")
    worker = compose["services"]["worker-cpu"]["command"]
    assert _run([*worker, "--help"], env).returncode == 0
    test = compose["services"]["worker-cpu"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # No worker of that name runs here: the check must fail, quickly and cleanly.
    probe = test[1].replace("$$", "$").replace("--timeout 10", "--timeout 1")
    result = subprocess.run(
        probe,
        shell=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "No nodes replied" in result.stdout + result.stderr, result.stderr[-2000:]
