"""``algorithm="pgvector"``: the index is a table of a PostgreSQL server with pgvector.

The descriptors are copied (``COPY ... FORMAT BINARY``) into a table
``(id bigint primary key, embedding vector(d))`` of the database that
``algorithm_params["uri"]`` names, indexed by pgvector's HNSW graph or IVF
lists (or not indexed: exact scans in the server), and searched over a few
connections at once.

``algorithm_params["store"]`` says where the descriptors are:

* ``"engine"`` (the default): only in the server.  The table holds the
  exact float32 vectors (``vector(d)``; ``halfvec(d)`` for a retriever of
  ``dtype="float16"``), the index is built on their half-precision
  expression (``(embedding::halfvec(d))``, with ``index_dtype="float16"``),
  and each query is re-ranked exactly in the server: an inner query ordered
  by the index expression takes the candidates, an outer one orders them by
  the exact distance, whose values are the ranking keys
  (:meth:`PgVectorBackend.scored_candidates`).  The retriever's ``X_fit_``
  is an :class:`~skretrieval.neighbors._engine_store.EngineRows` view that
  reads rows back by key (``kneighbors(X=None)``, the re-rankers); it
  saves only the table's record, ids and labels.
* ``"local"``: the retriever keeps its own copy (as the in-process backends
  do) and re-ranks the candidates of a ``halfvec(d)`` (or ``vector(d)``)
  table from it; retrievers saved before ``"store"`` existed are of this
  kind, and load and search as they did.

A fitted retriever saves the table's name, never a password (libpq reads
``PGPASSWORD`` or a ``~/.pgpass`` file); a loaded one reconnects to the URI
of its parameters (or of ``SKRETRIEVAL_PGVECTOR_URI``), at its first use.

The same URI can point at one server, a read replica or a Citus coordinator
(docs/scale.md): the SQL is plain PostgreSQL.
"""

import json
import math
import os
import queue
import re
import secrets
import struct
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from urllib.parse import urlsplit

import numpy as np

from ._engine_store import EngineStore, read_copy_rows
from ._search_backend import SearchBackend, keys_to_rows, n_threads
from ._store import as_float32

__all__ = ["PGVECTOR_URI_ENV", "PgVectorBackend", "PgVectorConnectionError",
           "PgVectorTable", "PgVectorTableError"]

#: Environment variable read for the connection URI when
#: ``algorithm_params["uri"]`` is absent.
PGVECTOR_URI_ENV = "SKRETRIEVAL_PGVECTOR_URI"
_PARAMS = {"uri", "table", "index", "index_dtype", "m", "ef_construction", "ef_search",
           "lists", "probes", "k_factor", "n_connections", "store"}
_INDEXES = ("hnsw", "ivfflat", "exact")
_TYPES = {"float32": "vector", "float16": "halfvec"}
# where the descriptors are (see the module's docstring): "engine" by default,
# what a collection past one machine needs (the retriever's file and memory
# then hold no descriptor)
_STORES = ("engine", "local")
_DEFAULT_STORE = "engine"
# halfvec by default: at 100k x 512 its HNSW built 2.4x faster and searched
# 1.7x faster than vector's at the same recall (docs/scale.md), in half the bytes
_DEFAULT_DTYPE = "float16"
# metric -> (distance operator, operator class suffix); cosine rows are L2-normalised
_OPERATORS = {"cosine": ("<#>", "ip_ops"), "inner_product": ("<#>", "ip_ops"),
              "euclidean": ("<->", "l2_ops")}
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
# The comment that marks a table as this library's (fit replaces only those).
_TABLE_COMMENT = "skretrieval pgvector index"
_COPY_ROWS = 16384
# table records: 1 for "local" tables (the format of the first version), 2 for
# tables that hold the descriptors (the column and the ordering type named)
_FORMAT, _HELD_FORMAT = 1, 2
_FLOAT16_MAX = 65504.0
# advisory lock of the creation of the extension (any fixed bigint)
_LOCK_KEY = 0x736B7276


class PgVectorConnectionError(ConnectionError):
    """The PostgreSQL server of a ``pgvector`` retriever cannot be reached."""


