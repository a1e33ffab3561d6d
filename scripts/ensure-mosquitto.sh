#!/usr/bin/env bash
# Installs Debian's mosquitto (the MQTT broker) for the MQTT tests (tests/test_mqtt.py), which start
# a throwaway broker of their own on a free loopback port and stop it mid-run. Never fails the
# build: without the binary those tests skip and say why. The Debian service itself is not
# started (the tests need no broker on the default port, and one left running would be shared).
set -u
if [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-mosquitto: no apt-get here; the MQTT tests will skip" >&2
    exit 0
fi
. "$(dirname "$0")/privileges.sh"
if ! choose_sudo; then
    echo "ensure-mosquitto: not root and no passwordless sudo; the MQTT tests will skip" >&2
    exit 0
fi
echo "ensure-mosquitto: installing Debian's mosquitto (once)" >&2
# policy-rc.d 101: the package's post-install script must not start the system broker on 1883
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod +x "$POLICY" && ADDED_POLICY=1
fi
if ! { $SUDO apt-get $APT_WAIT update -qq \
        && $SUDO apt-get $APT_WAIT install -y -qq --no-install-recommends mosquitto; } >/tmp/ensure-mosquitto.log 2>&1; then
    echo "ensure-mosquitto: apt-get failed (see /tmp/ensure-mosquitto.log); the MQTT tests will skip" >&2
fi
if [ "$ADDED_POLICY" = 1 ]; then
    $SUDO rm -f "$POLICY"
fi
exit 0
