"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary directory,
listening only on 127.0.0.1 on a free port (unix sockets in the same directory), fsync and
synchronous_commit on, stopped by its own pid at the end.

`initdb` refuses to run as root, so when we are root the cluster is created and run as the
`postgres` system user (`runuser`, else `setpriv`). The binaries are found through
`$CHATLEDGER_PG_BIN`, `pg_config --bindir`, the Debian layout `/usr/lib/postgresql/N/bin` or
`PATH`. The pytest fixtures skip with a reason only when no binaries are found, and fail
instead under `CI=true`. This module must not touch any cluster it did not start.

For failover tests a running cluster starts a streaming standby of itself
(`start_standby`: `pg_basebackup -R` into another temporary directory, its own port), makes
it synchronous (`require_synchronous_standby`), and the test crashes the primary by its
postmaster's pid (`kill_postmaster`) and promotes the standby (`promote`).
`multi_host_url` names both in one libpq URL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from testkit import wait_until

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SERVER_USER = "postgres"
PASSWORD_ROLE = "chatledger_password"
"""The one role that must give a password (scram-sha-256); every other role is trusted."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries were found on this machine."""


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres; PostgresUnavailable if none."""
    candidates: list[str] = []
    if os.environ.get("CHATLEDGER_PG_BIN"):
        candidates.append(os.environ["CHATLEDGER_PG_BIN"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda path: int(Path(path).parent.name)
                         if Path(path).parent.name.isdigit() else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        directory = Path(candidate)
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL binaries (initdb, pg_ctl, postgres) not found: install postgresql "
        "(apt-get install postgresql) or set CHATLEDGER_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One temporary cluster: `start()`, `url(database)`, `create_database()`, `stop()`."""

    def __init__(self, *, shared_buffers: str = "32MB", extra_settings: dict[str, str] | None = None
                 ) -> None:
        self.bin_dir = find_bin_dir()
        self.shared_buffers = shared_buffers
        self.extra_settings = dict(extra_settings or {})
        self.root: Path | None = None
        self.port = 0
        self.pid: int | None = None
        self._as_other_user = os.geteuid() == 0

    # -- running commands as the server's user ---------------------------------------

    def _command(self, argv: list[str]) -> list[str]:
        if not self._as_other_user:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", SERVER_USER, "--", *argv]
        entry = pwd.getpwnam(SERVER_USER)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--init-groups", *argv]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._command(argv), capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        if self.root is None or not (self.root / "server.log").exists():
            return ""
        return "\nserver log:\n" + (self.root / "server.log").read_text(errors="replace")[-2000:]

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        assert self.root is not None, "the server was not started"
        return self.root / "data"

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb and start the cluster; returns when it accepts connections (bounded)."""
        self.root = Path(tempfile.mkdtemp(prefix="chatledger-pg-"))
        if self._as_other_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], timeout=120)
        hba = self.data_dir / "pg_hba.conf"  # the first matching line wins
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            try:
                self._start_once()
                return self
            except RuntimeError as error:
                last_error = error
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def _settings(self) -> dict[str, str]:
        return {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "shared_buffers": self.shared_buffers,
            "max_connections": "200",
            "log_min_messages": "warning",
            **self.extra_settings,
        }

    def _start_once(self) -> None:
        options = " ".join(f"-c {key}={value}" for key, value in self._settings().items())
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                   str(self.root / "server.log"), "-o", options, "-w",
                   "-t", str(int(START_TIMEOUT)), "start"], timeout=START_TIMEOUT + 10)
        pid_file = self.data_dir / "postmaster.pid"
        self.pid = int(pid_file.read_text().split()[0])
        self._wait_ready()

    def _wait_ready(self) -> None:
        if not wait_until(self._accepts_connections, START_TIMEOUT):
            raise RuntimeError("PostgreSQL did not accept connections in time")

    def _accepts_connections(self) -> bool:
        """Whether the cluster's port takes a TCP connection now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the cluster (`pg_ctl stop -m immediate`: its files are removed next, so no
        shutdown checkpoint is worth waiting for; then its own pid) and remove its files."""
        if self.root is None:
            return
        if self.pid is not None:
            try:
                self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m",
                           "immediate",
                           "-w", "-t", str(int(STOP_TIMEOUT)), "stop"], timeout=STOP_TIMEOUT + 10)
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGQUIT)  # immediate shutdown of our postmaster
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def kill(self) -> None:
        """Crash the cluster: an immediate shutdown, no checkpoint (`pg_ctl stop -m immediate`)."""
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                   "-w", "stop"], timeout=STOP_TIMEOUT + 10)
        self.pid = None

    def restart(self) -> None:
        """Start the stopped cluster again on the same port."""
        self._start_once()

    # -- replication and failover -----------------------------------------------------

    def start_standby(self) -> PostgresServer:
        """A hot standby of this running cluster, streaming from it: `pg_basebackup -R`
        into a new temporary directory, started on its own free port; returns once this
        cluster sees it streaming (bounded). Stop it with its own `stop()`."""
        standby = PostgresServer(shared_buffers=self.shared_buffers,
                                 extra_settings=self.extra_settings)
        standby.root = Path(tempfile.mkdtemp(prefix="chatledger-pg-standby-"))
        if standby._as_other_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(standby.root, entry.pw_uid, entry.pw_gid)
        os.chmod(standby.root, 0o700)
        try:
            self._run([str(self.bin_dir / "pg_basebackup"), "-D", str(standby.data_dir), "-R",
                       "-X", "stream", "--checkpoint=fast", "--no-sync", "-h", "127.0.0.1",
                       "-p", str(self.port), "-U", "postgres"], timeout=120)
            last_error: Exception | None = None
            for _ in range(3):
                standby.port = _free_port()
                try:
                    standby._start_once()
                    break
                except RuntimeError as error:
                    last_error = error
            else:
                raise RuntimeError(f"the standby did not start: {last_error}")
            self._wait_replication(lambda rows: any(state == "streaming" for state, _ in rows),
                                   "the standby to stream")
        except BaseException:
            standby.stop()
            raise
        return standby

    def require_synchronous_standby(self) -> None:
        """Make every commit wait for a standby (`synchronous_standby_names = '*'`, set on
        this cluster only, after the base backup); returns once one is synchronous."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            connection.execute("SELECT pg_reload_conf()")
        self._wait_replication(lambda rows: any(sync == "sync" for _, sync in rows),
                               "a synchronous standby")

    def _wait_replication(self, condition: Callable[[list[tuple[str, str]]], bool],
                          what: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            def rows() -> list[tuple[str, str]]:
                return connection.execute(
                    "SELECT state, sync_state FROM pg_stat_replication").fetchall()

            if not wait_until(lambda: condition(rows()), START_TIMEOUT):
                raise RuntimeError(f"timed out waiting for {what}: {rows()}")

    def kill_postmaster(self) -> None:
        """Crash the cluster the hard way: SIGKILL its postmaster by pid (its backends end
        on their own when they see it gone); returns once the port refuses connections."""
        assert self.pid is not None, "the server is not running"
        os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        if not wait_until(lambda: not self._accepts_connections(), STOP_TIMEOUT):
            raise RuntimeError("the killed postmaster's port still accepts connections")

    def promote(self) -> None:
        """Promote this standby to a primary (`pg_ctl promote -w`); returns once it accepts
        writes (bounded)."""
        import psycopg

        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w",
                   "-t", str(int(START_TIMEOUT)), "promote"], timeout=START_TIMEOUT + 10)
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            if not wait_until(lambda: connection.execute(
                    "SELECT pg_is_in_recovery()").fetchone() == (False,), START_TIMEOUT):
                raise RuntimeError("the promoted standby stayed in recovery")

    # -- databases --------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for `database` over TCP on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """Create a fresh, empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_password_database(self, password: str) -> str:
        """A fresh database owned by PASSWORD_ROLE, whose password becomes `password`;
        returns the database's name (connect as that role with `password_url`)."""
        import psycopg
        from psycopg import sql

        name = f"pw_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                        [PASSWORD_ROLE]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            connection.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(PASSWORD_ROLE), sql.Literal(password)))
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(PASSWORD_ROLE)))
        return name

    def password_url(self, database: str, password: str | None) -> str:
        """A URL for PASSWORD_ROLE on `database`, with `password` (or none) in it."""
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{PASSWORD_ROLE}{secret}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def multi_host_url(database: str, *servers: PostgresServer) -> str:
    """One libpq URL naming every server, for a client that must find the read-write one
    (`target_session_attrs=read-write`) after a failover."""
    hosts = ",".join(f"127.0.0.1:{server.port}" for server in servers)
    return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


@contextlib.contextmanager
def running_server(**options: object) -> Iterator[PostgresServer]:
    """A started cluster for the `with` block (benchmarks, scripts)."""
    server = PostgresServer(**options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _unavailable(reason: str) -> None:
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(reason)


def _pytest_fixtures() -> tuple[object, object]:
    import pytest

    @pytest.fixture(scope="session")
    def postgres_server() -> Iterator[PostgresServer]:
        """One throwaway cluster for the whole test session (skips without binaries)."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            _unavailable("psycopg is not installed: pip install -e '.[postgresql]'")
        try:
            server = PostgresServer()
        except PostgresUnavailable as error:
            _unavailable(str(error))
        server.start()
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def postgres_url(postgres_server: PostgresServer) -> str:
        """A fresh, empty database on the session's cluster, one per test."""
        return postgres_server.create_database()

    return postgres_server, postgres_url


with contextlib.suppress(ImportError):  # the benchmark may run without pytest
    postgres_server, postgres_url = _pytest_fixtures()
