"""Makes ``tests.apps`` importable however pytest is started (``pytest`` or
``python -m pytest``): worker subprocesses import it from the repository root too."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# -- a private, throwaway PostgreSQL cluster ------------------------------------------
#
# For tests that stop and start the server (never the shared one on port 5432): one
# cluster per session, created with initdb in a temporary directory, on a free port,
# trust auth. As root it runs as the ``postgres`` OS user (the server refuses root).

import contextlib  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


def _pg_bindir() -> str | None:
    """The directory of initdb/pg_ctl: PG_BINDIR, ``pg_config --bindir``, else the newest
    /usr/lib/postgresql/*/bin."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                         check=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                         reverse=True)
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "initdb")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """A PostgreSQL cluster of our own, which tests may stop and start at will."""

    def __init__(self, bindir: str, root: str) -> None:
        self.bindir = bindir
        self.root = root
        self.data = os.path.join(root, "data")
        self.logfile = os.path.join(root, "server.log")
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(root, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                "max_connections = 100\nshared_buffers = 32MB\nfsync = on\n"
            )
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, os.path.join(self.bindir, tool), *args], capture_output=True,
                              text=True, check=True, timeout=timeout, cwd=self.root)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, schema: str) -> str:
        return f"{self.admin_url}?schema={schema}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """``mode``: fast (end sessions, clean shut-down) or immediate (a crash: recovery at start)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    @property
    def running(self) -> bool:
        return subprocess.run([*self.as_user, os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"],
                              capture_output=True).returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if self.running:
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivateCluster]:
    """A throwaway PostgreSQL cluster for tests that restart the server. Skips (with
    CI=true: fails) when the PostgreSQL server binaries are not installed."""
    bindir = _pg_bindir()
    reason = None if bindir else "PostgreSQL server binaries (initdb, pg_ctl) not found"
    if bindir and os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        reason = "running as root needs runuser and a postgres OS user to start a server"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="stoic-pg-")
    cluster = None
    try:
        cluster = PrivateCluster(str(bindir), root)
        yield cluster
    finally:
        if cluster is not None:
            cluster.destroy()
        else:
            shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True

