#!/usr/bin/env bash
# Prove the README's two commands on a fresh Debian 12, as a new user would run them:
# a minimal `debootstrap --variant=minbase bookworm` root that never saw pymail, with only
# this machine's settings for reaching the package registries copied in.
#
#   scripts/fresh-root.sh create            # debootstrap the root (once; ~2 min) + settings
#   scripts/fresh-root.sh clone [SOURCE]    # git clone SOURCE (default: this checkout's
#                                           # repository and branch) into ROOT/root/pymail,
#                                           # replacing an earlier clone
#   scripts/fresh-root.sh run CMD [ARG...]  # run CMD inside the root, in /root/pymail, as
#                                           # root with a login-like environment; /proc,
#                                           # /dev and /sys are mounted for it and
#                                           # unmounted after, and any process it left
#                                           # behind inside the root is ended
#   scripts/fresh-root.sh destroy           # unmount what is below the root, check
#                                           # that nothing is, and remove it (never
#                                           # remove a root with plain rm -rf: while
#                                           # `run` is active its /dev is this machine's)
#   scripts/fresh-root.sh prove-run         # only the run.sh half of `prove`, on the
#                                           # clone already there
#   scripts/fresh-root.sh prove [SOURCE]    # create (if missing) + clone + run
#                                           # ./scripts/test.sh; then ./scripts/run.sh is
#                                           # started and must answer 220 on 127.0.0.1:2525
#
# ROOT is $PYMAIL_FRESH_ROOT or /work/fresh-root; `--root DIR` before the subcommand
# overrides it.  For example, the whole proof of a tree, with the suite's output in a file:
#
#   scripts/fresh-root.sh --root /work/fresh-root prove /work/main > /tmp/fresh.log 2>&1
#
# What is copied from this machine, and only that (a fresh machine has its own):
#   apt: /etc/apt/sources.list*, apt.conf.d/*, auth.conf*, preferences*, trusted.gpg*;
#   pip: /etc/pip.conf, /etc/xdg/pip, ~/.config/pip, ~/.pip, and every PIP_* variable;
#   CA:  /etc/ssl/certs (dereferenced), /usr/local/share/ca-certificates;
#   net: /etc/resolv.conf, /etc/hosts, and http_proxy/https_proxy/no_proxy if set.
# Python, git, swaks, ... are NOT put in: the README's commands must install what they need.
# Needs root, debootstrap (installed when missing) and git on this machine.

set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
ROOT=${PYMAIL_FRESH_ROOT:-/work/fresh-root}
SUITE=bookworm

