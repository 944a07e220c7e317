# Shared by scripts/run.sh and scripts/test.sh: make sure this machine has what pymail
# needs, installing only what is missing.  Debian 12, as root (or with sudo).
# Sourced, not run.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PYMAIL_VENV:-$ROOT/.venv}
APT_UPDATED=

say() { printf 'pymail-setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; exit 1; fi
}

# apt_need PACKAGE... : install the Debian packages that are not installed yet.
apt_need() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        say "missing packages ${missing[*]} and no apt-get to install them"; exit 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    say "installing ${missing[*]}"
    # Packages like slapd, fail2ban and postgresql start their system daemon when
    # installed (slapd on every interface).  pymail runs its own private, loopback-only
    # instances, so keep the system ones from starting: policy-rc.d exit 101 is Debian's
    # "do not start services" (invoke-rc.d(8), deb-systemd-invoke), for this install only.
    local policy=/usr/sbin/policy-rc.d placed=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# placed by pymail scripts/lib.sh during apt-get install\nexit 101\n' |
            as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && placed=1
    fi
    local status=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || status=$?
    [ -n "$placed" ] && as_root rm -f "$policy"
    [ "$status" = 0 ] || { say "apt-get install ${missing[*]} failed"; exit "$status"; }
}

# python_ok: a python3 >= 3.11 with a working venv module.
find_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    return 1
}

# venv_need [EXTRAS] : a virtualenv in $VENV with pymail installed (editable) with EXTRAS.
venv_need() {
    local extras=${1:-} py spec
    py=$(find_python) || { apt_need python3; py=$(find_python) || { say "Python 3.11 or newer is required"; exit 1; }; }
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_need python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        "$py" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp="$VENV/.pymail-installed-${extras:-base}"
    spec=$ROOT${extras:+[$extras]}
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || ! "$VENV/bin/python" -c 'import pymail' 2>/dev/null; then
        say "installing pymail${extras:+[$extras]} into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" >&2
        touch "$stamp"
    fi
}
