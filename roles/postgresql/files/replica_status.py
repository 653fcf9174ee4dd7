#!/usr/bin/python3
"""The standby's replication status, as JSON, for people and for alerting.

Asks the local server (peer authentication over the unix socket, as the
postgres user) whether it is in recovery, whether its WAL receiver streams
from the primary, and how far replay lags behind: 0 when everything received
is replayed, else the age of the last transaction replayed. Writes the status
atomically to --out (readable by everyone: it holds no secret), prints it, and
exits 1 when the server is not a streaming standby or lags more than
--max-lag seconds (the unit's OnFailure= alert then runs).
"""

import argparse
import json
import os
import sys
import time

import psycopg2

QUERY = """
SELECT pg_is_in_recovery(),
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT sender_host FROM pg_stat_wal_receiver),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8,
       extract(epoch FROM now() - (SELECT last_msg_receipt_time FROM pg_stat_wal_receiver))::float8
"""


def status(port: int, max_lag: float) -> dict:
    """Read the standby's state; 'ok' is False with a 'problem' when it is not healthy."""
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "max_lag_seconds": max_lag}
    try:
        with psycopg2.connect(host="/var/run/postgresql", port=port, dbname="postgres", connect_timeout=10) as conn:
            with conn.cursor() as cur:
                cur.execute(QUERY)
                recovery, receiver, sender, lag, pending, last_msg = cur.fetchone()
        conn.close()
    except psycopg2.Error as exc:
        result.update(ok=False, problem=f"the server does not answer: {str(exc).strip()}")
        return result
    result.update(in_recovery=recovery, receiver_status=receiver, primary=sender,
                  lag_seconds=None if lag is None else round(lag, 3),
                  replay_pending_bytes=pending, last_message_seconds=None if last_msg is None else round(last_msg, 3))
    if not recovery:
        problem = "not in recovery: this server is a primary (promoted?)"
    elif receiver != "streaming":
        problem = f"the WAL receiver is {receiver or 'not running'}: not streaming from the primary"
    elif lag is None or lag > max_lag:
        problem = f"replay lags {lag} s, more than {max_lag} s"
    else:
        problem = ""
    result.update(ok=not problem, problem=problem)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--max-lag", type=float, default=60)
    parser.add_argument("--out", help="status file to write (atomically)")
    args = parser.parse_args()
    result = status(args.port, args.max_lag)
    text = json.dumps(result, sort_keys=True)
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