class PgVectorTableError(LookupError):
    """The table of a fitted ``pgvector`` retriever is not in its database."""


def import_psycopg():
    """The psycopg module, or an ImportError naming the extra that installs it."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "algorithm='pgvector' needs the psycopg package (PostgreSQL client), an "
            "optional dependency of skretrieval: pip install skretrieval[engine] (or pip "
            "install 'psycopg[binary]')"
        ) from exc
    return psycopg


def resolve_uri(uri):
    """The connection URI: ``uri``, else the ``SKRETRIEVAL_PGVECTOR_URI`` variable."""
    uri = uri if uri is not None else os.environ.get(PGVECTOR_URI_ENV)
    if not uri:
        raise ValueError(
            "algorithm='pgvector' needs the URI of a PostgreSQL server with the pgvector "
            "extension: algorithm_params={'uri': 'postgresql://user@host:5432/db'} or "
            f"the environment variable {PGVECTOR_URI_ENV}."
        )
    return uri


def check_uri(uri):
    """Refuse a URI (or conninfo string) that holds a password: it would be saved."""
    if not isinstance(uri, str):
        raise ValueError(f"algorithm_params['uri'] must be a string, got {uri!r}.")
    if "://" in uri:
        has_password = urlsplit(uri).password is not None or "password=" in uri
    else:
        has_password = re.search(r"(^|\s)password\s*=", uri) is not None
    if has_password:
        raise ValueError(
            "algorithm_params['uri'] must not hold a password (the parameters are saved "
            "with the model): set PGPASSWORD or use a ~/.pgpass file, which libpq reads."
        )


def _display_uri(uri):
    """``uri`` without its query string (options), for messages."""
    return uri.split("?", 1)[0]


def _check_params(params):
    unknown = set(params) - _PARAMS
    if unknown:
        raise ValueError(
            f"algorithm_params with algorithm='pgvector' takes the keys {sorted(_PARAMS)}, "
            f"got {sorted(unknown)}."
        )
    if params.get("uri") is not None:
        check_uri(params["uri"])
    table = params.get("table")
    if table is not None and not (isinstance(table, str) and _TABLE_NAME.match(table)):
        raise ValueError(
            "algorithm_params['table'] must be a table name ([A-Za-z_][A-Za-z0-9_]*, "
            f"optionally schema.table, at most 63 characters each), got {table!r}."
        )
    if params.get("index", "hnsw") not in _INDEXES:
        raise ValueError(f"algorithm_params['index'] must be one of {list(_INDEXES)}, "
                         f"got {params['index']!r}.")
    if params.get("store", _DEFAULT_STORE) not in _STORES:
        raise ValueError(f"algorithm_params['store'] must be one of {list(_STORES)} (where "
                         f"the descriptors are), got {params['store']!r}.")
    if params.get("index_dtype", _DEFAULT_DTYPE) not in _TYPES:
        raise ValueError("algorithm_params['index_dtype'] must be 'float32' (vector) or "
                         f"'float16' (halfvec), got {params['index_dtype']!r}.")
    for key in ("m", "ef_construction", "ef_search", "lists", "probes", "n_connections"):
        value = params.get(key)
        if value is not None and (not isinstance(value, Integral) or isinstance(value, bool)
                                  or value < (2 if key == "m" else 1)):
            raise ValueError(f"algorithm_params[{key!r}] must be an int >= "
                             f"{2 if key == 'm' else 1}, got {value!r}.")
    k_factor = params.get("k_factor", 1)
    if not isinstance(k_factor, Real) or isinstance(k_factor, bool) or not k_factor >= 1:
        raise ValueError(f"algorithm_params['k_factor'] must be a number >= 1, got "
                         f"{k_factor!r}.")


#: The header and the trailer of PostgreSQL's binary COPY format.
COPY_HEADER, COPY_TRAILER = b"PGCOPY\n\xff\r\n\x00" + bytes(8), b"\xff\xff"


def copy_payload(keys, X, half):
    """Rows ``(keys, X)`` of PostgreSQL's binary COPY format (``vector`` or ``halfvec``),
    between :data:`COPY_HEADER` and :data:`COPY_TRAILER`."""
    d = X.shape[1]
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("vec_len", ">i4"),
                    ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f2" if half else ">f4", (d,))])
    rows = np.empty(keys.shape[0], dtype=row)
    rows["fields"], rows["id_len"], rows["id"] = 2, 8, keys
    rows["vec_len"], rows["dim"], rows["unused"] = 4 + (2 if half else 4) * d, d, 0
    rows["vec"] = X
    return rows.tobytes()


class _Packed(bytes):
    """A query vector in pgvector's binary format (sent as a ``vector``/``halfvec``)."""


