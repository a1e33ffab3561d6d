"""The import layers of pyproject.toml's [tool.importlinter]: kept by the package, and able to fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package below `root`, with `root`'s pyproject.toml."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extra (import-linter)"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_every_import_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_runtime_module_importing_the_model_store_breaks_the_contracts(tmp_path: Path) -> None:
    """The check bites: a copy of the package whose runtime imports the store (a layer break and a
    cycle, models -> runtime -> models) fails it, naming the runtime contract."""
    shutil.copytree(ROOT / "facerest", tmp_path / "facerest", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    onnx_runtime = tmp_path / "facerest" / "runtime" / "onnx.py"
    onnx_runtime.write_text(onnx_runtime.read_text() + "\nfrom facerest.models.store import ModelStore\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The runtime moves tensors" in result.stdout and "BROKEN" in result.stdout
    assert "facerest.runtime.onnx -> facerest.models.store" in result.stdout
