"""The embedded gallery's index on a CPU without AVX-512: faiss-cpu's one library carries generic,
AVX2 and AVX-512 kernels and picks them at run time. Run under `qemu-x86_64 -cpu EPYC-Milan`
(AMD Zen 3: AVX2, no AVX-512; Debian's qemu-user, installed by scripts/ensure-pgvector.sh), the
same codes give the same candidates as on this machine's CPU, and faiss says which kernels it
chose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import faiss
import numpy as np
from facerest.gallery.index import FaceIndex, IndexOptions

rng = np.random.default_rng(3)
faces = rng.standard_normal((3000, 512), dtype=np.float32)
faces /= np.linalg.norm(faces, axis=1, keepdims=True)
index = FaceIndex(512, IndexOptions())
index.add(np.arange(3000) * 7, faces)
index.remove([0, 7, 14])
queries = faces[100:110] + 0.5 * rng.standard_normal((10, 512), dtype=np.float32)
print(faiss.get_compile_options())
print(" ".join(str(int(face)) for row in index.search(queries, 20) for face in row))
"""


def run(prefix: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_the_index_answers_alike_on_an_emulated_zen3() -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 (Debian's qemu-user) is not installed (make test installs it)")
    native_kernels, native = run([])
    zen3_kernels, zen3 = run([qemu, "-cpu", "EPYC-Milan"])
    print(f"\nfaiss kernels here: {native_kernels}; on the emulated Zen 3: {zen3_kernels}")
    assert "AVX512" not in zen3_kernels.split()  # faiss saw no AVX-512 and did not pick it
    assert zen3 == native and len(native.split()) == 200
