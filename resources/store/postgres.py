"""The Postgres backend of the store: the server URL, one connection pool per process, and a
connection that speaks the store's SQL (`?` and `$name` parameters, frames in and out as polars,
bulk writes through COPY).

The password never travels in the URL the store is configured with: it comes from `PGPASSWORD`,
a libpq `passfile`, or the file named by `AUF_STORE_PASSWORD_FILE`. Every message that names the
server names it through `redact`, so no error, log line or metadata carries a password.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import polars as pl

PASSWORD_FILE_ENV = "AUF_STORE_PASSWORD_FILE"
POOL_MAX = int(os.environ.get("AUF_STORE_POOL_MAX", "4"))
CONNECT_TIMEOUT_S = 10
# How long an operation waits for a pooled connection: all in use, or the server restarting (a
# restart shorter than this is ridden out; a longer outage fails the step naming the server).
WAIT_ENV = "AUF_STORE_WAIT_S"
DEFAULT_WAIT_S = 60.0

_SCHEMES = ("postgresql://", "postgres://")


class PostgresUnavailable(RuntimeError):
    """The server cannot be reached or refuses the credentials (the message names the server,
    never the password)."""


def is_postgres_url(url: str) -> bool:
    return url.startswith(_SCHEMES)


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if parts.password else f"{user}@{host}"
    query = re.sub(r"(password=)[^&]*", r"\1***", parts.query, flags=re.IGNORECASE)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.password) or "password=" in parts.query.lower()


def _scrub(text: str, url: str) -> str:
    """An error text with the URL (and any password in it) replaced by the redacted URL."""
    parts = urlsplit(url)
    text = text.replace(url, redact(url))
    if parts.password:
        text = text.replace(parts.password, "***")
    return text


def _conninfo_kwargs() -> dict:
    """Connection settings from the environment that are not in the URL."""
    kwargs: dict = {"connect_timeout": CONNECT_TIMEOUT_S}
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                kwargs["password"] = f.read().strip()
        except OSError as exc:
            raise PostgresUnavailable(
                f"cannot read the store password file {password_file} "
                f"({PASSWORD_FILE_ENV}): {exc.strerror}"
            ) from None
    return kwargs


def _pg_error(url: str, exc: BaseException, *, lost: bool = False) -> PostgresUnavailable:
    reason = _scrub(str(exc).strip() or type(exc).__name__, url)
    if lost:
        return PostgresUnavailable(
            f"lost the connection to the Postgres store at {redact(url)} in the middle of an "
            f"operation ({reason}); its transaction was not committed. Run the step again when "
            "the server is back: work already saved (finished steps, the call cache) is kept"
        )
    return PostgresUnavailable(
        f"cannot connect to the Postgres store at {redact(url)}: {reason}. Check the server is "
        f"running and reachable, and the user's password (PGPASSWORD, a passfile or "
        f"{PASSWORD_FILE_ENV})"
    )


def _wait_s() -> float:
    value = os.environ.get(WAIT_ENV, "")
    try:
        return float(value) if value else DEFAULT_WAIT_S
    except ValueError:
        raise PostgresUnavailable(f"{WAIT_ENV}={value!r} is not a number of seconds") from None


_pools: dict[tuple[int, str], object] = {}
_pools_lock = threading.Lock()


def _pool(url: str):
    """This process's pool for `url` (a forked child opens its own)."""
    import psycopg
    import psycopg_pool

    key = (os.getpid(), url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            # One connection first: a wrong URL or password fails at once (a pool would retry).
            try:
                psycopg.connect(url, **_conninfo_kwargs()).close()
            except psycopg.OperationalError as exc:
                raise _pg_error(url, exc) from None
            kwargs = {**_conninfo_kwargs(), "autocommit": True}
            # `check`: a connection that sat idle in the pool while the server restarted is
            # found dead and replaced when taken, instead of failing the next statement.
            pool = psycopg_pool.ConnectionPool(
                url,
                min_size=0,
                max_size=POOL_MAX,
                kwargs=kwargs,
                open=True,
                timeout=_wait_s(),
                check=psycopg_pool.ConnectionPool.check_connection,
            )
            _pools[key] = pool
    return pool


def close_pool(url: str) -> None:
    """Close this process's pool for `url` (its connections go back to the server)."""
    with _pools_lock:
        pool = _pools.pop((os.getpid(), url), None)
    if pool is not None:
        pool.close(timeout=5)


def _drop_pool(url: str, pool) -> None:
    """Forget a pool whose server went away: the next operation opens a fresh one, which
    connects at once (or fails at once naming the server) instead of waiting on the old pool's
    reconnection backoff."""
    with _pools_lock:
        if _pools.get((os.getpid(), url)) is pool:
            del _pools[(os.getpid(), url)]
    with contextlib.suppress(Exception):
        pool.close(timeout=1)


@atexit.register
def _close_pools() -> None:
    for (pid, _), pool in list(_pools.items()):
        if pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.close(timeout=1)


def connect_once(url: str):
    """A connection of its own (not from the pool), for a lock held as long as a step runs."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, **_conninfo_kwargs())
    except psycopg.OperationalError as exc:
        raise _pg_error(url, exc) from None


@contextlib.contextmanager
def pooled(url: str) -> Iterator[PostgresConnection]:
    """A connection from this process's pool; losing the server mid-way names it (redacted)."""
    import psycopg
    import psycopg_pool

    pool = _pool(url)
    try:
        raw = pool.getconn()
    except psycopg_pool.PoolTimeout as exc:
        _drop_pool(url, pool)
        raise _pg_error(url, exc) from None
    try:
        yield PostgresConnection(raw)
    except psycopg.OperationalError as exc:
        raise _pg_error(url, exc, lost=raw.broken) from exc
    finally:
        pool.putconn(raw)  # the pool discards a broken connection
        if raw.broken:
            _drop_pool(url, pool)


# -- SQL -------------------------------------------------------------------------------------

_PARAM = re.compile(r"'(?:[^']|'')*'|\?|\$([A-Za-z_]\w*)|%")


def translate(sql: str, params: Sequence | Mapping | None) -> str:
    """The store's SQL (`?`, `$name`) in psycopg's parameter style (`%s`, `%(name)s`)."""
    if params is None:
        return sql

    def swap(m: re.Match) -> str:
        text = m.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({m.group(1)})s"

    return _PARAM.sub(swap, sql)


# psycopg's type oids -> polars dtypes, so an empty result keeps its column types.
_DTYPES = {
    16: pl.Boolean,
    20: pl.Int64,
    21: pl.Int16,
    23: pl.Int32,
    25: pl.String,
    700: pl.Float32,
    701: pl.Float64,
    1043: pl.String,
    1114: pl.Datetime("us"),
    1700: pl.Float64,
    1009: pl.List(pl.String),
    1015: pl.List(pl.String),
    1007: pl.List(pl.Int32),
}

_PG_TYPES = {
    pl.String: "text",
    pl.Int16: "smallint",
    pl.Int32: "integer",
    pl.Int64: "bigint",
    pl.UInt32: "bigint",
    pl.Float32: "real",
    pl.Float64: "double precision",
    pl.Boolean: "boolean",
    pl.Null: "text",
}


def _pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    return _PG_TYPES.get(dtype.base_type(), "text")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Result:
    def __init__(self, cursor):
        self._columns = (
            [(d.name, _DTYPES.get(d.type_code)) for d in cursor.description]
            if cursor.description
            else []
        )
        self._rows = cursor.fetchall() if cursor.description else []
        self.rowcount = cursor.rowcount

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self):
        return self._rows

    def pl(self) -> pl.DataFrame:
        schema = {name: dtype for name, dtype in self._columns}
        if not self._rows:
            return pl.DataFrame(schema={n: (d or pl.Null) for n, d in schema.items()})
        columns = list(zip(*self._rows, strict=True))
        return pl.DataFrame(
            [
                pl.Series(name, values, dtype=dtype, strict=False)
                for (name, dtype), values in zip(self._columns, columns, strict=True)
            ]
        )


