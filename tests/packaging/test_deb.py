"""The release package (docs/release.md): built from the checkout, installed into a clean root.

The .deb is built once per test session (shared by xdist workers through a lock) with
``systemd/debian/build-deb.sh``, then installed with ``dpkg --root`` into an empty directory whose
``/usr`` is an overlay of the host's (so dpkg can add the unit and snippets without touching the
host) in a private mount namespace with no network (``unshare --mount --net``). systemd is not PID 1
there: the maintainer scripts must cope. Fake ``systemctl`` and ``deb-systemd-invoke`` record what
the scripts ask systemd to do when they believe it runs (``/run/systemd/system`` exists in the root).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "systemd" / "debian" / "build-deb.sh"
OVERRIDES = ROOT / "systemd" / "debian" / "lintian-overrides"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PREFIX = "/opt/evpay-agent"
VENV_BIN = f"{PREFIX}/venv/bin/evpay-agent"
CONFIG = "/etc/evpay-agent/agent.yaml"
NOT_STARTED = "installed and enabled but NOT started"

# A systemd tool in the root: what needs a running systemd is only written to /tmp/systemd-calls
# (name and arguments); the rest (enable, preset, is-enabled: symlinks on disk) runs the real tool.
FAKE_TOOL = """#!/bin/sh
for arg; do
    case "$arg" in
        daemon-reload|start|stop|restart|try-restart|reload|is-active)
            echo "$(basename "$0") $*" >> /tmp/systemd-calls; exit 0;;
    esac
