#!/usr/bin/env bash
# Build the Debian package evpay-agent_VERSION_ARCH.deb from this checkout, for the architecture of
# the machine it runs on (docs/release.md; `bash hil/bootstrap.sh release` calls this).
#
#   bash systemd/debian/build-deb.sh [OUTDIR]   # default OUTDIR: dist/; staging: $EVPAY_BUILD_DIR or build/deb
#
# The package holds a self-contained venv at /opt/evpay-agent/venv made by the Debian system Python
# (EVPAY_PYTHON, default /usr/bin/python3) with every dependency installed from wheels built here
# (pip may use the package index and its cache now; installing the .deb needs no network). The venv
# is created in a staging tree, build/deb/root/opt/evpay-agent/venv, and fixed up for its final path:
# the staging prefix is removed from every text file (script shebangs, activate, pyvenv.cfg) and the
# build fails if it is still found in any file. No byte code is shipped: postinst compiles it where
# it is installed, prerm removes it (what dh_python3 does with py3compile/py3clean).
#
# Also writes OUTDIR/wheels-ARCH/, the wheelhouse the venv was installed from, for
# `systemd/install.sh --wheels DIR` on a machine without network.
set -euo pipefail
umask 022
export LC_ALL=C.UTF-8

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deb_dir="$src/systemd/debian"
out="$(mkdir -p "${1:-$src/dist}" && cd "${1:-$src/dist}" && pwd)"
py="${EVPAY_PYTHON:-/usr/bin/python3}"
prefix=/opt/evpay-agent
work="${EVPAY_BUILD_DIR:-$src/build/deb}"
root="$work/root"
venv="$root$prefix/venv"
maintainer="${EVPAY_DEB_MAINTAINER:-evpay-agent maintainers <maintainers@users.noreply.r-seed-923e1271.example>}"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'build-deb: %s\n' "$*" >&2; exit 1; }

for tool in dpkg-deb dpkg-shlibdeps git gzip tar strip; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev binutils git)"
done
"$py" -c 'import venv, ensurepip' 2>/dev/null || die "$py has no venv/ensurepip: apt-get install python3-venv"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$py is Python $pyver; evpay-agent needs >= 3.11"
pyminor="${pyver#*.}"
arch="$(dpkg --print-architecture)"
upstream="$("$py" -c 'import tomllib; print(tomllib.load(open("'"$src"'/pyproject.toml", "rb"))["project"]["version"])')"
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1
version="$(printf '%s' "$upstream" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/')"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)}"
commit="$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""; [ -z "$(git -C "$src" status --porcelain 2>/dev/null)" ] || dirty=" (with uncommitted changes)"
deb="$out/evpay-agent_${version}_${arch}.deb"

log "evpay-agent $version for $arch with Python $pyver ($py), from $commit$dirty"
# the staging directory is deleted first: only one this script made (it holds the marker file)
case "$work" in /|"") die "EVPAY_BUILD_DIR='$work' cannot be a staging directory";; esac
if [ -e "$work" ] && [ -n "$(ls -A "$work")" ] && [ ! -f "$work/.evpay-agent-build" ]; then
  die "$work exists and was not made by build-deb.sh: remove it or set EVPAY_BUILD_DIR"
fi
rm -rf "$work"
mkdir -p "$work/src" "$work/wheels" "$root/DEBIAN"
touch "$work/.evpay-agent-build"

