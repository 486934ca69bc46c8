"""A real PostgreSQL for the cluster tests: Debian's server binaries, a data directory of our own
under /tmp (initdb refuses to run as root: it and the server run as the `postgres` user), on
a free 127.0.0.1 port with its socket in that directory; stopped by PID."""
from __future__ import annotations

import glob
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self) -> None:
        from tests.support import free_port
        bindir = binaries()
        assert bindir is not None, "Debian's postgresql is installed by `make test`"
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="smtprelay-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8"], user="postgres", group="postgres", check=True,
                       capture_output=True, cwd=self.dir, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> "PgServer":
        log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                      "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                      "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                                     user="postgres", group="postgres", stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        deadline = time.monotonic() + 30
        while not self.ready():
            assert self.proc.poll() is None, (self.dir / "postgres.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.1)    # the server's start-up (a subprocess: no clock to inject)
        return self

    def ready(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions ended, no wait for clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reset(self) -> None:
        """An empty catalog: the schema dropped (the test migrates again)."""
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
