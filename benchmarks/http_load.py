#!/usr/bin/env python3
"""A fixed-concurrency HTTP load for the benchmarks (prints figures, asserts
nothing): CONCURRENCY threads, each on its own keep-alive connection, ask
URL for SECONDS and the summary is printed as JSON: requests, failures,
requests per second, p50 and p99 latency. Talks to 127.0.0.1 only (the
benchmark runs it inside the stack's container); --server-name is the TLS
server name and Host header.

  http_load.py --url https://127.0.0.1:8443/notes --server-name localhost \\
      --cafile CA --concurrency 20 --seconds 15
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import statistics
import threading
import time
import urllib.parse


def worker(url: urllib.parse.SplitResult, name: str, context, deadline: float, out: list, lock) -> None:
    port = url.port or 443
    path = url.path + (f"?{url.query}" if url.query else "")
    latencies, failures, conn = [], 0, None
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            if conn is None:
                raw = socket.create_connection(("127.0.0.1", port), timeout=15)
                conn = http.client.HTTPConnection(name, port, timeout=15)
                conn.sock = context.wrap_socket(raw, server_hostname=name) if context else raw
            conn.request("GET", path, headers={"Host": name if port in (80, 443) else f"{name}:{port}"})
            response = conn.getresponse()
            response.read()
            ok = 200 <= response.status < 300
        except (OSError, http.client.HTTPException):
            ok = False
            if conn is not None:
                conn.close()
            conn = None
        latencies.append(time.monotonic() - started)
        failures += 0 if ok else 1
    if conn is not None:
        conn.close()
    with lock:
        out.append((latencies, failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-name", default="")
    parser.add_argument("--cafile", default="")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        parser.error("--url must be on 127.0.0.1 or localhost")
    context = ssl.create_default_context(cafile=args.cafile or None) if url.scheme == "https" else None
    name = args.server_name or url.hostname
    out: list = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds
    threads = [threading.Thread(target=worker, args=(url, name, context, deadline, out, lock))
               for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies = sorted(x for lat, _ in out for x in lat)
    failures = sum(f for _, f in out)
    print(json.dumps({
        "concurrency": args.concurrency, "seconds": round(elapsed, 1), "requests": len(latencies),
        "failures": failures, "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1) if latencies else None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
