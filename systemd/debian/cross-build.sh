#!/usr/bin/env bash
# Build evpay-agent_VERSION_ARCH.deb for another architecture (docs/release.md):
#
#   bash systemd/debian/cross-build.sh arm64|armhf [OUTDIR]   # (bash hil/bootstrap.sh release --arch ...)
#
# Not a cross compiler: build-deb.sh runs unchanged inside an emulated Debian 12 container of the
# target architecture (docker + qemu-user via binfmt_misc), so the venv is made by that
# architecture's /usr/bin/python3 and every wheel is for it. Where the package index has no wheel
# for the platform (msgspec and PyYAML on armhf/armv7), pip builds one from the sdist with the
# container's gcc and python3-dev; under emulation that takes minutes. The pip cache is kept in the
# docker volume evpay-agent-pip-cache-ARCH.
#
# Without docker: run `bash hil/bootstrap.sh release` on a Debian 12 machine of that architecture
# (the controller itself, or a Raspberry Pi OS/Debian 12 board): it builds natively.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
arch="${1:-}"
out="$(mkdir -p "${2:-$src/dist}" && cd "${2:-$src/dist}" && pwd)"
image="${EVPAY_CROSS_IMAGE:-debian:bookworm}"
case "$arch" in
  arm64) platform=linux/arm64; qemu="qemu-aarch64";;
  armhf) platform=linux/arm/v7; qemu="qemu-arm";;
  amd64) platform=linux/amd64; qemu="qemu-x86_64";;
  *) echo "cross-build: unknown architecture '$arch' (arm64, armhf, amd64)" >&2; exit 2;;
esac

die() { printf 'cross-build: %s\n' "$*" >&2; exit 1; }
command -v docker >/dev/null || die "docker not found. Install docker (and qemu-user-static), or build natively on a $arch Debian 12 machine: bash hil/bootstrap.sh release"
docker info >/dev/null 2>&1 || die "the docker daemon is not reachable. Start it, or build natively on a $arch Debian 12 machine: bash hil/bootstrap.sh release"
if [ "$arch" != "$(dpkg --print-architecture 2>/dev/null || true)" ] && [ ! -e "/proc/sys/fs/binfmt_misc/$qemu" ]; then
  die "no binfmt_misc handler for $qemu: apt-get install qemu-user-static binfmt-support, or
  docker run --privileged --rm tonistiigi/binfmt --install arm64,arm"
fi

echo "== building evpay-agent for $arch in $image ($platform)" >&2
docker run --rm --platform "$platform" \
  -v "$src:/src:ro" -v "$out:/out" -v "evpay-agent-pip-cache-$arch:/root/.cache/pip" \
  -e SOURCE_DATE_EPOCH="$(git -C "$src" log -1 --format=%ct)" \
  "$image" bash -euo pipefail -c '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # gcc, libc6-dev, python3-dev: wheels built from sdists (msgspec has no armv7 wheel)
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
      dpkg-dev binutils git ca-certificates >/dev/null
    git config --global --add safe.directory /src
    EVPAY_BUILD_DIR=/tmp/build bash /src/systemd/debian/build-deb.sh /out
  '
