"""People cut from the package's (and, when present, the shared) photos, and the scripted scenes
the video tests render: moving, entering and leaving, crossing, a cut, frames without faces."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from conftest import SHARED, package_photo, read_bgr

from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.video.synthetic import Appearance, Person, Script, person_from_photo


@dataclass(frozen=True)
class Cast:
    people: dict[str, Person]
    stills: dict[str, np.ndarray]  # each person's embedding from the still photo, unit length


def make_cast(analyzer: FaceAnalyzer) -> Cast:
    """Six people: Yao Ming, three faces of gdp.jpg, a player, and Stallone when the shared photos
    are there (else a second player)."""
    sources: list[tuple[str, np.ndarray, int, float]] = []
    yao = read_bgr(package_photo("yaoming.jpg"))
    gdp = read_bgr(package_photo("gdp.jpg"))
    players = read_bgr(package_photo("players.jpg"))
    sources += [("yao", yao, 0, 80.0), ("gdp0", gdp, 0, 64.0), ("gdp1", gdp, 1, 64.0), ("gdp2", gdp, 2, 64.0)]
    sources.append(("player0", players, 0, 60.0))
    stallone = SHARED / "anchor" / "Stallone.jpg"
    if stallone.exists():
        sources.append(("stallone", read_bgr(stallone), 0, 70.0))
    else:
        print(f"{stallone} is absent: a second player stands in for Stallone")
        sources.append(("stallone", players, 1, 60.0))
    people, stills = {}, {}
    options = ExtractOptions()
    # Yao Ming is in players.jpg too: the players are its faces but his (the one most like his
    # own photo), whatever order a detector lists them in (issue 32: YuNet puts him first)
    yao_still = analyzer.process([yao], options)[0].faces[0].embedding
    player_faces = analyzer.process([players], options)[0].faces
    yao_there = int(np.argmax([float(f.embedding @ yao_still) for f in player_faces]))
    not_yao = [i for i in range(len(player_faces)) if i != yao_there]
    for name, image, index, width in sources:
        if image is players:
            index = not_yao[index]
        face = analyzer.process([image], options)[0].faces[index]
        assert face.embedding is not None
        people[name] = person_from_photo(name, image, face.bbox, width)
        stills[name] = face.embedding
    return Cast(people, stills)


def enter_and_leave(cast: Cast) -> Script:
    """Yao walks across; gdp0 comes and goes, and comes back after a long absence (two
    appearances); an empty stretch; two others appear after it."""
    p = cast.people
    return Script(
        duration_s=7.0,
        appearances=[
            # starts and ends off the 5 fps sampling grid: the first sample comes up to 0.2 s late
            Appearance(p["yao"], 0.0, 3.6, (10, 40), (470, 90)),
            Appearance(p["gdp0"], 0.9, 2.7, (420, 220), (300, 200)),
            Appearance(p["gdp0"], 5.05, 7.0, (120, 60), (180, 90)),
            Appearance(p["stallone"], 5.3, 7.0, (450, 180), (380, 150)),
            Appearance(p["player0"], 4.7, 6.45, (300, 250), (320, 240)),
        ],
        seed=1,
    )


def crossing(cast: Cast) -> Script:
    """Two people walk towards each other and cross, the second passing in front of the first."""
    p = cast.people
    return Script(
        duration_s=4.0,
        appearances=[
            Appearance(p["gdp1"], 0.0, 4.0, (20, 110), (500, 130), z=0),
            Appearance(p["yao"], 0.0, 4.0, (500, 150), (20, 120), z=1),
        ],
        seed=2,
    )


def scene_cut(cast: Cast) -> Script:
    """Two people in one scene, a cut to another scene with two others, then nobody."""
    p = cast.people
    return Script(
        duration_s=5.0,
        cuts=[2.0],
        appearances=[
            Appearance(p["stallone"], 0.0, 2.0, (60, 80), (120, 90)),
            Appearance(p["gdp2"], 0.0, 2.0, (420, 200), (400, 180)),
            Appearance(p["gdp0"], 2.0, 4.1, (100, 200), (160, 190)),
            Appearance(p["player0"], 2.1, 3.9, (450, 60), (430, 100)),
        ],
        seed=3,
    )


SCENES = {"enter_and_leave": enter_and_leave, "crossing": crossing, "scene_cut": scene_cut}


class MjpegStream(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEG frames of a script, paced in real time from the first
    connection; the first connection is cut at `drop_s`, the second ends at the script's end,
    later ones are refused (503)."""

    script: Script
    drop_s: float
    started: float | None = None
    connections = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.connections += 1
            number = cls.connections
            if cls.started is None:
                cls.started = time.monotonic()
        if number > 2:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        end = self.drop_s if number == 1 else self.script.duration_s
        try:
            for t, image in self.script.frames():
                now = time.monotonic() - cls.started  # type: ignore[operator]
                if t >= end:
                    break
                if t < now - 0.05:
                    continue  # live: frames of the time we were away are gone
                time.sleep(max(0.0, t - now))
                jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        self.close_connection = True


@contextlib.contextmanager
def serve_mjpeg(script: Script, drop_s: float) -> Iterator[str]:
    """An MJPEG server on 127.0.0.1 playing `script` (see MjpegStream); yields the stream URL."""
    handler = type("Stream", (MjpegStream,), {"script": script, "drop_s": drop_s, "lock": threading.Lock()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cam"
    finally:
        httpd.shutdown()
        httpd.server_close()
