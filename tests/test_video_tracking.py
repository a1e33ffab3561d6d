"""Issue 17, must show 1: videos made from photos, encoded with several codecs, tracked.

Every appearance of a person is one track (no more, no fewer), no track ever switches person
(checked per sampled frame against where the script put each face), every track's embedding
matches the person's still photo, and the timestamps are within one sampled frame of the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_scenes import SCENES, Cast, make_cast

from facerest.pipeline import ExtractOptions
from facerest.video.analyze import VideoAnalyzer, VideoOptions
from facerest.video.decode import Sampling, VideoLimits, VideoSource
from facerest.video.synthetic import CODECS, Appearance, Script, render
from facerest.video.tracker import FaceTracker, Observation, Track, TrackerConfig, iou_matrix

FPS = 5.0
LIMITS = VideoLimits(max_duration_s=60, max_pixels=1920 * 1080, max_frames=1000)


@pytest.fixture(scope="module")
def cast(analyzer) -> Cast:  # type: ignore[no-untyped-def]
    return make_cast(analyzer)


def track_video(analyzer, path: Path, fps: float = FPS) -> list[Track]:  # type: ignore[no-untyped-def]
    tracks: list[Track] = []
    with VideoSource(path.read_bytes(), LIMITS, Sampling(fps)) as source:
        options = VideoOptions(ExtractOptions(), return_boxes=True, tracker=TrackerConfig(max_gap_s=1.0))
        tracker = VideoAnalyzer(analyzer).run(source.frames(), options, tracks.extend)
        tracks.extend(tracker.finish())
    return sorted(tracks, key=lambda t: (t.first.t, t.id))


def whose(script: Script, t: float, bbox: list[float]) -> Appearance | None:
    """The appearance whose face the box covers at time t (the best overlap, at least 0.3)."""
    visible = script.visible_at(t)
    if not visible:
        return None
    truth = np.stack([a.face_box(t) for a in visible])
    overlap = iou_matrix(np.array([bbox], np.float32), truth)[0]
    best = int(overlap.argmax())
    return visible[best] if overlap[best] >= 0.3 else None


CASES = [
    ("enter_and_leave", "libx264"),
    ("enter_and_leave", "libvpx-vp9"),
    ("crossing", "libx264"),
    ("crossing", "mjpeg"),
    ("scene_cut", "mpeg4"),
    ("scene_cut", "libvpx-vp9"),
]


@pytest.mark.parametrize(("scene", "codec"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_one_track_per_appearance(analyzer, cast: Cast, tmp_path: Path, scene: str, codec: str) -> None:  # type: ignore[no-untyped-def]
    script = SCENES[scene](cast)
    path = render(script, tmp_path / f"{scene}{CODECS[codec][0]}", codec)
    tracks = track_video(analyzer, path)
    summary = [(t.id, round(t.first.t, 2), round(t.last.t, 2), t.frames) for t in tracks]
    assert len(tracks) == len(script.appearances), summary

    # each track's every box belongs to one appearance: identity switches are counted over all
    owners: list[Appearance] = []
    switches = 0
    for track in tracks:
        seen = [whose(script, t, box) for t, box, _ in track.boxes]
        assert None not in seen, f"track {track.id} has a box on no scripted face"
        names = [id(a) for a in seen]
        major = max(set(names), key=names.count)
        switches += sum(1 for n in names if n != major)
        owners.append(next(a for a in seen if id(a) == major))
    assert switches == 0
    assert len({id(a) for a in owners}) == len(owners), "two tracks for one appearance"

    interval = 1.0 / FPS
    frame = 1.0 / script.fps
    cosines = [float(t.embedding @ cast.stills[a.person.name]) for t, a in zip(tracks, owners, strict=True)]  # type: ignore[operator]
    starts = [abs(t.first.t - a.start_s) for t, a in zip(tracks, owners, strict=True)]
    print(
        f"{scene} {codec}: {len(tracks)} tracks for {len(script.appearances)} appearances, "
        f"{switches} switches, cosine to the still >= {min(cosines):.3f}, "
        f"first seen <= {max(starts):.3f} s after the appearance (sampled every {interval:.2f} s)"
    )
    for track, app in zip(tracks, owners, strict=True):
        still = cast.stills[app.person.name]
        assert track.embedding is not None
        assert abs(float(np.linalg.norm(track.embedding)) - 1.0) < 1e-4
        similarity = float(track.embedding @ still)
        assert similarity > 0.5, (app.person.name, similarity)
        others = [float(track.embedding @ v) for n, v in cast.stills.items() if n != app.person.name]
        assert similarity > max(others), (app.person.name, similarity, others)
        # the first sampled frame at or after the start, the last before the end
        assert app.start_s - frame <= track.first.t <= app.start_s + interval + frame, (app, track.first.t)
        assert app.end_s - interval - frame <= track.last.t <= app.end_s, (app, track.last.t)
        assert track.first.t <= track.best.t <= track.last.t


def test_keyframes_and_every_frame(analyzer, cast: Cast, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = SCENES["crossing"](cast)
    path = render(script, tmp_path / "crossing.mp4", "mpeg4")  # MPEG-4 Part 2: a key frame every 12
    with VideoSource(path.read_bytes(), LIMITS, Sampling(keyframes=True)) as source:
        keys = [f.index for f in source.frames()]
    assert 1 < len(keys) < 20 and keys[0] == 0
    with VideoSource(path.read_bytes(), LIMITS, Sampling(fps=0)) as source:
        every = [f.t for f in source.frames()]
    assert len(every) == round(script.duration_s * script.fps)
    assert np.allclose(np.diff(every), 1 / script.fps, atol=1e-3)


def test_tracker_without_embeddings_links_by_overlap() -> None:
    """Boxes alone (no recognizer): overlapping boxes continue a track, a far one starts another."""
    tracker = FaceTracker(TrackerConfig(max_gap_s=0.5))

    def obs(t: float, x: float) -> Observation:
        return Observation(t, 0, np.array([x, 10, x + 50, 60], np.float32), 0.9, 0.5)

    for step in range(5):
        t = step * 0.2
        assert tracker.update(t, [obs(t, 10 + 5 * step), obs(t, 300 - 5 * step)]) == []
    ended = tracker.update(2.0, [])
    assert sorted(t.frames for t in ended) == [5, 5]
    assert tracker.finish() == []
