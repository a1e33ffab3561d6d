"""The /demo page in a real browser: Debian's chromium driven by Playwright, against a real server
(tests/browser.py says how the browser is found)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest
from browser import chromium, save_screenshot
from conftest import ROOT, Server, package_photo
from helpers import b64

PLAYERS = package_photo("players.jpg")
YAO = package_photo("yaoming.jpg")
SCREENSHOT = ROOT / "docs" / "img" / "demo.png"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server: Server) -> Iterator:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(msg) -> None:  # type: ignore[no-untyped-def]
        # the page probes GET /galleries; its 404 on a server without the gallery API is expected
        if msg.type == "error" and not msg.location.get("url", "").endswith("/galleries"):
            problems.append(f"console: {msg.text} ({msg.location})")

    page.on("console", on_console)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.problems = problems  # type: ignore[attr-defined]
    yield page
    context.close()
    # everything the page loads comes from the server itself: no CDN, no outside request
    outside = [u for u in requested if not u.startswith((server.url, "data:"))]
    assert not outside, outside


def has_gallery(server: Server) -> bool:
    return httpx.get(f"{server.url}/galleries", timeout=30).status_code != 404


def test_demo_draws_the_faces_of_players(page, server: Server, tmp_path: Path):
    expected = httpx.post(
        f"{server.url}/extract",
        json={"images": {"data": [b64(PLAYERS)]}, "extract_embedding": False},
        timeout=120,
    ).json()["data"][0]["faces"]
    assert len(expected) >= 10

    page.goto(f"{server.url}/demo")
    assert page.title() == "facerest demo"
    page.set_input_files("#file", str(PLAYERS))
    page.wait_for_selector("body[data-ready=true]")

    assert int(page.inner_text("#face-count")) == len(expected)
    assert page.locator("#faces li.face").count() == len(expected)
    assert f"{len(expected)} faces found" in page.inner_text("#status")
    crop_sizes = page.eval_on_selector_all(
        "#faces img.crop", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert crop_sizes == [[True, 112, 112]] * len(expected)

    # the canvas holds the photo at its own size, with the green boxes drawn over it
    height, width = cv2.imread(str(PLAYERS)).shape[:2]
    drawn = page.evaluate(
        """() => {
          const c = document.getElementById('canvas');
          const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let green = 0;
          for (let i = 0; i < px.length; i += 4) if (px[i+1] > 180 && px[i] < 40 && px[i+2] < 40) green++;
          return {w: c.width, h: c.height, green};
        }"""
    )
    assert (drawn["w"], drawn["h"]) == (width, height)
    assert drawn["green"] > 200 * len(expected)  # box outlines: hundreds of pixels per face

    gallery_text = page.inner_text("#gallery-status")
    if has_gallery(server):
        assert page.is_visible("#gallery-controls")
    else:
        assert "no gallery API" in gallery_text and not page.is_visible("#gallery-controls")
    assert not page.problems

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot))
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1100
    save_screenshot(image, SCREENSHOT)


def test_demo_reports_a_bad_file(page, server: Server, tmp_path: Path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    page.goto(f"{server.url}/demo")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    assert page.inner_text("#face-count") == "0"


def test_demo_enrols_and_searches(page, server: Server):
    if not has_gallery(server):
        pytest.skip("the server has no gallery API yet (GET /galleries answers 404): issue 6 is not merged")
    page.goto(f"{server.url}/demo")
    page.wait_for_selector("#gallery-controls:not([hidden])")
    page.fill("#gallery-name", "demo-browser-test")
    page.set_input_files("#file", str(YAO))
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#subject-name", "yao")
    page.click("#enrol")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Enrolled 1 face')")
    page.click("#search")
    page.wait_for_selector("#faces li.face .who")
    assert page.inner_text("#faces li.face .who").startswith("yao (")
    assert "1 of 1 faces recognised" in page.inner_text("#status")
    assert "demo-browser-test" in page.inner_text("#galleries")
    httpx.delete(f"{server.url}/gallery/demo-browser-test", timeout=30)
    assert not page.problems
