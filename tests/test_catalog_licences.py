"""Every catalogue entry says under which licence its weights ship and where they come from."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from facerest.cli.models import app
from facerest.models.catalog import Catalog


def test_every_catalogue_entry_has_a_licence_and_a_source() -> None:
    catalog = Catalog.load()
    assert len(catalog) > 20
    for entry in catalog:
        assert entry.licence and entry.source, entry.name
        if entry.source.startswith("InsightFace "):  # its released weights (not InsightFace-REST)
            assert entry.licence == "non-commercial research only", entry.name
    assert catalog.get("age_gender_dlib").licence == "CC0-1.0"  # type: ignore[union-attr]
    assert catalog.get("mtcnn").licence == "MIT"  # type: ignore[union-attr]


def test_models_list_shows_the_licence_column(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["list", "--no-md5", "--task", "genderage"], env={"FACEREST_MODELS_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "name" in line)
    assert "licence" in header
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "CC0-1.0" in rows["age_gender_dlib"]
    assert "non-commercial research only" in rows["genderage_v1"]


def test_a_custom_model_without_a_licence_shows_unknown() -> None:
    from facerest.models.catalog import CatalogEntry

    entry = CatalogEntry(name="mine", task="recognition", family="arcface", files=[{"name": "mine.onnx"}])
    assert entry.licence_shown == "unknown"