class PgVectorTable:
    """A connection pool to one pgvector table: the ``index`` of a retriever.

    Connections are opened on first use and kept (one per concurrent search);
    a connection broken by a server restart is replaced once, transparently.
    ``uri`` None: the ``SKRETRIEVAL_PGVECTOR_URI`` variable, read at the first
    connection.  ``column``: the type of the column (default the type of
    ``index_dtype``), ``order``: the type the searches order by (the index's:
    the column cast to it when they differ); ``holds``: the table holds the
    retriever's descriptors (searches give the exact keys, it is the store).
    """

    def __init__(self, uri, table, n_features, index_dtype, metric, *, column=None,
                 order=None, holds=False):
        self._uri = uri
        self.table = table
        self.n_features = n_features
        self.index_dtype = index_dtype
        self.metric = metric
        self.column = column or _TYPES[index_dtype]
        self.order = order or self.column
        self.holds = holds
        self._idle = queue.SimpleQueue()

    @property
    def uri(self):
        return resolve_uri(self._uri)

    # -- connections ----------------------------------------------------------
    def _connect(self):
        psycopg = import_psycopg()
        try:
            conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise PgVectorConnectionError(
                f"cannot connect to the PostgreSQL server at {_display_uri(self.uri)} "
                f"(algorithm='pgvector'): {str(exc).strip()}. Start the server or point "
                "algorithm_params['uri'] at it."
            ) from exc
        conn.settings = {}
        return conn

    def _register(self, conn):
        """Send :class:`_Packed` as the column's type on ``conn``."""
        from psycopg.adapt import Dumper
        from psycopg.pq import Format

        name = self.query_type
        row = conn.execute("SELECT oid FROM pg_type WHERE typname = %s", (name,)).fetchone()
        if row is None:
            raise PgVectorTableError(
                f"the database at {_display_uri(self.uri)} has no type {name!r}: the "
                "pgvector extension (>= 0.7 for halfvec) is not installed in it."
            )
        dumper = type("PackedDumper", (Dumper,), {
            "format": Format.BINARY, "oid": row[0], "dump": lambda self, obj: obj})
        conn.adapters.register_dumper(_Packed, dumper)
        conn.registered = True

    def run(self, work, register=True):
        """``work(conn)`` on a pooled connection (retried once on a new one if broken).

        ``register``: first teach the connection the vector type (which needs
        the extension).
        """
        psycopg = import_psycopg()
        for attempt in (0, 1):
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                if register and not getattr(conn, "registered", False):
                    self._register(conn)
                result = work(conn)
            except psycopg.errors.UndefinedTable as exc:
                self._idle.put(conn)
                raise PgVectorTableError(self.missing_message()) from exc
            except psycopg.OperationalError as exc:
                conn.close()
                self.close()  # the others are broken too after a restart
                if attempt:
                    raise PgVectorConnectionError(
                        f"the PostgreSQL server at {_display_uri(self.uri)} failed: "
                        f"{str(exc).strip()}"
                    ) from exc
                continue  # e.g. the server restarted: once more on a new connection
            except BaseException:
                conn.close()
                raise
            self._idle.put(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self):
        """Close the idle connections."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def missing_message(self):
        """The message of a table that is not in the database."""
        how = ("from the descriptors (the table held the only copy)" if self.holds
               else "to recreate it from its stored descriptors")
        return (f"the table {self.table!r} of this retriever is not in the database at "
                f"{_display_uri(self.uri)} (dropped, or another database): fit the "
                f"retriever again {how}.")

    def _ident(self):
        from psycopg import sql

        return sql.Identifier(*self.table.split("."))

    # -- rows -----------------------------------------------------------------
    def check(self):
        """Raise :class:`PgVectorTableError` if the table is absent."""
        def exists(conn):
            return conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0]

        if self.run(exists) is None:
            raise PgVectorTableError(self.missing_message())
        return self

    def copy_rows(self, conn, keys, X):
        from psycopg import sql

        half = self.column == "halfvec"
        statement = sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(
            self._ident())
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.write(COPY_HEADER)
            for start in range(0, keys.shape[0], _COPY_ROWS):
                stop = min(start + _COPY_ROWS, keys.shape[0])
                copy.write(copy_payload(keys[start:stop], X(start, stop), half))
            copy.write(COPY_TRAILER)

    def add(self, keys, X):
        def work(conn):
            with conn.transaction():
                self.copy_rows(conn, keys, lambda a, b: as_float32(X[a:b]))

        self.run(work)

    def remove(self, keys):
        from psycopg import sql

        statement = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._ident())
        self.run(lambda conn: conn.execute(statement, (keys.tolist(),)))

    def count(self):
        from psycopg import sql

        statement = sql.SQL("SELECT count(*) FROM {}").format(self._ident())
        return self.run(lambda conn: conn.execute(statement).fetchone()[0])

    def _fetch(self, condition, params):
        """``(ids, float32 rows)`` of the rows where ``condition`` holds (binary COPY)."""
        from psycopg import sql

        statement = sql.SQL("COPY (SELECT id, embedding FROM {} WHERE {}) TO STDOUT "
                            "(FORMAT BINARY)").format(self._ident(), sql.SQL(condition))

        def work(conn):
            with conn.cursor() as cur, cur.copy(statement, params) as copy:
                return b"".join(bytes(block) for block in copy)

        return read_copy_rows(self.run(work), self.n_features, self.column == "halfvec")

    def fetch_range(self, first, last):
        """The rows of the keys ``first`` to ``last`` (included), by increasing key."""
        ids, X = self._fetch("id BETWEEN %s AND %s", (int(first), int(last)))
        order = np.argsort(ids, kind="stable")
        return ids[order], X[order]

    def fetch_keys(self, keys):
        """The rows of the (int64) ``keys``, in any order."""
        return self._fetch("id = ANY(%s)", (np.asarray(keys, dtype=np.int64).tolist(),))

    def record(self):
        """What :meth:`PgVectorBackend.from_state` reopens the table from."""
        record = {"format": _FORMAT, "table": self.table, "n_features": self.n_features,
                  "index_dtype": self.index_dtype}
        if self.holds:
            record.update(format=_HELD_FORMAT, column=self.column, order=self.order)
        return record

    def store_record(self):
        """What :meth:`PgVectorBackend.open_store` reopens the store from."""
        return {"algorithm": "pgvector", **self.record()}

    def drop(self):
        """Drop the table (the retriever can no longer search it)."""
        from psycopg import sql

        self.run(lambda conn: conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(self._ident())))

    # -- search ---------------------------------------------------------------
    @property
    def query_type(self):
        """The type the queries are sent as: the column's, or (a table that holds
        the descriptors) ``vector``, whose float32 values give the exact keys."""
        return "vector" if self.holds else self.column

    def pack(self, q):
        vector = q.astype(">f2" if self.query_type == "halfvec" else ">f4")
        return _Packed(struct.pack(">hh", q.shape[0], 0) + vector.tobytes())

    def _search_sql(self):
        """The statement of one query (parameters: :meth:`_search_params`)."""
        from psycopg import sql

        operator = sql.SQL(_OPERATORS[self.metric][0])
        if not self.holds:
            return sql.SQL("SELECT id FROM {} ORDER BY embedding {} %s LIMIT %s").format(
                self._ident(), operator)
        # pgvector's re-ranking: the candidates of the index (its expression), then
        # their exact distances to the vectors of the column (as float32: a
        # halfvec column is cast, the query is a float32 vector)
        d = int(self.n_features)
        cast = "" if self.order == self.column else f"::{self.order}({d})"
        expression = sql.SQL("embedding" if not cast else f"(embedding{cast})")
        exact = sql.SQL("embedding" if self.column == "vector" else f"(embedding::vector({d}))")
        operand = "" if self.order == "vector" else f"::{self.order}({d})"
        return sql.SQL(
            "SELECT id, {exact} {op} %s AS key FROM (SELECT id, embedding FROM {table} "
            "ORDER BY {expression} {op} %s{operand} LIMIT %s) AS candidates "
            "ORDER BY key, id LIMIT %s"
        ).format(exact=exact, op=operator, table=self._ident(), expression=expression,
                 operand=sql.SQL(operand))

    def _search_params(self, q, k):
        packed = self.pack(q)
        return (packed, packed, k, k) if self.holds else (packed, k)

    def search(self, queries, k, settings, n_connections):
        """Keys of the ``k`` nearest rows of each query (-1 padded), int64, and
        (a table that :attr:`holds` the descriptors) their ranking keys (float32:
        squared Euclidean distances or minus the similarities, inf where none),
        else None."""
        statement = self._search_sql()
        found = np.full((queries.shape[0], k), -1, dtype=np.int64)
        distances = np.full(found.shape, np.inf, dtype=np.float64) if self.holds else None

        def work(conn, rows):
            for name, value in settings.items():
                if conn.settings.get(name) != value:
                    conn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
                    conn.settings[name] = value
            if rows.shape[0] == 1:
                result = [conn.execute(statement, self._search_params(queries[rows[0]], k),
                                       prepare=True).fetchall()]
            else:
                result = []
                with conn.cursor() as cur:
                    cur.executemany(statement,
                                    [self._search_params(queries[r], k) for r in rows],
                                    returning=True)
                    while True:
                        result.append(cur.fetchall())
                        if not cur.nextset():
                            break
            for r, hits in zip(rows, result):
                found[r, : len(hits)] = [hit[0] for hit in hits]
                if distances is not None:
                    distances[r, : len(hits)] = [hit[1] for hit in hits]

        n_parts = max(1, min(n_connections, queries.shape[0] // 8))
        parts = np.array_split(np.arange(queries.shape[0]), n_parts)
        if n_parts == 1:
            self.run(lambda conn: work(conn, parts[0]))
        else:
            with ThreadPoolExecutor(n_parts) as pool:
                list(pool.map(lambda p: self.run(lambda conn: work(conn, p)), parts))
        if distances is None:
            return found, None
        if self.metric == "euclidean":  # pgvector gives the distance, the key is its square
            np.square(distances, out=distances)
        return found, distances.astype(np.float32)


class PgVectorBackend(SearchBackend):
    """Candidates from a pgvector table (HNSW, IVF lists or exact scans) of a server.

    ``algorithm_params``: ``uri`` (libpq URI without password; default the
    ``SKRETRIEVAL_PGVECTOR_URI`` variable), ``table`` (default a new
    ``skretrieval_<random hex>``), ``index`` (``"hnsw"``, ``"ivfflat"`` or
    ``"exact"``), ``index_dtype`` (``"float16"``, the default: ``halfvec``;
    ``"float32"``: ``vector``), ``m`` and ``ef_construction`` (HNSW build, pgvector's 16
    and 64), ``ef_search`` (HNSW queries, default 40, at least the
    candidates), ``lists`` and ``probes`` (IVF), ``k_factor`` and
    ``n_connections`` (searches at once; default ``n_jobs`` threads),
    ``store`` (``"engine"``, the default: the table is the retriever's only
    copy of the descriptors, see :meth:`held_store`; ``"local"``: the
    retriever keeps its own, from which it re-ranks).
    """

    incremental = True

    def check_params(self):
        _check_params(self.params)

    def check_data(self, X):
        if self.params.get("index_dtype", _DEFAULT_DTYPE) == "float16" and X.shape[0]:
            if float(np.max(np.abs(X))) > _FLOAT16_MAX:
                raise ValueError(
                    "algorithm_params['index_dtype']='float16' (halfvec) cannot hold "
                    f"descriptor values above {_FLOAT16_MAX:g} in magnitude; use 'float32'."
                )

    def _table(self, name, store):
        """The table object of a new table for the rows of ``store``."""
        index_dtype = self.params.get("index_dtype", _DEFAULT_DTYPE)
        uri = resolve_uri(self.params.get("uri"))
        if self.params.get("store", _DEFAULT_STORE) == "local":
            return PgVectorTable(uri, name, store.n_features, index_dtype, self.metric)
        # the exact vectors (of the retriever's dtype) in the column, the index on
        # the half-precision expression with index_dtype="float16"
        column = "halfvec" if np.dtype(store.X.dtype) == np.float16 else "vector"
        exact = column == "halfvec" or self.params.get("index", "hnsw") == "exact"
        order = column if exact else _TYPES[index_dtype]
        return PgVectorTable(uri, name, store.n_features, index_dtype, self.metric,
                             column=column, order=order, holds=True)

    def _index_sql(self, table, n_samples):
        from psycopg import sql

        kind = self.params.get("index", "hnsw")
        if kind == "exact":
            return None
        opclass = sql.SQL(f"{table.order}_{_OPERATORS[self.metric][1]}")
        if kind == "hnsw":
            options = sql.SQL("m = {}, ef_construction = {}").format(
                sql.Literal(int(self.params.get("m", 16))),
                sql.Literal(int(self.params.get("ef_construction", 64))))
        else:
            options = sql.SQL("lists = {}").format(sql.Literal(self._lists(n_samples)))
        # the column, or its cast to the index's type (pgvector's half-precision
        # indexing), the expression the searches order by
        expression = sql.SQL("embedding" if table.order == table.column else
                             f"(embedding::{table.order}({int(table.n_features)}))")
        return sql.SQL("CREATE INDEX ON {} USING {} ({} {}) WITH ({})").format(
            table._ident(), sql.SQL(kind), expression, opclass, options)

    def _lists(self, n_samples):
        lists = self.params.get("lists")
        if lists is None:  # pgvector's advice: rows / 1000 up to 1M rows, sqrt(rows) above
            lists = n_samples // 1000 if n_samples <= 1_000_000 else math.isqrt(n_samples)
        return int(max(1, lists))

    def build(self, store, keys, seed):
        """A new table holding the store's rows, then its index.

        A store that a pgvector table holds already (the retriever's index
        was dropped, e.g. by a change of ``algorithm`` and back) is not
        copied: its table is the index.
        """
        from psycopg import sql

        if isinstance(store, EngineStore) and isinstance(store.table, PgVectorTable):
            return store.table.check()
        name = self.params.get("table") or f"skretrieval_{secrets.token_hex(8)}"
        table = self._table(name, store)
        column = sql.SQL(f"{table.column}({int(store.n_features)})")
        create_index = self._index_sql(table, store.n_samples)
        buffer = store.block_buffer()

        def work(conn):
            with conn.transaction():
                # concurrent fits would race to create the extension
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                for kind in {table.column, table.order}:
                    if conn.execute("SELECT to_regtype(%s)", (kind,)).fetchone()[0] is None:
                        raise ValueError(
                            f"the pgvector extension of {_display_uri(table.uri)} has no "
                            f"type {kind!r} (halfvec needs pgvector >= 0.7): use "
                            "algorithm_params['index_dtype']='float32' or upgrade pgvector."
                        )
                comment = conn.execute(
                    "SELECT obj_description(to_regclass(%s), 'pg_class')", (name,)
                ).fetchone()[0]
                exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0]
                if exists is not None and comment != _TABLE_COMMENT:
                    raise ValueError(
                        f"the table {name!r} already exists in {_display_uri(table.uri)} and "
                        "was not made by skretrieval: choose another algorithm_params['table']."
                    )
                ident = table._ident()
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
                conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding {})")
                             .format(ident, column))
                conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                    ident, sql.Literal(_TABLE_COMMENT)))
                table.copy_rows(conn, keys, lambda a, b: store.rows(a, b, buffer))
                if create_index is not None:
                    conn.execute(_maintenance_memory(store, self.params))
                    conn.execute(create_index)

        table.run(work, register=False)  # the type is looked up once the extension exists
        return table

    def add(self, index, X, keys):
        if not index.holds:  # else the store wrote them (EngineStore.append)
            index.add(np.ascontiguousarray(keys, dtype=np.int64), X)
        return index

    def remove(self, index, keys):
        if not index.holds:  # else the store deletes them (EngineStore.compact)
            index.remove(np.asarray(keys, dtype=np.int64))
        return index

    def held_store(self, index, keys):
        """The store of a table that holds the descriptors (``store="engine"``):
        the retriever then keeps none; None for a ``"local"`` table."""
        if not index.holds:
            return None
        return EngineStore(index, keys, np.float16 if index.column == "halfvec" else np.float32)

    def open_store(self, record, keys):
        """The store of a saved :meth:`held_store` (connects at its first read)."""
        if not isinstance(record, dict) or record.get("algorithm") != "pgvector":
            raise ValueError(f"the saved store record is not a pgvector table's: {record!r}")
        table = _table_of_record({k: v for k, v in record.items() if k != "algorithm"},
                                 self.params.get("uri"), self.metric)
        if not table.holds:
            raise ValueError(f"the saved store record names no table of descriptors: "
                             f"{record!r}")
        return self.held_store(table, keys)

    def n_candidates(self, k):
        return math.ceil(k * self.params.get("k_factor", 1))

    def _search(self, index, queries, n_candidates, keys):
        """``(rows, keys or None)`` of the table's ``n_candidates`` for ``queries``."""
        settings = {}
        kind = self.params.get("index", "hnsw")
        if kind == "hnsw":
            settings["hnsw.ef_search"] = int(min(1000, max(self.params.get("ef_search", 40),
                                                         n_candidates)))
        elif kind == "ivfflat":
            lists = self._lists(keys.shape[0])
            settings["ivfflat.probes"] = int(self.params.get("probes")
                                             or max(1, math.isqrt(lists)))
        n_connections = self.params.get("n_connections") or n_threads(self.n_jobs)
        found, distances = index.search(np.ascontiguousarray(queries, dtype=np.float32),
                                        n_candidates, settings, n_connections)
        return keys_to_rows(found, keys), distances

    def candidates(self, index, queries, n_candidates, rows, keys):
        return self.scored_candidates(index, queries, n_candidates, rows, keys)[0]

    def scored_candidates(self, index, queries, n_candidates, rows, keys):
        """The candidates, and their exact keys when the table holds the
        descriptors (ranked by the server, see :meth:`PgVectorTable.search`);
        a ``"local"`` table's are re-ranked from the retriever's store."""
        return self._search(index, queries, n_candidates, keys)

    def state(self, index):
        return np.frombuffer(json.dumps(index.record()).encode(), dtype=np.uint8)

    def from_state(self, blob):
        try:
            record = json.loads(np.asarray(blob, dtype=np.uint8).tobytes().decode())
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError("the saved pgvector table record could not be read") from exc
        return _table_of_record(record, resolve_uri(self.params.get("uri")),
                                self.metric).check()

    def library_version(self):
        return f"pgvector-table {_FORMAT}"


