"""What checking an API key costs per request, stored as a fast digest or as a slow password hash.

    PYTHONPATH=. python benchmarks/key_hashing.py [--rounds 20000]

The candidates for keeping keys hashed (facerest/access/keys.py, issue 30):
- SHA-256 of the key (what facerest does), and HMAC-SHA256 under a server secret;
- scrypt (n=2**14, r=8, p=1: the usual interactive-login setting) and PBKDF2-HMAC-SHA256 at
  600,000 iterations (OWASP's 2023 advice): slow hashes, made for guessable passwords.
A slow hash costs every request its full time (or a cache holding keys in clear), while a key of
256 random bits cannot be guessed from its SHA-256 at any speed. Also measured: the whole lookup
the server makes per request (`KeyRing.principal`: a stat of the key file, the digest, a dict
probe), with 1,000 keys in the file. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from facerest.access.keys import KeyFile, KeyRing, new_key


def per_call_us(work: Callable[[], object], rounds: int) -> float:
    """Median of 5 runs of `rounds` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            work()
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    key = new_key().encode()
    salt, secret = secrets.token_bytes(16), secrets.token_bytes(32)
    rows = [
        ("sha256(key)", per_call_us(lambda: hashlib.sha256(key).hexdigest(), args.rounds)),
        (
            "hmac-sha256(secret, key)",
            per_call_us(lambda: hmac.new(secret, key, "sha256").hexdigest(), args.rounds),
        ),
        ("scrypt n=2^14 r=8 p=1", per_call_us(lambda: hashlib.scrypt(key, salt=salt, n=2**14, r=8, p=1), 20)),
        ("pbkdf2-sha256 600k", per_call_us(lambda: hashlib.pbkdf2_hmac("sha256", key, salt, 600_000), 3)),
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys.json"
        keys = KeyFile(path)
        made = [keys.create(f"k{i}", "viewer")[1] for i in range(1000)]
        ring = KeyRing(path)
        presented = made[-1]
        assert ring.principal(presented) is not None
        rows.append(
            ("KeyRing.principal (1,000 keys)", per_call_us(lambda: ring.principal(presented), args.rounds))
        )
        rows.append(
            ("KeyRing.principal, wrong key", per_call_us(lambda: ring.principal("frk_wrong"), args.rounds))
        )
    print(f"{'per request':34} {'us':>10}")
    for name, us in rows:
        print(f"{name:34} {us:10.1f}")


if __name__ == "__main__":
    main()