done
[ "$(basename "$0")" = systemctl ] || { echo "$(basename "$0") $*" >> /tmp/systemd-calls; exit 0; }
exec /usr/bin/systemctl "$@"
"""


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespace, overlay mount, chroot)"
    for tool in ("dpkg", "dpkg-deb", "dpkg-shlibdeps", "unshare", "chroot", "git", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (hil/bootstrap.sh test installs dpkg-dev, binutils)"
    if not Path("/usr/bin/python3").exists():
        return "no /usr/bin/python3 (the Debian system Python the venv is built with)"
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare --mount --net not permitted here: {probe.stderr.decode().strip()}"
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("upper", "work", "merged"):
            Path(tmp, d).mkdir()
        options = f"lowerdir=/usr,upperdir={tmp}/upper,workdir={tmp}/work"
        mount = f"mount -t overlay overlay -o {options} {tmp}/merged"
        overlay = subprocess.run(["unshare", "--mount", "sh", "-c", mount], capture_output=True)
    if overlay.returncode != 0:
        return f"no overlay mount here (the root's /usr): {overlay.stderr.decode().strip()}"
    return None


@dataclass(frozen=True)
class Package:
    deb: Path
    build_dir: Path
    arch: str


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    reason = _missing_prerequisite()
    if reason:
        pytest.skip(reason)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    base = tmp_path_factory.getbasetemp()
    # one build per session: xdist workers' base directories share this session's parent
    shared = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "evpay-deb"
    shared.mkdir(exist_ok=True)
    deb = shared / "dist" / f"evpay-agent_{VERSION}_{arch}.deb"
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not deb.exists():
            env = {**os.environ, "EVPAY_BUILD_DIR": str(shared / "build")}
            proc = subprocess.run(
                ["bash", str(BUILD), str(shared / "dist")],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return Package(deb=deb, build_dir=shared / "build", arch=arch)


class Root:
    """An empty Debian root: its own /etc, /var, /opt and dpkg database; /usr overlays the host's."""

    def __init__(self, base: Path) -> None:
        self.path = base / "root"
        self.upper = base / "usr-upper"  # what dpkg writes to /usr ends up here
        self.work = base / "usr-work"
        self.upper.mkdir()
        self.work.mkdir()
        for d in ("usr", "etc", "dev", "tmp", "opt", "run/systemd/system", "var/lib/dpkg/info"):
            (self.path / d).mkdir(parents=True)
        r = self.path
        for sub in ("var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
            (r / sub).mkdir()
        (r / "tmp").chmod(0o1777)
        for link in ("bin", "lib", "lib64", "sbin"):  # merged /usr, as on Debian 12
            (r / link).symlink_to(f"usr/{link}")
        (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (r / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
        # the host's /usr is this root's: its python3, libc6 and init-system-helpers are installed
        packages = ["python3", "libc6", "init-system-helpers"]
        status = subprocess.run(["dpkg-query", "-s", *packages], capture_output=True, text=True, check=True)
        (r / "var/lib/dpkg/status").write_text(status.stdout)
        (r / "var/lib/dpkg/available").touch()
        names = subprocess.run(
            ["dpkg-query", "-W", "-f", "${binary:Package}\n", *packages],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in names:
            shutil.copy(f"/var/lib/dpkg/info/{name}.list", r / "var/lib/dpkg/info")
        # systemd "runs": record what the maintainer scripts ask of it
        fakes = self.upper / "local" / "bin"
        fakes.mkdir(parents=True)
        for tool in ("systemctl", "deb-systemd-invoke"):
            (fakes / tool).write_text(FAKE_TOOL)
            (fakes / tool).chmod(0o755)

    def run(self, *argv: str, proc: bool = False, chroot: bool = False) -> subprocess.CompletedProcess[str]:
        """``argv`` in a new mount and network namespace with this root's /usr and /dev mounted."""
        r = self.path
        mounts = [
            f"mount -t overlay overlay -o lowerdir=/usr,upperdir={self.upper},workdir={self.work} {r}/usr",
            f"mount -t tmpfs -o mode=0755 tmpfs {r}/dev",
        ]
        for dev in ("null", "zero", "random", "urandom"):
            mounts += [f"touch {r}/dev/{dev}", f"mount --bind /dev/{dev} {r}/dev/{dev}"]
        if proc:
            mounts.append(f"mkdir -p {r}/proc && mount -t proc proc {r}/proc")
        command = ["chroot", str(r), *argv] if chroot else list(argv)
        script = " && ".join(mounts) + ' && exec "$@"'
        return subprocess.run(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec", script, "sh", *command],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def dpkg(self, *args: str, proc: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run("dpkg", f"--root={self.path}", "--force-unsafe-io", *args, proc=proc)

    def systemd_calls(self) -> list[str]:
        calls = self.path / "tmp" / "systemd-calls"
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return lines

    def usr(self, path: str) -> Path:
        """Where a file the package installed under /usr lies (the overlay's upper directory)."""
        return self.upper / Path(path).relative_to("/usr")


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _files(*tops: Path) -> Iterator[Path]:
    for top in tops:
        for path in top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def _leaks(package: Package, *tops: Path) -> list[str]:
    needles = [str(package.build_dir).encode(), str(ROOT).encode()]
    return [str(p) for p in _files(*tops) if any(n in p.read_bytes() for n in needles)]


def _repack(package: Package, tmp_path: Path, version: str) -> Path:
    """The same package with another version: an upgrade without building the venv again."""
    tree = tmp_path / f"repack-{version}"
    _ok(subprocess.run(["dpkg-deb", "-R", str(package.deb), str(tree)], capture_output=True, text=True))
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    deb = tmp_path / f"evpay-agent_{version}_{package.arch}.deb"
    build = ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(deb)]
    _ok(subprocess.run(build, capture_output=True, text=True))
    return deb


@pytest.mark.timeout(600)
def test_package_contents(package: Package, tmp_path: Path) -> None:
    fields = {
        name: subprocess.run(
            ["dpkg-deb", "-f", str(package.deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()
        for name in ("Package", "Version", "Architecture", "Depends")
    }
    assert fields["Package"] == "evpay-agent"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == package.arch
    assert "python3 (>= 3.11~), python3 (<< 3.12)" in fields["Depends"]  # the venv's interpreter
    assert "libc6 (>=" in fields["Depends"]  # msgspec's extension module
    control = tmp_path / "control"
    _ok(subprocess.run(["dpkg-deb", "-e", str(package.deb), str(control)], capture_output=True, text=True))
    assert (control / "conffiles").read_text().split() == [CONFIG]
    for script in ("postinst", "prerm", "postrm"):
        assert (control / script).stat().st_mode & 0o777 == 0o755
        syntax = subprocess.run(["sh", "-n", str(control / script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
        if shutil.which("shellcheck"):  # optional: not installed by bootstrap
            lint = subprocess.run(
                ["shellcheck", "-s", "sh", str(control / script)], capture_output=True, text=True
            )
            assert lint.returncode == 0, lint.stdout
    md5sums = (control / "md5sums").read_text()
    tree = tmp_path / "tree"
    _ok(subprocess.run(["dpkg-deb", "-x", str(package.deb), str(tree)], capture_output=True, text=True))
    files = {str(p.relative_to(tree)) for p in _files(tree)}
    assert files == {line.split(None, 1)[1] for line in md5sums.splitlines()}  # every file summed
    for path in (
        "usr/lib/systemd/system/evpay-agent.service",
        "usr/lib/sysusers.d/evpay-agent.conf",
        "usr/lib/tmpfiles.d/evpay-agent.conf",
        "etc/evpay-agent/agent.yaml",
        "usr/share/doc/evpay-agent/copyright",
        "usr/share/doc/evpay-agent/changelog.gz",
        "usr/share/lintian/overrides/evpay-agent",
        "opt/evpay-agent/venv/pyvenv.cfg",
        "opt/evpay-agent/venv/bin/evpay-agent",
    ):
        assert path in files, path
    unit = tree / "usr/lib/systemd/system/evpay-agent.service"
    assert unit.read_bytes() == (ROOT / "systemd/evpay-agent.service").read_bytes()  # shipped as-is
    venv = tree / "opt/evpay-agent/venv"
    assert not [p for p in venv.rglob("*") if p.name in ("tests", "test") and p.is_dir()]
    assert not [p for p in venv.rglob("*") if p.suffix in (".pyc", ".pyo") or p.name == "__pycache__"]
    assert not (venv / "bin/pip").exists()
    assert (venv / "bin/evpay-agent").read_text().startswith(f"#!{PREFIX}/venv/bin/python\n")
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg
    assert f"venv {PREFIX}/venv" in cfg
    assert os.readlink(venv / "bin/python3") == "/usr/bin/python3"
    assert not _leaks(package, tree)  # neither the staging tree nor the checkout is named anywhere


@pytest.mark.timeout(600)
def test_install_upgrade_and_purge_in_a_clean_root_without_network(package: Package, tmp_path: Path) -> None:
    root = Root(tmp_path)
    r = root.path

    # first install: user, directories, byte code, unit enabled, nothing started; no /proc here
    out = _ok(root.dpkg("-i", str(package.deb)))
    assert NOT_STARTED in out
    assert root.systemd_calls() == ["systemctl --system daemon-reload"]  # no start
    version = _ok(root.run(VENV_BIN, "--version", chroot=True))
    assert version.strip() == f"evpay-agent {VERSION}"

    help_text = _ok(root.run(VENV_BIN, "check-config", "--help", chroot=True))
    if "--example" in help_text:
        _ok(root.run(VENV_BIN, "check-config", "--example", CONFIG, chroot=True))
    # as shipped, the example names placeholder secret files that do not exist yet
    check = root.run(VENV_BIN, "check-config", CONFIG, chroot=True)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "cannot read /etc/evpay-agent/" in check.stderr
    assert "Traceback" not in check.stderr

    passwd = (r / "etc/passwd").read_text()
    user = re.search(
        r"^evpay-agent:x:(\d+):(\d+):[^:]*:/var/lib/evpay-agent:/usr/sbin/nologin$", passwd, re.M
    )
    assert user, passwd
    uid, gid = int(user[1]), int(user[2])
    assert re.search(r"^dialout:x:20:evpay-agent$", (r / "etc/group").read_text(), re.M)
    state = (r / "var/lib/evpay-agent").stat()
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o750, uid, gid)
    etc = (r / "etc/evpay-agent").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 0, gid)
    conf = (r / CONFIG.lstrip("/")).stat()
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid) == (0o640, 0, gid)
    assert (r / CONFIG.lstrip("/")).read_bytes() == (ROOT / "systemd/agent.example.yaml").read_bytes()
    wants = r / "etc/systemd/system/multi-user.target.wants/evpay-agent.service"
    assert wants.is_symlink()
    assert root.usr("/usr/lib/systemd/system/evpay-agent.service").is_file()
    assert root.usr("/usr/lib/sysusers.d/evpay-agent.conf").is_file()
    assert root.usr("/usr/lib/tmpfiles.d/evpay-agent.conf").is_file()
    pycs = list((r / "opt/evpay-agent/venv").rglob("*.pyc"))
    assert pycs  # compiled by postinst, for the paths they are installed at
    assert not _leaks(package, r / "opt", r / "etc", root.upper / "lib", root.upper / "share")

    # an edited conffile survives an upgrade; the upgrade restarts a running agent, starts no other
    edited = (r / CONFIG.lstrip("/")).read_text() + "# edited by the installer\n"
    (r / CONFIG.lstrip("/")).write_text(edited)
    shadow = r / "etc/systemd/system/evpay-agent.service"  # what systemd/install.sh installed
    shadow.write_text("[Service]\n")
    newer = _repack(package, tmp_path, f"{VERSION}+test1")
    out = _ok(root.dpkg("--force-confold", "-i", str(newer), proc=True))  # with /proc: systemd-tmpfiles
    assert NOT_STARTED not in out
    assert "/etc/systemd/system/evpay-agent.service (from systemd/install.sh?) overrides" in out
    shadow.unlink()
    assert root.systemd_calls() == [
        "systemctl --system daemon-reload",  # the old package's postrm upgrade
        "systemctl --system daemon-reload",  # the new postinst configure 0.1.0 ...
        "deb-systemd-invoke try-restart evpay-agent.service",  # ... restarts it if it runs
    ]
    status = _ok(root.run("dpkg-query", f"--admindir={r}/var/lib/dpkg", "-W", "evpay-agent"))
    assert status.split() == ["evpay-agent", f"{VERSION}+test1"]
    assert (r / CONFIG.lstrip("/")).read_text() == edited
    assert _ok(root.run(VENV_BIN, "--version", chroot=True)).strip() == f"evpay-agent {VERSION}"
    assert list((r / "opt/evpay-agent/venv").rglob("*.pyc"))

    # remove stops it; purge keeps a journal that still holds money (renamed, with a warning) ...
    journal = r / "var/lib/evpay-agent/journal.sqlite3"
    _journal(journal, open_payments=1, undelivered=0)
    _ok(root.dpkg("--remove", "evpay-agent"))
    assert "deb-systemd-invoke stop evpay-agent.service" in root.systemd_calls()
    assert not (r / "opt/evpay-agent/venv").exists()
    assert journal.exists()  # remove keeps state and config
    out = _ok(root.dpkg("--purge", "evpay-agent"))
    kept = list((r / "var/lib").glob("evpay-agent.purged-*"))
    assert len(kept) == 1, out
    assert (kept[0] / "journal.sqlite3").exists()
    assert "still holds payments not settled" in out
    assert not (r / "var/lib/evpay-agent").exists()
    assert not (r / "etc/evpay-agent").exists()
    assert not wants.is_symlink()
    assert "evpay-agent:" in (r / "etc/passwd").read_text()

    # ... and one with undelivered events; a settled journal is deleted with the state directory
    for open_payments, undelivered, deleted in ((0, 3, False), (0, 0, True)):
        shutil.rmtree(kept[0])
        _ok(root.dpkg("-i", str(package.deb)))
        _journal(journal, open_payments=open_payments, undelivered=undelivered)
        _ok(root.dpkg("--purge", "evpay-agent"))
        kept = list((r / "var/lib").glob("evpay-agent.purged-*"))
        assert (kept == []) is deleted, (open_payments, undelivered)
        assert not (r / "var/lib/evpay-agent").exists()
        if deleted:
            break


def _journal(path: Path, *, open_payments: int, undelivered: int) -> None:
    """A journal (only the columns postrm reads) with ``open_payments`` payments not ended and
    ``undelivered`` outbox rows, next to one ended payment."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE payments (payment_id TEXT PRIMARY KEY, ended_at TEXT)")
        conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT)")
        conn.execute("INSERT INTO payments VALUES ('ended', '2026-12-04T10:00:00.000000Z')")
        conn.executemany(
            "INSERT INTO payments VALUES (?, NULL)", [(f"open-{n}",) for n in range(open_payments)]
        )
        conn.executemany("INSERT INTO outbox (topic) VALUES (?)", [("t",)] * undelivered)
    conn.close()


def test_lintian_clean_but_for_documented_overrides(package: Package) -> None:
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.skip("lintian not installed (hil/bootstrap.sh test installs it)")
    proc = subprocess.run(
        [lintian, "--display-info", "--tag-display-limit", "0", str(package.deb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in (proc.stdout + proc.stderr).splitlines() if re.match(r"^[EWIXP]: ", line)]
    assert not tags, "\n".join(tags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every override carries a comment saying why
    lines = OVERRIDES.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("evpay-agent:"):
            assert lines[i - 1].startswith(("#", "evpay-agent:")), line
