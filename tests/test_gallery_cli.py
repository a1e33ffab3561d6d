"""`facerest gallery import DIR`, `export`, and import of an export, in-process with real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from conftest import package_photo
from typer.testing import CliRunner

from facerest.cli import app
from facerest.gallery import open_store


def test_import_folders_export_and_import_the_export(models_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "yao").mkdir(parents=True)
    (photos / "team").mkdir()
    shutil.copy(package_photo("yaoming.jpg"), photos / "yao" / "portrait.jpg")
    shutil.copy(package_photo("players.jpg"), photos / "team" / "players.jpg")
    (photos / "team" / "broken.jpg").write_bytes(b"not an image")
    (photos / "team" / "notes.txt").write_text("ignored: not a photo")
    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_GALLERY_URL": url, "FACEREST_THREADS": "2"}
    runner = CliRunner()

    result = runner.invoke(app, ["gallery", "import", str(photos), "--gallery", "people"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 faces enrolled into 'people'; 1 photos skipped" in result.output
    assert "broken.jpg" in result.output

    exported = tmp_path / "people.json"
    result = runner.invoke(app, ["gallery", "export", "people", "-o", str(exported)], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(exported.read_text())
    assert body["model"] == "w600k_mbf" and [s["subject"] for s in body["subjects"]] == ["team", "yao"]
    assert all(len(f["embedding"]) == 512 for s in body["subjects"] for f in s["faces"])

    result = runner.invoke(app, ["gallery", "import", str(exported), "--gallery", "copy"], env=env)
    assert result.exit_code == 0, result.output
    store = open_store(url)
    try:
        for subject in ("team", "yao"):
            original = store.faces("people", subject, with_embeddings=True)
            copied = store.faces("copy", subject, with_embeddings=True)
            assert len(original) == len(copied) == 1
            assert np.allclose(original[0].embedding, copied[0].embedding, atol=1e-6)
    finally:
        store.close()

    result = runner.invoke(app, ["gallery", "list"], env=env)
    assert "people\tw600k_mbf\t2 subjects\t2 faces" in result.output

    body["model_md5"] = "0" * 32
    exported.write_text(json.dumps(body))
    result = runner.invoke(app, ["gallery", "import", str(exported), "--gallery", "copy2"], env=env)
    assert result.exit_code == 1 and "holds embeddings of" in result.output