class PostgresConnection:
    """A pooled psycopg connection that speaks the store's SQL."""

    dialect = "postgres"

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params: Sequence | Mapping | None = None) -> Result:
        if isinstance(params, Sequence) and not isinstance(params, str) and not params:
            params = None
        with self.raw.cursor() as cur:
            cur.execute(translate(sql, params), params)
            return Result(cur)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.raw.transaction():
            yield

    def serialize(self, name: str) -> None:
        """Queue behind other writers of `name` until this transaction ends (a short wait,
        never a lock timeout)."""
        self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [f"auf:{name}"])

    def copy_in(self, table: str, rows: pl.DataFrame) -> None:
        """Bulk-write a frame's columns into `table` through COPY."""
        columns = ", ".join(quote(c) for c in rows.columns)
        with (
            self.raw.cursor() as cur,
            cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
        ):
            for row in rows.iter_rows():
                copy.write_row(row)

    def register(self, name: str, rows: pl.DataFrame) -> None:
        """A temporary table `name` holding the frame (what DuckDB's `register` does)."""
        columns = ", ".join(f"{quote(c)} {_pg_type(t)}" for c, t in rows.schema.items())
        self.execute(f"DROP TABLE IF EXISTS pg_temp.{quote(name)}")
        self.execute(f"CREATE TEMP TABLE {quote(name)} ({columns})")
        if rows.height:
            self.copy_in(quote(name), rows)

    def unregister(self, name: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS pg_temp.{quote(name)}")

    def has_table(self, table: str) -> bool:
        return self.execute("SELECT to_regclass(?) IS NOT NULL", [table]).fetchone()[0]
