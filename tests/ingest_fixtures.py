"""Generated images and bad files for the ingest, Celery and fault tests (no downloads).

Images are "photo-like": smooth colour gradients plus noise and a few shapes, so JPEG, WebP and
AVIF encoders do real work and different seeds give visibly different pictures.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import indexer.media  # noqa: F401 - registers the HEIF opener used by save(format="HEIF")


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, noise and shapes."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.random(3).astype(np.float32) * 6.28
    channels = [
        0.5 + 0.5 * np.sin(phase[c] + 3.0 * x * (c + 1) + 2.0 * y * (3 - c)) for c in range(3)
    ]
    base = np.stack(channels, axis=-1) * 200.0
    noise = rng.normal(0.0, 12.0, size=(height, width, 3)).astype(np.float32)
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = min(width, x0 + int(rng.integers(width // 8 + 1, width // 2 + 2)))
        y1 = min(height, y0 + int(rng.integers(height // 8 + 1, height // 2 + 2)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, max(x0, x1), max(y0, y1)], fill=color)
    return image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """Image bytes in a Pillow format (JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, AVIF)."""
    out = io.BytesIO()
    if fmt == "JPEG":
        kwargs.setdefault("quality", 90)
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def write_images(
    folder: Path, count: int, size: tuple[int, int] = (96, 72), start: int = 0
) -> list[Path]:
    """``count`` distinct JPEG files named img_NNNN.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img_{i:04d}.jpg"
        path.write_bytes(encode(photo_like(*size, seed=i), "JPEG"))
        paths.append(path)
    return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_huge_valid(path: Path, side: int = 30_000) -> Path:
    """A complete, valid 1-bit ``side`` x ``side`` PNG (about 900 Mpx), written streaming."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(1)
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
        parts = []
        block = row * 1000
        for _ in range(side // 1000):
            parts.append(compressor.compress(block))
        parts.append(compressor.compress(row * (side % 1000)))
        parts.append(compressor.flush())
        out.write(_png_chunk(b"IDAT", b"".join(parts)))
        out.write(_png_chunk(b"IEND", b""))
    return path


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file per kind of bad input; keys name the kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = encode(photo_like(120, 90, seed=999), "JPEG")
    files = {
        "zero_byte": folder / "zero.jpg",
        "non_image": folder / "notes.jpg",
        "truncated": folder / "truncated.jpg",
        "corrupt": folder / "corrupt.png",
        "bomb": folder / "bomb.png",
    }
    files["zero_byte"].write_bytes(b"")
    files["non_image"].write_bytes(b"This is a text file pretending to be a JPEG.\n" * 20)
    files["truncated"].write_bytes(good[: len(good) // 3])
    png = bytearray(encode(photo_like(64, 48, seed=998), "PNG"))
    # Keep the signature and IHDR intact, scramble the compressed pixel data.
    for i in range(60, len(png) - 20, 7):
        png[i] ^= 0x5A
    files["corrupt"].write_bytes(bytes(png))
    files["bomb"].write_bytes(png_bomb())
    files["huge_30000"] = png_huge_valid(folder / "huge_30000.png")
    return files


def unique_name(prefix: str) -> str:
    """A name no other test run (or engineer) uses at the same time."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@contextmanager
def postgres_database(prefix: str = "ramdex_ingest") -> Iterator[str]:
    """A fresh PostgreSQL database on the shared server, dropped afterwards; yields its URL."""
    import psycopg

    name = unique_name(prefix)
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from indexer.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --------------------------------------------------------------------------------------------
# Real Celery worker processes


@dataclass
class WorkerProcess:
    """A ``celery worker`` subprocess in its own process group, logging to a file."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as the OOM killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """End the worker at test teardown. Celery's warm and cold shutdowns both take seconds
        here; nothing is left to finish at teardown, so SIGKILL (the queues are deleted too)."""
        self.kill()


def worker_env(settings_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: ours, plus ramdex settings, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(settings_env)
    env.update(extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def start_worker(env: dict[str, str], queues: str, log_path: Path, name: str) -> WorkerProcess:
    """Start ``celery -A indexer.celery_app worker`` (prefork, one child) on the given queues."""
    command = [
        sys.executable, "-m", "celery", "-A", "indexer.celery_app", "worker",
        "--queues", queues, "--concurrency", "1", "--pool", "prefork", "--loglevel", "info",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"{name}@%h",
    ]  # fmt: skip
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill() reaches the pool children
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    log_file.close()
    return WorkerProcess(process, log_path)


def redis_url_for_tests() -> str:
    """A Redis database number few others use (the queues get unique names too)."""
    import random

    return f"redis://127.0.0.1:6379/{random.randint(8, 15)}"


def stack_env(home: Path, db_url: str, broker_url: str, queue_prefix: str) -> dict[str, str]:
    """RAMDEX_* variables for a worker sharing the test's home, database and broker."""
    return {
        "RAMDEX_HOME": str(home),
        "RAMDEX_DATABASE__URL": db_url,
        "RAMDEX_BROKER__URL": broker_url,
        "RAMDEX_BROKER__MODEL_QUEUE": f"{queue_prefix}.model",
        "RAMDEX_BROKER__DEFAULT_QUEUE": f"{queue_prefix}.default",
        "RAMDEX_BROKER__BATCH_SIZE": "4",
        "RAMDEX_MODEL__NAME": "test_micro",
        "RAMDEX_MODEL__DEVICE": "cpu",
        "RAMDEX_MODEL__BATCH_SIZE": "4",
        "RAMDEX_INGEST__DECODE_WORKERS": "1",
    }


def settings_from_env(env: dict[str, str]):
    """The Settings a worker with ``env`` sees (for the producer side in the test process)."""
    from indexer.settings import Settings

    def section(prefix: str) -> dict[str, str]:
        return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}

    return Settings(
        home=Path(env["RAMDEX_HOME"]),
        database={"url": env["RAMDEX_DATABASE__URL"]},
        broker=section("RAMDEX_BROKER__"),
        model=section("RAMDEX_MODEL__"),
        ingest=section("RAMDEX_INGEST__"),
    )


def cleanup_redis(settings) -> None:
    """Delete this run's queues and its entries in the broker's unacknowledged-message hash
    (workers killed by the tests leave some, which a later worker would otherwise restore)."""
    import json

    import redis

    queues = {settings.broker.model_queue, settings.broker.default_queue}
    client = redis.Redis.from_url(settings.broker.url)
    for tag, payload in client.hscan_iter("unacked"):
        try:
            routing_key = json.loads(payload)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in queues:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.delete(*queues)
