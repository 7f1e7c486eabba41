#!/usr/bin/env bash
# Set up and run evpay-agent on a fresh Debian machine: `bash hil/bootstrap.sh demo|test|release`.
#
#   demo     the agent against the built-in terminal simulator, a complete paid session, decoded
#   test     lint (ruff), types (mypy --strict on the whole tree) and the whole test suite
#   release  [--arch ARCH] the Debian package dist/evpay-agent_VERSION_ARCH.deb (docs/release.md):
#            for this machine's architecture, or arm64/armhf in an emulated Debian 12 container
#
# demo and test create .venv (python3 -m venv): demo installs the project alone, test adds its dev
# tools. Missing Debian packages are installed with apt-get when we may (root, or passwordless sudo):
# mosquitto (demo, test), socat and the packaging tools dpkg-dev, binutils and lintian (test), and
# python3-venv (all three).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
target="${1:-}"
usage() { echo "usage: bash hil/bootstrap.sh demo|test|release [--arch amd64|arm64|armhf]" >&2; exit 2; }
case "$target" in demo|test|release) ;; *) usage;; esac

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
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "$target" != release ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
fi
if [ "$target" = test ]; then
  command -v socat >/dev/null || missing+=(socat)
  # the packaging test (tests/packaging/test_deb.py) builds the .deb and runs lintian on it
  command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
  command -v strip >/dev/null || missing+=(binutils)
  command -v lintian >/dev/null || missing+=(lintian)
fi
if [ "$target" = release ]; then
  command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
  command -v strip >/dev/null || missing+=(binutils)
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}" || true; fi

python3 - <<'PY' || { echo "evpay-agent needs Python >= 3.11 (Debian 12 or later; see systemd/install.sh)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ "$target" = release ]; then
  shift
  arch=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) [ $# -ge 2 ] || usage; arch="$2"; shift 2;;
      --arch=*) arch="${1#--arch=}"; shift;;
      *) usage;;
    esac
  done
  if [ -z "$arch" ] || [ "$arch" = "$(dpkg --print-architecture)" ]; then
    exec bash systemd/debian/build-deb.sh
  fi
  exec bash systemd/debian/cross-build.sh "$arch"
fi

# demo: the project and its dependencies; test: also the dev tools. Separate stamps, so a demo
# after a test reuses the dev install (a superset) and a test after a demo adds the dev tools.
runtime_stamp=".venv/.evpay-installed-runtime"
dev_stamp=".venv/.evpay-installed"
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if [ "$target" = demo ]; then
  if ! fresh "$dev_stamp" && ! fresh "$runtime_stamp"; then
    log "installing evpay-agent into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    touch "$runtime_stamp"
  fi
elif ! fresh "$dev_stamp"; then
  log "installing evpay-agent and its dev tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$dev_stamp"
fi
# byte code for the project's own sources (pip compiled the dependencies; an editable install leaves
# ours uncompiled, and PYTHONDONTWRITEBYTECODE may forbid writing it on import): every start would
# compile ~300 modules again (~150 ms of start -> READY, docs/performance.md). The .deb's postinst
# does the same on the target. A source edited later is recompiled in memory, never run stale.
.venv/bin/python -m compileall -q -j 0 agent drivers statemachines hil >/dev/null

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
