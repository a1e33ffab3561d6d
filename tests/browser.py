"""What the browser tests share: Debian's chromium driven by Playwright, and the screenshots they
leave under docs/img/ for the README.

The browser is the system's /usr/bin/chromium (`make test` installs the Debian package when it can,
scripts/ensure-chromium.sh); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium, or the test skips saying how to get one."""
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is a dev dependency: make dev"
    )
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: `make test` installs Debian's chromium when apt-get is usable "
            "(scripts/ensure-chromium.sh); install it with `apt-get install chromium`"
        )
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def save_screenshot(image: np.ndarray | Path, path: Path) -> None:
    """A screenshot under docs/img/, shown in the README: written when absent or when
    UPDATE_SCREENSHOTS=1 (rewriting it on every run would leave a changed tracked file after
    each `make test`). Three quarters of the size, 128 colours: a third of the full PNG."""
    if path.exists() and os.environ.get("UPDATE_SCREENSHOTS") != "1":
        return
    if isinstance(image, Path):
        image = cv2.imread(str(image))
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image  # installed with scikit-image, a dev dependency

    small = cv2.resize(
        image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA
    )
    palette = Image.fromarray(small[:, :, ::-1]).quantize(colors=128, dither=Image.Dither.NONE)
    tmp = path.with_suffix(".tmp.png")
    palette.save(tmp, optimize=True)
    shutil.move(tmp, path)
