"""A background worker (`python -m app.worker`): the kind of process
app_service_processes runs next to the web instances.

Every second it counts the notes with the runtime (DML-only) role from
DATABASE_URL and writes a heartbeat to $STATE_DIRECTORY/worker.json (the
systemd state directory, /var/lib/<app>). Start and stop lines go to
$STATE_DIRECTORY/worker.log; on SIGTERM it finishes the current beat and
exits 0 (a graceful stop).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg

from app.main import connect, release_id


def _log(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")
    print(text, flush=True)


def main() -> None:
    state = Path(os.environ.get("STATE_DIRECTORY", "/tmp"))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    me = f"release={release_id()} pid={os.getpid()}"
    _log(state / "worker.log", f"start {me}")
    beats = 0
    while not stopping:
        beat = {"release": release_id(), "pid": os.getpid(), "beats": beats + 1, "time": time.time()}
        try:
            with connect() as conn:
                beat["db_user"] = conn.execute("SELECT current_user").fetchone()[0]
                beat["notes"] = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        except psycopg.Error as exc:
            beat["error"] = type(exc).__name__
        beats += 1
        tmp = state / "worker.json.tmp"
        tmp.write_text(json.dumps(beat), encoding="utf-8")
        tmp.replace(state / "worker.json")
        for _ in range(10):
            if stopping:
                break
            time.sleep(0.1)
    _log(state / "worker.log", f"stop {me} signal=SIGTERM beats={beats}")


if __name__ == "__main__":
    main()
