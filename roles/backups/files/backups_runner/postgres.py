"""The PostgreSQL server, as the runner reaches it: SQL over the unix socket
(peer authentication, no password) and the client commands pg_dump,
pg_dumpall and pg_restore of the configured version.

Every other module goes through a Postgres object; the unit tests put a fake
with the same methods in its place.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import psycopg2
from psycopg2 import extensions, sql

from .common import BackupError, run_cmd

# What a failed statement raises (restore.py undoes a half-done swap on it).
Error = psycopg2.Error


class Postgres:
    """The server of the runner's configuration (socket directory, port, client tools)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.bin = cfg["bin_dir"]
        self.conn_args = ["-h", cfg["socket_dir"], "-p", str(cfg["port"])]

    # ------------------------------------------------------------ SQL
    def connect(self, database: str = "postgres"):
        return psycopg2.connect(host=self.cfg["socket_dir"], port=self.cfg["port"], dbname=database,
                                application_name=self.cfg["name"])

    def admin(self, statement: Any, params: tuple = ()) -> list[tuple]:
        """Run one statement in autocommit on the postgres database."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def databases(self) -> list[str]:
        """Every connectable non-template database but postgres and the runner's scratch databases."""
        rows = self.admin(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "AND datname <> 'postgres' AND datname NOT LIKE %s AND datname NOT LIKE %s ORDER BY datname",
            ("%\\_\\_verify", "%\\_\\_restore"))
        return [r[0] for r in rows]

    def database_exists(self, database: str) -> bool:
        return bool(self.admin("SELECT 1 FROM pg_database WHERE datname = %s", (database,)))

    def drop_database(self, database: str) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def rename_database(self, old: str, new: str) -> None:
        self.admin(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    def close_connections(self, database: str) -> None:
        """Refuse new connections to DATABASE and end the open ones (before it is renamed away)."""
        self.admin(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(database)))
        self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))

    def allow_connections(self, database: str) -> None:
        self.admin(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(database)))

    def copy_database_acl(self, source: str, target: str) -> None:
        """GRANT ... ON DATABASE are not inside a pg_dump archive restored without --create: copy them."""
        if not self.admin("SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (source,))[0][0]:
            return
        target_id = sql.Identifier(target)
        self.admin(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target_id))
        rows = self.admin("SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL "
                          "ELSE pg_get_userbyid(a.grantee) END, a.is_grantable "
                          "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", (source,))
        for privilege, grantee, grantable in rows:
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege), target_id, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"))
            if grantable:
                statement = sql.SQL("{} WITH GRANT OPTION").format(statement)
            self.admin(statement)

    @staticmethod
    def table_query(cur) -> list[tuple[str, str]]:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
            "ORDER BY 1, 2")
        return cur.fetchall()

    @staticmethod
    def count_tables(cur, tables: list[tuple[str, str]]) -> dict[str, int]:
        counts = {}
        for schema, table in tables:
            cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema),
                                                                           sql.Identifier(table)))
            counts[f"{schema}.{table}"] = cur.fetchone()[0]
        return counts

    def counts_of(self, database: str) -> dict[str, int]:
        """Rows per table ("schema.table") of DATABASE."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                return self.count_tables(cur, self.table_query(cur))
        finally:
            conn.close()

    # ------------------------------------------------------------ client commands
    def dump(self, database: str, out: str) -> dict[str, Any]:
        """pg_dump DATABASE to OUT while counting every table in the same snapshot: {owner, tables}."""
        conn = self.connect(database)
        try:
            conn.set_session(isolation_level=extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot(), pg_get_userbyid(datdba) FROM pg_database "
                            "WHERE datname = current_database()")
                snapshot, owner = cur.fetchone()
                tables = self.table_query(cur)
                argv = [os.path.join(self.bin, "pg_dump"), *self.conn_args, f"--snapshot={snapshot}",
                        *self.cfg["compress_args"], "-f", out]
                if self.cfg["format"] == "directory":
                    argv += ["-Fd", "-j", str(self.cfg["jobs"])]
                else:
                    argv += ["-Fc"]
                argv.append(database)
                with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
                    # The counts run beside pg_dump in the snapshot pg_dump imported.
                    counts = self.count_tables(cur, tables)
                    _, err = proc.communicate()
                if proc.returncode != 0:
                    raise BackupError(f"pg_dump {database} failed (exit {proc.returncode}): {err.strip()}")
        finally:
            conn.close()
        return {"owner": owner, "tables": counts}

    def dump_safety(self, database: str, out: str) -> None:
        """pg_dump -Fc DATABASE to OUT: the copy of a live database taken before a restore replaces it."""
        run_cmd([os.path.join(self.bin, "pg_dump"), *self.conn_args, "-Fc", *self.cfg["compress_args"],
                 "-f", out, database], f"safety backup of {database}")

    def dump_globals(self, out: str) -> None:
        run_cmd([os.path.join(self.bin, "pg_dumpall"), *self.conn_args, "--globals-only", "-f", out],
                "pg_dumpall --globals-only")

    def restore_into(self, dump: str, target: str, owner: str | None = None) -> None:
        """Create TARGET (which must not exist) and pg_restore DUMP into it, stopping at the first error."""
        create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target))
        if owner:
            create = sql.SQL("{} OWNER {}").format(create, sql.Identifier(owner))
        self.admin(create)
        run_cmd([os.path.join(self.bin, "pg_restore"), *self.conn_args, "--exit-on-error",
                 "-j", str(self.cfg["jobs"]), "-d", target, dump], f"pg_restore into {target}")
