"""indexer.frames: video keyframes, camera RAW and animated images, decoded from fixtures
built in the test (PyAV-encoded videos, hand-written DNGs, Pillow animations)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from indexer.frames import FrameOptions, MediaKind, decode_media
from indexer.frames.select import KeyframeSelector, difference, signature
from indexer.frames.video import decode_video, probe_video
from indexer.media import sniff_file, sniff_mime
from ram_pp.preprocess import ImageDecodeError
from tests.media_fixtures import animated, build_dng, encode_video, solid

OPTIONS = FrameOptions(frame_side=128, min_interval_s=0.4, max_interval_s=3.0, max_frames=16)
RGB = [(220, 30, 30), (30, 180, 40), (30, 50, 220)]


def _dominant(image: Image.Image) -> int:
    """Index of the strongest channel of the picture's corner (outside the inner square)."""
    pixel = np.asarray(image.convert("RGB"))[2, 2].astype(int)
    return int(np.argmax(pixel))


@pytest.fixture(scope="module")
def three_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Red, green, blue, two seconds each, H.264 in MP4, a key frame every 0.5 s."""
    path = tmp_path_factory.mktemp("video") / "rgb.mp4"
    return encode_video(path, [(solid(c), 2.0) for c in ("red", "green", "blue")])


def test_selector_rule() -> None:
    red, blue = (
        signature(np.full((8, 8, 3), (220, 30, 30), np.uint8)),
        signature(np.full((8, 8, 3), (30, 50, 220), np.uint8)),
    )
    assert difference(red, red) == 0.0 and difference(red, blue) == pytest.approx(1.0)
    sel = KeyframeSelector(min_interval_s=1.0, max_interval_s=5.0, threshold=0.3, max_frames=3)
    assert sel.offer(0.0, red)  # the first frame always
    assert not sel.offer(0.5, blue)  # a scene change, but too soon
    assert not sel.offer(2.0, red)  # no change, not yet max_interval
    assert sel.offer(2.5, blue)  # a scene change
    assert sel.offer(7.5, blue)  # no change, but max_interval passed
    assert sel.full and not sel.offer(20.0, red)


def test_h264_mp4_keyframes_at_scene_changes(three_scenes: Path) -> None:
    assert sniff_file(three_scenes) == "video/mp4"
    info = probe_video(three_scenes, "rgb.mp4")
    assert (info.codec, info.width, info.height) == ("h264", 160, 120)
    assert info.duration_s == pytest.approx(6.0, abs=0.2)
    media = decode_media(three_scenes, "video/mp4", OPTIONS, "rgb.mp4")
    assert media is not None and media.kind == MediaKind.VIDEO
    assert [round(f.timestamp_s, 1) for f in media.frames] == [0.0, 2.0, 4.0]
    assert [_dominant(f.image) for f in media.frames] == [0, 1, 2]
    assert all(max(f.image.size) == 128 for f in media.frames)  # downscaled out of the decoder
    assert media.frames_decoded == 12  # key frames only: 60 frames, one key frame in five
    assert (media.width, media.height, media.codec) == (160, 120, "h264")


def test_static_shot_gets_a_frame_every_max_interval(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "still.mp4", [(solid("red"), 7.0)])
    media = decode_video(path, OPTIONS, "still.mp4")
    assert [round(f.timestamp_s, 1) for f in media.frames] == [0.0, 3.0, 6.0]


@pytest.mark.parametrize(
    ("codec", "name", "mime"),
    [
        ("libvpx-vp9", "clip.webm", "video/webm"),
        ("libx264", "clip.mkv", "video/x-matroska"),
        ("libx265", "clip.mov", "video/quicktime"),
        ("libsvtav1", "clip.mp4", "video/mp4"),
    ],
)
def test_other_codecs_and_containers(tmp_path: Path, codec: str, name: str, mime: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    path = encode_video(tmp_path / name, [(solid("red"), 1.0), (solid("blue"), 1.0)], codec=codec)
    assert sniff_file(path) == mime
    media = decode_media(path, mime, OPTIONS, name)
    assert media is not None
    assert [round(f.timestamp_s, 1) for f in media.frames] == [0.0, 1.0]
    assert [_dominant(f.image) for f in media.frames] == [0, 2]


def test_long_gop_is_decoded_densely(tmp_path: Path) -> None:
    """One key frame in 6 s (longer than max_interval_s): every frame is looked at."""
    scenes = [(solid(c), 2.0) for c in ("red", "green", "blue")]
    path = encode_video(tmp_path / "gop.mp4", scenes, gop=100)
    media = decode_video(path, OPTIONS, "gop.mp4")
    assert [round(f.timestamp_s, 1) for f in media.frames] == [0.0, 2.0, 4.0]


def test_long_video_is_sampled_evenly_by_seeking(three_scenes: Path) -> None:
    """More length than max_frames x max_interval_s: one frame per stride, reached by seeks."""
    options = FrameOptions(frame_side=64, min_interval_s=0.1, max_interval_s=0.5, max_frames=3)
    media = decode_video(three_scenes, options, "rgb.mp4")
    assert [round(f.timestamp_s, 1) for f in media.frames] == [0.0, 2.0, 4.0]
    assert media.frames_decoded <= 6  # three seeks, not the twelve key frames


def test_a_new_subject_on_a_similar_background_is_a_scene_change(tmp_path: Path) -> None:
    """A red circle on white, then a blue square on a pale grid (the subject about a quarter of
    the picture): a new scene at 3 s with the default threshold, not only when
    ``max_interval_s`` forces a frame."""
    from tests.media_fixtures import scene_picture

    first = scene_picture("white background", "circle", "red", 128)
    second = scene_picture("grid background", "square", "blue", 128)
    path = encode_video(tmp_path / "subjects.mp4", [(first, 3.0), (second, 3.0)])
    options = FrameOptions(frame_side=128, min_interval_s=0.5, max_interval_s=30.0)
    times = [round(f.timestamp_s, 1) for f in decode_video(path, options, "subjects").frames]
    assert times == [0.0, 3.0]


def test_phone_video_shot_upright_is_turned_by_its_display_matrix(tmp_path: Path) -> None:
    """Coded landscape (64x32, left half white), displayed portrait: the frames the model and
    the thumbnail get are 32 wide and 64 tall, the white half on top (90 degrees clockwise)."""
    coded = np.zeros((32, 64, 3), np.uint8)
    coded[:, :32] = 255
    path = encode_video(
        tmp_path / "upright.mp4", [(Image.fromarray(coded), 1.0)], display_rotation=-90
    )
    media = decode_video(path, OPTIONS, "upright")
    assert (media.width, media.height) == (32, 64)  # the asset's size as displayed
    picture = np.asarray(media.frames[0].image.convert("L"), dtype=np.float32)
    assert picture.shape[0] > picture.shape[1]  # portrait
    height = picture.shape[0]
    assert picture[: height // 2].mean() > 200 and picture[height // 2 :].mean() < 50


def test_time_range(three_scenes: Path) -> None:
    media = decode_video(three_scenes, OPTIONS, "rgb.mp4", start_s=2.5, end_s=5.0)
    times = [f.timestamp_s for f in media.frames]
    assert times[0] >= 2.5 and all(t < 5.0 for t in times)
    assert [_dominant(f.image) for f in media.frames] == [1, 2]


def test_time_budget_keeps_what_was_found(three_scenes: Path) -> None:
    options = FrameOptions(frame_side=64, min_interval_s=0.4, max_interval_s=3.0, max_decode_s=1e-9)
    with pytest.raises(ImageDecodeError, match="time budget"):
        decode_video(three_scenes, options, "rgb.mp4")  # nothing found before the budget ran out


def test_bad_videos_have_reasons(tmp_path: Path, three_scenes: Path) -> None:
    data = three_scenes.read_bytes()
    # An MP4 cut before its moov (x264 writes it last): the index is gone.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="moov") as raised:
        decode_video(cut, OPTIONS, "cut.mp4")
    # FFmpeg's words, not its errno or the stored file's path (users know it by its source).
    assert "Errno" not in raised.value.reason and str(cut) not in raised.value.reason
    # A zero-length moov box after the ftyp box.
    ftyp = int.from_bytes(data[:4], "big")
    zero_moov = data[:ftyp] + b"\x00\x00\x00\x08moov"
    assert sniff_mime(zero_moov) == "video/mp4"
    with pytest.raises(ImageDecodeError, match="index"):
        decode_video(zero_moov, OPTIONS, "zero.mp4")
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_video(b"", OPTIONS, "empty.mp4")
    # A truncated MKV keeps the frames before the cut.
    mkv = encode_video(tmp_path / "t.mkv", [(solid(c), 2.0) for c in ("red", "green", "blue")])
    raw = mkv.read_bytes()
    media = decode_video(raw[: int(len(raw) * 0.6)], OPTIONS, "t.mkv")
    assert media.frames and media.frames[0].timestamp_s == 0.0
    assert len(media.frames) < 3
    # Audio only: no video stream.
    audio = tmp_path / "a.mkv"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(ImageDecodeError, match="no video stream"):
        decode_video(audio, OPTIONS, "a.mkv")


def test_raw_with_preview_uses_it_with_orientation() -> None:
    preview = solid("red", (640, 480))  # red preview, blue sensor: the source is visible
    data = build_dng(solid("blue", (256, 192)), preview=preview, orientation=6)
    assert sniff_mime(data[:65536]) == "image/x-adobe-dng"
    media = decode_media(data, "image/x-adobe-dng", OPTIONS, "p.dng")
    assert media is not None and media.kind == MediaKind.RAW
    frame = media.frames[0].image
    assert frame.size == (96, 128)  # rotated upright (orientation 6: 90 degrees clockwise)
    assert (media.width, media.height) == (192, 256)
    assert _dominant(frame) == 0 and "embedded preview" in media.notes
    # The preview's inner square (top-left quarter) lands top-right after a clockwise turn.
    pixels = np.asarray(frame).astype(int)
    assert pixels[40, 60].sum() < pixels[40, 20].sum()


def test_raw_without_usable_preview_is_demosaiced() -> None:
    for preview in (None, solid("red", (64, 48))):  # none, or smaller than the model's input
        data = build_dng(solid("blue", (256, 192)), preview=preview)
        media = decode_media(data, "image/x-adobe-dng", OPTIONS, "n.dng")
        assert media is not None
        assert "demosaiced (half size)" in media.notes
        assert media.frames[0].image.size == (128, 96)
        assert _dominant(media.frames[0].image) == 2  # the sensor's blue, not the red preview


def test_bad_raw_has_a_reason() -> None:
    data = build_dng(solid("blue", (256, 192)))
    with pytest.raises(ImageDecodeError, match="RAW"):
        decode_media(data[:300], "image/x-adobe-dng", OPTIONS, "cut.dng")


def test_raw_signatures() -> None:
    assert sniff_mime(b"FUJIFILMCCD-RAW 0201") == "image/x-fuji-raf"
    assert sniff_mime(b"IIRO\x08\x00\x00\x00") == "image/x-olympus-orf"
    assert sniff_mime(b"IIU\x00\x08\x00\x00\x00") == "image/x-panasonic-rw2"
    assert sniff_mime(b"II*\x00\x10\x00\x00\x00CR\x02\x00") == "image/x-canon-cr2"
    assert sniff_mime(b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom") == "image/x-canon-cr3"
    assert sniff_mime(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "image/heic"
    plain = Image.new("RGB", (8, 8))
    import io

    buf = io.BytesIO()
    plain.save(buf, "TIFF")
    assert sniff_mime(buf.getvalue()) == "image/tiff"


@pytest.mark.parametrize(
    ("fmt", "mime"), [("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/png")]
)
def test_animated_images_give_several_frames(fmt: str, mime: str) -> None:
    pictures = [solid(c) for c in ("red", "red", "green", "green", "blue", "blue")]
    data = animated(pictures, fmt, duration_ms=250)
    media = decode_media(data, mime, FrameOptions(frame_side=128, animated_frames=3), "a")
    assert media is not None and media.kind == MediaKind.ANIMATED
    assert [_dominant(f.image) for f in media.frames] == [0, 1, 2]
    assert [round(f.timestamp_s, 2) for f in media.frames] == [0.0, 0.5, 1.0]
    assert media.duration_s == pytest.approx(1.5)


def test_still_gif_is_left_to_the_image_decoder() -> None:
    data = animated([solid("red")], "GIF")
    assert decode_media(data, "image/gif", OPTIONS, "still.gif") is None
    frames = [solid("red") for _ in range(4)]
    for i, frame in enumerate(frames):
        frame.putpixel((i, 0), (0, 0, 0))  # distinct frames of one scene: one is enough
    static = animated(frames, "GIF")
    media = decode_media(static, "image/gif", OPTIONS, "static.gif")
    assert media is not None and len(media.frames) == 1
