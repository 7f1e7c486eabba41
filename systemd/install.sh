#!/usr/bin/env bash
# Install evpay-agent on a charger controller (Debian-like, systemd) from this checkout or from a
# wheelhouse; the Debian package (docs/release.md) is the way for controllers in the field.
#   sudo bash systemd/install.sh                  # venv in /opt/evpay-agent/venv from the checkout (needs the package index)
#   sudo bash systemd/install.sh --wheels DIR     # offline, from DIR (e.g. dist/wheels-ARCH of `hil/bootstrap.sh release`)
#   bash systemd/install.sh --check [--wheels DIR]  # only check the prerequisites
# The unit is enabled, not started. Then edit /etc/evpay-agent/agent.yaml (copied from the example
# when absent), run `evpay-agent check-config /etc/evpay-agent/agent.yaml`, and `systemctl start evpay-agent`.
# EVPAY_PYTHON names the interpreter (default python3), e.g. a Python >= 3.11 installed beside 3.9.
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/evpay-agent
python="${EVPAY_PYTHON:-python3}"
wheels=""
check_only=0

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
usage() { echo "usage: sudo bash systemd/install.sh [--wheels DIR] [--check]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) [ $# -ge 2 ] || usage; wheels="$2"; shift 2;;
    --wheels=*) wheels="${1#--wheels=}"; shift;;
    --check) check_only=1; shift;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0;;
    *) usage;;
  esac
done

# --- prerequisites, each with what to do about it ------------------------------------------------
command -v "$python" >/dev/null || die "$python not found: apt-get install python3 python3-venv (Python >= 3.11)"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || die "$python does not run"
case "$version" in
  3.1[1-9]|3.[2-9][0-9]|[4-9].*) ;;
  *) die "evpay-agent needs Python >= 3.11, but $python is Python $version.
  Debian 11 (bullseye) has 3.9: upgrade the controller to Debian 12 (bookworm), or install a
  Python >= 3.11 and name it with EVPAY_PYTHON=/path/to/python3.11, or build the Debian package
  for a Debian 12 controller (docs/release.md).";;
esac
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || die "Python $version has no venv module or no ensurepip (Debian ships them separately):
  apt-get install python3-venv   (or python$version-venv)"
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || die "--wheels $wheels: no such directory"
  compgen -G "$wheels/evpay_agent-*.whl" >/dev/null \
    || die "--wheels $wheels holds no evpay_agent-*.whl: build it with \`bash hil/bootstrap.sh release\` (dist/wheels-ARCH)"
else
  [ -f "$src/pyproject.toml" ] \
    || die "$src is not an evpay-agent checkout: give --wheels DIR, or install the Debian package"
fi
for tool in systemd-sysusers systemd-tmpfiles systemctl; do
  command -v "$tool" >/dev/null || die "$tool not found: evpay-agent runs as a systemd service (apt-get install systemd)"
done
if [ "$check_only" -eq 1 ]; then
  echo "install.sh: prerequisites met (Python $version, venv; from ${wheels:-the checkout $src})" >&2
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "run as root (sudo bash systemd/install.sh ...)"

# --- install ---------------------------------------------------------------------------------------
install -d -m 0755 "$prefix"
"$python" -m venv "$prefix/venv"
if [ -n "$wheels" ]; then
  "$prefix/venv/bin/pip" install -q --no-index --find-links "$wheels" evpay-agent
else
  "$prefix/venv/bin/pip" install -q --upgrade pip \
    || die "pip could not reach the package index: on an offline controller use --wheels DIR"
  "$prefix/venv/bin/pip" install -q "$src"
fi
install -m 0644 "$src/README.md" "$prefix/README.md" 2>/dev/null || true

install -m 0644 "$src/systemd/evpay-agent.sysusers" /usr/lib/sysusers.d/evpay-agent.conf
install -m 0644 "$src/systemd/evpay-agent.tmpfiles" /usr/lib/tmpfiles.d/evpay-agent.conf
systemd-sysusers /usr/lib/sysusers.d/evpay-agent.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/evpay-agent.conf
if [ ! -f /etc/evpay-agent/agent.yaml ]; then
  install -m 0640 -g evpay-agent "$src/systemd/agent.example.yaml" /etc/evpay-agent/agent.yaml
  echo "wrote /etc/evpay-agent/agent.yaml from the example: edit it before starting" >&2
fi
install -m 0644 "$src/systemd/evpay-agent.service" /etc/systemd/system/evpay-agent.service
systemctl daemon-reload
systemctl enable evpay-agent.service
echo "installed; start with: systemctl start evpay-agent" >&2
