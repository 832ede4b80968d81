"""Video ingest speed on CPU: frames decoded per second and assets per second.

Encodes (here, with PyAV) a 60 s 640x360 H.264 video at 25 fps with a new scene every 5 s and
a key frame every second, then times:

- the baseline: decoding every frame and scaling each to the analysis size (what a selector
  that looks at every frame does);
- ramdex's keyframe path (:func:`indexer.frames.video.decode_video`: key frames only, scene
  change, downscaled out of the decoder);
- whole-file ingest of a few such videos with the demo model (assets/s, frames/s scored);
- one long video shared by worker processes (``media.split_s``): its parts decoded and scored
  by two processes at once against the whole file in one process (the same frame budget).

``uptime``'s load average is printed beside each figure (the machine is shared).

    python benchmarks/bench_video.py [--videos 3] [--seconds 60] [--long-seconds 180]
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.frames import FrameOptions  # noqa: E402
from indexer.frames.video import decode_video  # noqa: E402
from indexer.ingest.video_parts import plan_parts  # noqa: E402
from indexer.settings import MediaSettings  # noqa: E402
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


@functools.cache
def _processor(home: str):  # noqa: ANN202 - an AssetProcessor with the demo model, per process
    from indexer.ingest.process import AssetProcessor
    from indexer.settings import Settings
    from ram_pp.factory import DEMO_MODEL

    settings = Settings(
        home=Path(home),
        database={"url": f"sqlite:///{home}/bench.sqlite3"},
        model={"name": DEMO_MODEL, "device": "cpu"},
        broker={"url": ""},
    )
    return AssetProcessor(settings)


def score_range(home: str, path: str, start: float, end: float | None, frames: int) -> int:
    """What a part task does with its range: decode its key frames, run the model on them."""
    proc = _processor(home)
    media = decode_video(
        Path(path), proc.frame_options, "bench", start_s=start, end_s=end, max_frames=frames
    )
    inputs = [proc.model_input(f.image) for f in media.frames]
    proc.score_images(inputs, ["bench"] * len(inputs))
    return len(inputs)


def shared_long_video(tmp: str, seconds: int) -> None:
    """One long video: its parts on two processes at once vs the whole file on one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    media = MediaSettings(split_s=seconds / 3, max_frames=24, min_interval_s=1.0)
    plans = plan_parts(float(seconds), media)
    assert plans is not None
    path = str(make_video(Path(tmp) / "long.mp4", seconds, seed=7))
    # Fresh processes, as workers are (forking this one, with torch's threads, can hang).
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(score_range, [tmp] * 2, [path] * 2, [0.0] * 2, [5.0] * 2, [1] * 2))  # warm
        start = time.perf_counter()
        whole = pool.submit(score_range, tmp, path, 0.0, None, media.max_frames).result()
        one = time.perf_counter() - start
        start = time.perf_counter()
        parts = list(
            pool.map(
                score_range,
                [tmp] * len(plans),
                [path] * len(plans),
                [p.start_s for p in plans],
                [p.end_s for p in plans],
                [p.max_frames for p in plans],
            )
        )
        shared = time.perf_counter() - start
    print(
        f"one {seconds} s video, whole in one process: {whole} frames scored in {one:.2f} s; "
        f"as {len(plans)} parts on two processes: {sum(parts)} frames in {shared:.2f} s "
        f"({one / shared:.2f}x)  [load {load()}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--long-seconds", type=int, default=180, help="the shared long video")
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
        shared_long_video(tmp, args.long_seconds)


if __name__ == "__main__":
    main()