say() { printf 'fresh-root: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"
if [ "${1:-}" = --root ]; then ROOT=$2; shift 2; fi
ROOT=${ROOT%/}
[ -n "$ROOT" ] && [ "$ROOT" != / ] || die "refusing ROOT=/"

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list).
host_mirror() {
    local uri
    uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

copy_settings() {
    say "copying this machine's apt, pip, CA and resolver settings into $ROOT"
    local f
    # this machine's sources replace the ones debootstrap wrote (the same archive twice
    # makes apt warn "configured multiple times")
    rm -rf "$ROOT/etc/apt/sources.list" "$ROOT/etc/apt/sources.list.d"
    mkdir -p "$ROOT/etc/apt/sources.list.d" "$ROOT/etc/apt/apt.conf.d"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d /etc/apt/apt.conf.d /etc/apt/auth.conf \
             /etc/apt/auth.conf.d /etc/apt/preferences /etc/apt/preferences.d /etc/apt/trusted.gpg \
             /etc/apt/trusted.gpg.d; do
        [ -e "$f" ] && cp -a "$f" "$(dirname "$ROOT$f")/"
    done
    # keyrings the sources name (Signed-By) that the root lacks
    for f in $(grep -rhoE '(Signed-By:|signed-by=)[[:space:]]*/[^] ]+' /etc/apt/sources.list* 2>/dev/null |
               sed -E 's/^(Signed-By:|signed-by=)[[:space:]]*//' | sort -u); do
        if [ -f "$f" ] && [ ! -e "$ROOT$f" ]; then mkdir -p "$(dirname "$ROOT$f")"; cp -a "$f" "$ROOT$f"; fi
    done
    [ -f /etc/pip.conf ] && cp -a /etc/pip.conf "$ROOT/etc/pip.conf"
    [ -d /etc/xdg/pip ] && { mkdir -p "$ROOT/etc/xdg"; cp -a /etc/xdg/pip "$ROOT/etc/xdg/"; }
    mkdir -p "$ROOT/root/.config"
    [ -d "$HOME/.config/pip" ] && cp -a "$HOME/.config/pip" "$ROOT/root/.config/"
    [ -d "$HOME/.pip" ] && cp -a "$HOME/.pip" "$ROOT/root/"
    # CA bundle: dereferenced (the host's links point into its /usr/share/ca-certificates),
    # and the local CAs, so that a later update-ca-certificates in the root keeps them.
    mkdir -p "$ROOT/etc/ssl" "$ROOT/usr/local/share"
    [ -d /etc/ssl/certs ] && cp -rL /etc/ssl/certs "$ROOT/etc/ssl/"
    [ -d /usr/local/share/ca-certificates ] && cp -a /usr/local/share/ca-certificates "$ROOT/usr/local/share/"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    if [ -f /etc/hosts ]; then cp -L /etc/hosts "$ROOT/etc/hosts"
    else printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"; fi
}

cmd_create() {
    unmount_all || die "not touching $ROOT"
    if [ -x "$ROOT/usr/bin/apt-get" ] && [ -f "$ROOT/etc/debian_version" ]; then
        say "$ROOT exists already (remove it for a new one)"
    else
        command -v debootstrap >/dev/null || {
            say "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2 || {
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; } >&2
        }
        local mirror
        mirror=$(host_mirror)
        say "debootstrap --variant=minbase $SUITE $ROOT $mirror"
        debootstrap --variant=minbase "$SUITE" "$ROOT" "$mirror" >&2
    fi
    copy_settings
}

cmd_clone() {
    local source=${1:-$REPO} branch
    [ -d "$ROOT/root" ] || die "no root at $ROOT: run '$0 create' first"
    branch=$(git -C "$source" rev-parse --abbrev-ref HEAD)
    rm -rf "$ROOT/root/pymail"
    say "git clone $source ($branch, $(git -C "$source" rev-parse --short HEAD)) -> $ROOT/root/pymail"
    git clone -q --branch "$branch" "$source" "$ROOT/root/pymail" >&2
}

# Processes whose root directory is $ROOT (what `run` started and left behind).
inside_pids() {
    local p target
    for p in /proc/[0-9]*; do
        target=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$target" = "$ROOT" ] && echo "${p#/proc/}"
    done
}

# Mount points at or below $ROOT, deepest first (from the kernel's own table).
mounts_below() {
    awk -v root="$ROOT" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

# Unmount everything below $ROOT, one mount at a time (umount -R is not supported
# everywhere, e.g. under gVisor), and make sure nothing is left: /dev below the root is
# this machine's own /dev, which a later rm -rf of the root must never reach.
unmount_all() {
    local m
    for m in $(mounts_below); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    if [ -n "$(mounts_below)" ]; then
        say "still mounted below $ROOT: $(mounts_below | tr '\n' ' ')(unmount them by hand)"
        return 1
    fi
}

mount_all() {
    local m
    for m in proc sys dev; do
        mountpoint -q "$ROOT/$m" && continue
        mkdir -p "$ROOT/$m"
        case $m in
            proc) mount -t proc proc "$ROOT/proc" ;;
            sys) mount --rbind /sys "$ROOT/sys"; mount --make-rslave "$ROOT/sys" 2>/dev/null || true ;;
            dev) mount --rbind /dev "$ROOT/dev"; mount --make-rslave "$ROOT/dev" 2>/dev/null || true ;;  # with /dev/shm, /dev/pts
        esac
    done
}

