#!/usr/bin/env bash
# Installs Debian's chromium for the demo page's browser test (tests/test_demo_browser.py) when it
# is missing. Never fails the build: without a browser that test skips and says why.
# Playwright drives this system browser; `playwright install` (a download from outside the
# package registries) is never used.
set -u
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no apt-get here; the browser test will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-chromium: not root and no passwordless sudo; the browser test will skip" >&2
        exit 0
    fi
fi
echo "ensure-chromium: installing Debian's chromium (once)" >&2
export DEBIAN_FRONTEND=noninteractive
# other apt users on the machine hold the lock for a while: wait for it rather than give up
APT_WAIT="-o DPkg::Lock::Timeout=600 -o Acquire::Lock::Timeout=600"
if ! { $SUDO apt-get $APT_WAIT update -qq \
        && $SUDO apt-get $APT_WAIT install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >/tmp/ensure-chromium.log 2>&1; then
    echo "ensure-chromium: apt-get failed (see /tmp/ensure-chromium.log); the browser test will skip" >&2
fi
exit 0
