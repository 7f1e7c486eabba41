#!/usr/bin/env bash
# Set up and run evpay-agent on a fresh Debian machine: `bash hil/bootstrap.sh demo|test`.
#
#   demo  the agent against the built-in terminal simulator, a complete paid session, decoded
#   test  lint (ruff), types (mypy --strict on the whole tree) and the whole test suite
#
# Creates .venv (python3 -m venv) with the project and its dev tools, and installs mosquitto and
# socat with apt-get when they are missing and we may (root, or passwordless sudo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
target="${1:-}"
case "$target" in demo|test) ;; *) echo "usage: bash hil/bootstrap.sh demo|test" >&2; exit 2;; esac

log() { printf '== %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "cannot install $* (not root, no passwordless sudo): please install them"; return 1
    fi
  fi
  log "apt-get install $*"
  $sudo apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null || missing+=(socat)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}" || true; fi

python3 - <<'PY' || { echo "evpay-agent needs Python >= 3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp=".venv/.evpay-installed"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing evpay-agent and its dev tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi

case "$target" in
  demo)
    exec .venv/bin/python -m hil.demo
    ;;
  test)
    log "ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    log "mypy"
    .venv/bin/mypy --strict agent drivers statemachines hil tests
    log "pytest"
    # -n 3: most end-to-end tests wait on processes and sockets, so three workers fit two cores
    exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-3}" "${@:2}"
    ;;
esac