# 1. the sources as the checkout has them (tracked and new files, nothing git-ignored: no stale
#    build/lib, no egg-info, no caches), so the wheel is exactly what `git status` shows
# shellcheck disable=SC2016 # "$f" is for the inner sh: tracked files deleted from the tree are skipped
(cd "$src" && git ls-files -z --cached --others --exclude-standard \
  | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done; true' sh \
  | tar --null -T - -cf -) | tar -xf - -C "$work/src"

# 2. the venv and the wheelhouse: every distribution as a wheel (msgspec etc. are built from the
#    sdist where the index has no wheel for this platform: needs gcc and python3-dev)
log "venv and wheels"
"$py" -m venv "$venv"
vpy="$venv/bin/python"
pipq=(-m pip --disable-pip-version-check -q)
"$vpy" "${pipq[@]}" wheel --wheel-dir "$work/wheels" "$work/src"
"$vpy" "${pipq[@]}" install --no-index --find-links "$work/wheels" --no-compile "evpay-agent==$upstream"
"$vpy" "${pipq[@]}" check
"$vpy" "${pipq[@]}" uninstall -y pip setuptools   # not needed at run time; the wheelhouse is shipped beside
rm -rf "$out/wheels-$arch" && cp -r "$work/wheels" "$out/wheels-$arch"
rm -rf "$work/src"   # the copy of the checkout (its tests hold test card numbers) is not needed now

# 3. fix up the venv for its final path; drop byte code, test suites and the non-POSIX activators
site="$venv/lib/python$pyver/site-packages"
find "$venv" -depth \( -name __pycache__ -o -name '*.py[co]' \) -exec rm -rf {} +
find "$site" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
rm -f "$venv/bin/Activate.ps1" "$venv/bin/activate.csh" "$venv/bin/activate.fish"
rm -rf "$venv/include"   # headers for building in the venv: not done on the target
# PyYAML's optional accelerator links a static copy of libyaml (lintian: embedded-library); the agent
# uses the pure-Python SafeLoader (line numbers for check-config), so yaml runs without it
rm -f "$site"/yaml/_yaml.*.so && sed -i '/^yaml\/_yaml\..*\.so,/d' "$site"/pyyaml-*.dist-info/RECORD
# library modules are not scripts: drop the "#!/usr/bin/env python" line of non-executable ones
find "$site" -name '*.py' -type f ! -perm /111 -exec grep -l -m1 '^#!' {} + 2>/dev/null \
  | while read -r f; do if head -n1 "$f" | grep -q '^#!'; then sed -i 1d "$f"; fi; done
# the extension modules as dh_strip would leave them (the wheels ship them with symbols)
find "$site" -name '*.so' -type f -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
grep -rlIZ -F "$root" "$venv" | xargs -0 -r sed -i "s#$root##g"
if grep -rl -F "$root" "$root"; then die "the staging path $root is still in the files above"; fi
if grep -rl -F "$work/src" "$root"; then die "the build path $work/src is still in the files above"; fi

# 4. the rest of the tree
install -D -m 0644 "$src/README.md" "$root$prefix/README.md"
install -D -m 0644 "$src/systemd/evpay-agent.service" "$root/usr/lib/systemd/system/evpay-agent.service"
install -D -m 0644 "$src/systemd/evpay-agent.sysusers" "$root/usr/lib/sysusers.d/evpay-agent.conf"
install -D -m 0644 "$src/systemd/evpay-agent.tmpfiles" "$root/usr/lib/tmpfiles.d/evpay-agent.conf"
install -D -m 0644 "$src/systemd/agent.example.yaml" "$root/etc/evpay-agent/agent.yaml"
install -D -m 0644 "$deb_dir/lintian-overrides" "$root/usr/share/lintian/overrides/evpay-agent"
doc="$root/usr/share/doc/evpay-agent"
install -d "$doc"
{
  printf 'evpay-agent (%s) stable; urgency=medium\n\n' "$version"
  printf '  * Release %s, built from git %s%s.\n\n' "$upstream" "$commit" "$dirty"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.gz"
"$vpy" "$deb_dir/copyright.py" "$src/LICENSE" "$site" > "$doc/copyright"

# 5. control files
install -m 0755 "$deb_dir/postinst" "$deb_dir/prerm" "$deb_dir/postrm" "$root/DEBIAN/"
echo /etc/evpay-agent/agent.yaml > "$root/DEBIAN/conffiles"
# libc (and whatever else) the compiled extension modules link against
mapfile -t sos < <(find "$root" -name '*.so*' -type f)
shlibs=""
if [ ${#sos[@]} -gt 0 ]; then
  mkdir -p "$work/shlibs/debian" && printf 'Source: evpay-agent\n\nPackage: evpay-agent\nArchitecture: any\n' > "$work/shlibs/debian/control"
  shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O --ignore-missing-info "${sos[@]/#/-e}" | sed -n 's/^shlibs:Depends=//p')"
fi
depends="python3 (>= 3.$pyminor~), python3 (<< 3.$((pyminor + 1))), init-system-helpers (>= 1.54~)${shlibs:+, $shlibs}"
installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@DEPENDS@|$depends|" -e "s|@INSTALLED_SIZE@|$installed_size|" \
    "$deb_dir/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$root/DEBIAN/md5sums"

log "dpkg-deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
log "built $deb ($(du -h "$deb" | cut -f1), installed $installed_size KiB)"
printf '%s\n' "$deb"
