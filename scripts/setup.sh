#!/usr/bin/env bash
# Sourced by scripts/run and scripts/test: installs what is missing, then returns.
#   setup_jego run   -> Debian packages the service needs, .venv, pip packages
#   setup_jego test  -> the same, plus Chromium, sipp, baresip and the test extras
# Idempotent: a second run checks a stamp and does nothing.
set -euo pipefail

JEGO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export JEGO_ROOT

_jego_log() { printf '[setup] %s\n' "$*" >&2; }

_jego_missing_debs() {
    local pkg missing=()
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    printf '%s\n' "${missing[@]:-}"
}

_jego_apt() {
    command -v dpkg-query >/dev/null 2>&1 || { _jego_log "not a Debian system: install $* yourself"; return 0; }
    local missing
    missing=$(_jego_missing_debs "$@" | xargs)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        _jego_log "missing Debian packages: $missing (run as root, or: sudo apt-get install $missing)"
        return 0
    fi
    _jego_log "installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

setup_jego() {
    local mode="${1:-run}"
    local debs=(libopus0 python3-venv)
    if [ "$mode" = test ]; then
        # Real servers the tests start and stop by PID (tests/servers.py), the browser, SIP peers;
        # fonts: CJK and emoji, so Chinese (and 👍) render in the browser tests' screenshots.
        debs+=(chromium sip-tester baresip iproute2 util-linux redis-server postgresql prometheus coturn
               postgresql-client fonts-noto-cjk fonts-noto-color-emoji
               flite espeak-ng)  # voices other than the repo's sample: scripts/bench_loss.py --tts
    fi
    _jego_apt "${debs[@]}"

    local py="${PYTHON:-python3}"
    if [ ! -x "$JEGO_ROOT/.venv/bin/python" ]; then
        _jego_log "creating .venv"
        "$py" -m venv "$JEGO_ROOT/.venv"
    fi
    local extras=""
    [ "$mode" = test ] && extras="[test]"
    local stamp="$JEGO_ROOT/.venv/.jego-stamp-$mode"
    local want
    want=$(cat "$JEGO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    local test_stamp="$JEGO_ROOT/.venv/.jego-stamp-test"
    if [ "$mode" = run ] && [ -f "$test_stamp" ] && [ "$(cat "$test_stamp")" = "$want" ]; then
        stamp="$test_stamp"  # the test set-up installs everything the service needs
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        _jego_log "installing pip packages ($mode)"
        "$JEGO_ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$JEGO_ROOT$extras"
        echo "$want" > "$stamp"
    fi
    export PATH="$JEGO_ROOT/.venv/bin:$PATH"
}
