"""People cut from the package's (and, when present, the shared) photos, and the scripted scenes
the video tests render: moving, entering and leaving, crossing, a cut, frames without faces."""

from __future__ import annotations

from dataclasses import dataclass

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
    for name, image, index, width in sources:
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
            Appearance(p["yao"], 0.0, 3.6, (10, 40), (470, 90)),
            Appearance(p["gdp0"], 0.8, 2.6, (420, 220), (300, 200)),
            Appearance(p["gdp0"], 5.0, 7.0, (120, 60), (180, 90)),
            Appearance(p["stallone"], 5.2, 7.0, (450, 180), (380, 150)),
            Appearance(p["player0"], 4.6, 6.4, (300, 250), (320, 240)),
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
            Appearance(p["gdp0"], 2.0, 4.0, (100, 200), (160, 190)),
            Appearance(p["player0"], 2.0, 4.0, (450, 60), (430, 100)),
        ],
        seed=3,
    )


SCENES = {"enter_and_leave": enter_and_leave, "crossing": crossing, "scene_cut": scene_cut}