cleanup() {
    local pids i
    pids=$(inside_pids)
    if [ -n "$pids" ]; then
        say "ending what was left running inside: $(echo $pids)"
        kill $pids 2>/dev/null || true
        for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.5; [ -z "$(inside_pids)" ] && break; done
        pids=$(inside_pids); [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    fi
    unmount_all
}

# Remove the root: only once nothing is mounted below it, and never across a file
# system boundary (rm --one-file-system), so this machine's /dev, /proc and /sys are safe
# even if an unmount was missed.
cmd_destroy() {
    [ -e "$ROOT" ] || return 0
    [ -z "$(inside_pids)" ] || die "processes still run inside $ROOT: $(inside_pids | tr '\n' ' ')"
    unmount_all || die "not removing $ROOT"
    say "removing $ROOT"
    rm -rf --one-file-system "$ROOT"
}

# The environment of a new root login, plus how this machine reaches the registries.
inside_env() {
    local v
    printf '%s\n' HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    for v in $(compgen -e); do
        case $v in PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY)
            printf '%s=%s\n' "$v" "${!v}" ;;
        esac
    done
}

cmd_run() {
    [ $# -gt 0 ] || die "run what?"
    [ -x "$ROOT/bin/bash" ] || die "no root at $ROOT: run '$0 create' first"
    local dir=/root/pymail status=0
    [ -d "$ROOT$dir" ] || dir=/root
    trap cleanup EXIT
    mount_all
    local envs=()
    mapfile -t envs < <(inside_env)
    env -i "${envs[@]}" chroot "$ROOT" /bin/bash -c 'cd "$1" && shift && exec "$@"' - "$dir" "$@" </dev/null || status=$?
    trap - EXIT
    cleanup || status=$((status ? status : 1))
    return "$status"
}

# ./scripts/run.sh must start and greet on 127.0.0.1:2525; then SIGTERM must stop it.
prove_run() {
    say "./scripts/run.sh (must answer 220 on 127.0.0.1:2525)"
    local log="$ROOT/root/run.log" i ok=
    trap cleanup EXIT
    mount_all
    local envs=()
    mapfile -t envs < <(inside_env)
    env -i "${envs[@]}" chroot "$ROOT" /bin/bash -c 'cd /root/pymail && exec ./scripts/run.sh' </dev/null >"$log" 2>&1 &
    local pid=$!
    for i in $(seq 1 600); do  # the first start installs pymail into a new venv
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        if timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2525 && head -c 3 <&3' 2>/dev/null | grep -q 220; then ok=1; break; fi
        sleep 1
    done
    tail -n 20 "$log" >&2
    if [ -n "$ok" ]; then say "run.sh: 220 on 127.0.0.1:2525"; else say "run.sh did not answer on 127.0.0.1:2525"; fi
    kill -TERM "$pid" 2>/dev/null || true
    local pids; pids=$(inside_pids); [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    say "run.sh stopped: $(tail -n 1 "$log")"
    trap - EXIT
    cleanup || ok=
    [ -n "$ok" ]
}

cmd_prove() {
    cmd_create
    cmd_clone "$@"
    local status=0
    say "./scripts/test.sh (the whole suite)"
    cmd_run ./scripts/test.sh || status=$?
    say "./scripts/test.sh exited $status"
    prove_run || status=$((status ? status : 1))
    return "$status"
}

case "${1:-}" in
    create) shift; cmd_create "$@" ;;
    destroy) shift; cmd_destroy ;;
    clone) shift; cmd_clone "$@" ;;
    run) shift; cmd_run "$@" ;;
    prove) shift; cmd_prove "$@" ;;
    prove-run) shift; prove_run ;;
    *) sed -n '2,/^$/p' "$SELF" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
