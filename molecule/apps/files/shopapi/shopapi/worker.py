"""python -m shopapi.worker: mark new items processed until SIGTERM."""

from __future__ import annotations

import signal
import threading

from shopapi.db import connect

stop = threading.Event()


def main(interval: float = 1.0) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("shopapi worker started", flush=True)
    while not stop.is_set():
        with connect() as conn:
            done = conn.execute("UPDATE items SET processed = true WHERE NOT processed").rowcount
        if done:
            print(f"processed {done} item(s)", flush=True)
        stop.wait(interval)
    print("shopapi worker stopped", flush=True)


if __name__ == "__main__":
    main()
