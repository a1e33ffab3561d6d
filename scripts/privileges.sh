# Sourced by the ensure-*.sh scripts: how to run apt-get and other root commands here.
# choose_sudo sets SUDO to "" (root) or "sudo -n" (passwordless sudo) and fails when neither works,
# so the caller can skip its tests with a reason instead of failing the build.
# APT_WAIT: other apt users on the machine hold the lock for a while; wait for it, not give up.
APT_WAIT="-o DPkg::Lock::Timeout=600 -o Acquire::Lock::Timeout=600"
export DEBIAN_FRONTEND=noninteractive

choose_sudo() {
    SUDO=""
    [ "$(id -u)" = "0" ] && return 0
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
        return 0
    fi
    return 1
}