def _table_of_record(record, uri, metric):
    """The :class:`PgVectorTable` of a saved record (format 1 or 2), checked."""
    try:
        table, n_features = record["table"], int(record["n_features"])
        index_dtype = record["index_dtype"]
        holds = record.get("format", _FORMAT) == _HELD_FORMAT
        column = record["column"] if holds else None
        order = record["order"] if holds else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"the saved pgvector table record is invalid: {record!r}") from exc
    types = set(_TYPES.values())
    if (not (isinstance(table, str) and _TABLE_NAME.match(table)) or index_dtype not in _TYPES
            or n_features < 1 or (holds and not {column, order} <= types)):
        raise ValueError(f"the saved pgvector table record is invalid: {record!r}")
    return PgVectorTable(uri, table, n_features, index_dtype, metric, column=column,
                         order=order, holds=holds)


def _maintenance_memory(store, params):
    """``SET LOCAL maintenance_work_mem`` to hold the HNSW graph (128 MB to 4 GB)."""
    from psycopg import sql

    itemsize = 2 if params.get("index_dtype", _DEFAULT_DTYPE) == "float16" else 4
    per_row = store.n_features * itemsize + 2 * 8 * params.get("m", 16) + 64
    megabytes = int(min(4096, max(128, 1.5 * store.n_samples * per_row / 2**20)))
    return sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
        sql.Literal(f"{megabytes}MB"))
