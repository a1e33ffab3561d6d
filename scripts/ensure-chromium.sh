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
. "$(dirname "$0")/privileges.sh"
if ! choose_sudo; then
    echo "ensure-chromium: not root and no passwordless sudo; the browser test will skip" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium (once)" >&2
if ! { $SUDO apt-get $APT_WAIT update -qq \
        && $SUDO apt-get $APT_WAIT install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >/tmp/ensure-chromium.log 2>&1; then
    echo "ensure-chromium: apt-get failed (see /tmp/ensure-chromium.log); the browser test will skip" >&2
fi
exit 0
