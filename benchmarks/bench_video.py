"""Video ingest speed on CPU: frames decoded per second and assets per second.

Encodes (here, with PyAV) a 60 s 640x360 H.264 video at 25 fps with a new scene every 5 s and
a key frame every second, then times:

- the baseline: decoding every frame and scaling each to the analysis size (what a selector
  that looks at every frame does);
- ramdex's keyframe path (:func:`indexer.frames.video.decode_video`: key frames only, scene
  change, downscaled out of the decoder);
- whole-file ingest of a few such videos with the demo model (assets/s, frames/s scored).

``uptime``'s load average is printed beside each figure (the machine is shared).

    python benchmarks/bench_video.py [--videos 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.frames import FrameOptions  # noqa: E402
from indexer.frames.video import decode_video  # noqa: E402
from tests.media_fixtures import encode_video, scene_picture  # noqa: E402

SCENES = [
    ("white background", "circle", "red"),
    ("landscape background", "square", "blue"),
    ("beige background", "star", "yellow"),
    ("grid background", "heart", "green"),
]


def load() -> str:
    """The load averages ``uptime`` reports."""
    out = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    return out.strip().split("load average:")[-1].strip()


def make_video(path: Path, seconds: int, seed: int = 0) -> Path:
    """Scenes in an order set by ``seed`` (distinct bytes: no duplicate assets)."""
    scenes = [
        (scene_picture(*SCENES[(i * (seed + 1) + seed) % len(SCENES)], size=360), 5.0)
        for i in range(seconds // 5)
    ]
    scenes = [(p.resize((640, 360)), s) for p, s in scenes]
    return encode_video(path, scenes, fps=25, gop=25)


def every_frame(path: Path) -> tuple[int, float]:
    """Baseline: decode all frames, scale each to 64 x 64 (a histogram's input)."""
    start = time.perf_counter()
    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.reformat(width=64, height=64, format="rgb24").to_ndarray()
            n += 1
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        paths = [make_video(folder / f"v{i}.mp4", args.seconds) for i in range(args.videos)]
        n, wall = every_frame(paths[0])
        print(
            f"baseline, every frame: {n} frames in {wall:.2f} s = {n / wall:.0f} frames/s "
            f"decoded ({args.seconds / wall:.0f}x real time)  [load {load()}]"
        )
        options = FrameOptions(frame_side=384)
        start = time.perf_counter()
        media = decode_video(paths[0], options, "v0")
        wall = time.perf_counter() - start
        print(
            f"ramdex keyframes: {media.frames_decoded} frames decoded, {len(media.frames)} kept, "
            f"in {wall:.2f} s = {media.frames_decoded / wall:.0f} frames/s decoded, "
            f"{args.seconds / wall:.0f}x real time  [load {load()}]"
        )
        from indexer.ingest.pipeline import ingest
        from indexer.settings import Settings
        from ram_pp.factory import DEMO_MODEL

        settings = Settings(
            home=Path(tmp) / "home",
            database={"url": f"sqlite:///{tmp}/bench.sqlite3"},
            model={"name": DEMO_MODEL, "device": "cpu"},
            broker={"url": ""},
        )
        ingest([paths[0]], settings=settings, progress=False)  # warm: model load, schema
        more = [make_video(folder / f"w{i}.mp4", args.seconds, i + 1) for i in range(args.videos)]
        start = time.perf_counter()
        summary = ingest(more, settings=settings, progress=False)
        wall = time.perf_counter() - start
        print(
            f"ingest (demo model): {summary.done} videos of {args.seconds} s in {wall:.2f} s = "
            f"{summary.done / wall:.2f} assets/s, {summary.done * args.seconds / wall:.0f} s of "
            f"video per second  [load {load()}]"
        )


if __name__ == "__main__":
    main()
