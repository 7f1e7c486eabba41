#!/usr/bin/env bash
# Install evpay-agent on a charger controller (Debian-like, systemd), from this checkout:
#   sudo bash systemd/install.sh            # venv in /opt/evpay-agent/venv, unit enabled, not started
# Then edit /etc/evpay-agent/agent.yaml (copied from the example when absent), run
# `evpay-agent check-config /etc/evpay-agent/agent.yaml`, and `systemctl start evpay-agent`.
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/evpay-agent
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

install -d -m 0755 "$prefix"
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install -q --upgrade pip
"$prefix/venv/bin/pip" install -q "$src"
install -m 0644 "$src/README.md" "$prefix/README.md"

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
