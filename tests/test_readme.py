"""Every README block fenced as `sh runnable` or `python runnable` works as written.

The blocks run in order, in one scratch folder (later blocks use what earlier ones made), against
a real server on 127.0.0.1: `http://localhost:18081` in the text becomes that server's address,
and the virtualenv's bin/ is first on the PATH as the README tells the reader to do.

The `make run` / `make test` block at the top is not run here: `make test` is the command that runs
this very suite (CI runs it: .ci/run), and `make run` serves until stopped; the server these
blocks talk to is started by the same `facerest serve` that `make run` calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Server

from facerest.cli.config import TABLE_END, TABLE_START, settings_markdown

README = ROOT / "README.md"
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNERS = {"sh": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}


def runnable_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of every block whose info string is `<language> runnable`."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        if len(words) == 2 and words[1] == "runnable" and words[0] in RUNNERS:
            blocks.append((words[0], match.group("body"), text.count("\n", 0, match.start()) + 1))
    return blocks


def test_readme_starts_with_the_two_commands():
    first = README.read_text().splitlines()[:6]
    assert first[0] == "# facerest"
    assert first[2:6] == [
        "```sh",
        "make run    # creates .venv, installs, serves on http://localhost:18081 with the default models",
        "make test   # creates .venv if needed, installs dev dependencies, runs the whole test suite",
        "```",
    ]


def test_readme_settings_table_is_current():
    text = README.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    assert text[start:end].strip() == settings_markdown().strip(), (
        "README.md's settings table is out of date: run `make readme-config`"
    )


def test_readme_runnable_blocks(server: Server, models_dir: Path, tmp_path: Path):
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 4, "the README lost its runnable examples"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # in-process commands use the suite's models folder rather than copying the models again
    env.update({"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_THREADS": "2"})
    for language, code, line in blocks:
        code = code.replace("http://localhost:18081", server.url)
        try:
            done = subprocess.run(
                [*RUNNERS[language], code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"README.md line {line}: the {language} block ran for more than 300 s")
        assert done.returncode == 0, (
            f"README.md line {line}: the {language} block failed ({done.returncode})\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    # what the blocks promised to make is there
    assert (tmp_path / "drawn.jpg").stat().st_size > 1000
    assert (tmp_path / "faces.parquet").exists() and (tmp_path / "faces.jsonl").exists()
