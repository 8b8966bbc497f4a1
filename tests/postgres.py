"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries run a fresh cluster
in a temporary folder of its own, on a free localhost port, one per test process (each pytest-xdist
worker that needs one starts its own), stopped at the end of the session, and by a watchdog when
the test process dies without its teardown (killed, crashed). Each test gets its own database.
Without the binaries the tests that need it skip, unless RAGOPT_REQUIRE_POSTGRES=1 (set by
.ci/run), where they fail."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REQUIRED = os.environ.get("RAGOPT_REQUIRE_POSTGRES") == "1"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()  # returns once the test process closed the pipe or died
subprocess.run(sys.argv[2:], capture_output=True, timeout=300, check=False)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""
"""Stops the cluster and deletes its folder once its test process is gone without doing so (killed,
crashed): the end of the pipe the test process holds closes when it dies."""

STARTS = 5
"""Ports tried: another process may take the free port found before the server binds it."""


class Server:
    """One cluster: initdb with trust authentication on localhost, started with pg_ctl. PostgreSQL
    refuses to run as root, so as root it runs as the `postgres` user the Debian package creates."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="ragopt-pg-"))
        self.port = 0
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.stop_command = [*self._prefix(), str(bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m",
                             "immediate", "stop"]
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(self.folder), *self.stop_command],
                                         stdin=subprocess.PIPE, start_new_session=True)  # no Ctrl-C from the terminal
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")  # LookupError without the user Debian's package creates

    @staticmethod
    def _prefix() -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self._prefix(), *command], check=True, capture_output=True, text=True, timeout=600)

    def start(self) -> None:
        """initdb, then pg_ctl start on a free port (another one if that port was taken meanwhile),
        waiting up to five minutes for the server to accept connections: a loaded machine is slow."""
        data = self.folder / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        for attempt in range(STARTS):
            self.port = _free_port()
            options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c max_connections=200")
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                          str(self.folder / "log"), "-w", "-t", "300", "start")
                return
            except subprocess.CalledProcessError:
                log = (self.folder / "log").read_text(errors="replace") if (self.folder / "log").exists() else ""
                if attempt == STARTS - 1 or "could not bind" not in log:
                    raise

    def stop(self) -> None:
        """Stop the server if it runs and delete its folder, whatever happened (the watchdog is not
        needed any more: a process the tests forked may hold its pipe open for a while)."""
        self.watchdog.kill()
        self.watchdog.communicate()
        subprocess.run(self.stop_command, capture_output=True, timeout=300, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def database(self) -> str:
        """A new, empty database's URL."""
        psycopg = pytest.importorskip("psycopg", reason="pip install 'ragopt[postgres]'")
        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = binaries()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    try:
        server = Server(bin_dir)
    except LookupError:
        pytest.fail("running as root, PostgreSQL needs the `postgres` user its Debian package creates")
    try:
        try:
            server.start()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            log = server.folder / "log"
            pytest.fail(f"PostgreSQL did not start: {error.stderr}{log.read_text()[-2000:] if log.exists() else ''}")
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's server."""
    return postgres_server.database()
