#!/usr/bin/env python3
"""Request probe: requests through Caddy on this host, counted.

Sends a request (GET by default; a POST with --body writes) to a loopback
URL every --interval seconds until a stop file appears, or --max-seconds or
--max-requests is reached, and writes a JSON summary to --out:

  requests, failures, errors (the first 10, with the time)
  stopped                      why it ended: "stop file", "time limit" or "request cap"
  releases                     {release: count} of the "release" key of JSON answers
  longest_unavailable_seconds  the longest time from the last success before a
                               failure (or the start) to the next success (or
                               the end): how long requests did not get through
  max_latency_seconds, p50_latency_seconds, p99_latency_seconds
  first_failure, last_failure  epoch seconds (null without failures)
  still_failing                the last request failed

Used by playbooks/promote.yml and playbooks/update.yml (the write probe),
by the benchmarks and by the Molecule tests (the request loops). It talks to
127.0.0.1 only; --server-name sets the TLS server name and Host header (the
site's domain), else the URL's host name is used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import statistics
import time
import urllib.parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="http(s)://127.0.0.1|localhost[:port]/path")
    parser.add_argument("--server-name", default="", help="TLS server name and Host header")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--cafile", default="", help="CA to verify an HTTPS server with")
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--max-requests", type=int, default=100000)
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or url.hostname not in ("127.0.0.1", "localhost"):
        parser.error("--url must be an http(s) URL on 127.0.0.1 or localhost")
    return args


def request_once(url: urllib.parse.SplitResult, args: argparse.Namespace,
                 context: ssl.SSLContext | None) -> tuple[bool, str, str]:
    """One request; returns (ok, detail, release)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    name = args.server_name or url.hostname
    path = url.path + (f"?{url.query}" if url.query else "")
    conn = None
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=args.timeout)
        conn = http.client.HTTPConnection(name, port, timeout=args.timeout)
        conn.sock = context.wrap_socket(raw, server_hostname=name) if context else raw
        headers = {"Host": name if port in (80, 443) else f"{name}:{port}"}
        if args.body:
            headers["Content-Type"] = "application/json"
        conn.request(args.method, path, body=args.body or None, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return False, str(exc) or type(exc).__name__, ""
    finally:
        if conn is not None:
            conn.close()
    release = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            release = str(parsed.get("release", ""))
    except ValueError:
        pass
    return 200 <= response.status < 300, f"HTTP {response.status}", release


def run(args: argparse.Namespace) -> dict:
    url = urllib.parse.urlsplit(args.url)
    context = ssl.create_default_context(cafile=args.cafile or None) if url.scheme == "https" else None
    requests = failures = 0
    errors: list[str] = []
    releases: dict[str, int] = {}
    latencies: list[float] = []
    # A probe that fails from its first request counts from its start.
    last_ok = time.monotonic()
    failed_since_ok = False
    longest = 0.0
    first_failure = last_failure = None
    stopped = "time limit"
    deadline = time.monotonic() + args.max_seconds
    while True:
        if os.path.exists(args.stop):
            stopped = "stop file"
            break
        if time.monotonic() >= deadline:
            stopped = "time limit"
            break
        if requests >= args.max_requests:
            stopped = "request cap"
            break
        requests += 1
        started = time.monotonic()
        ok, detail, release = request_once(url, args, context)
        now = time.monotonic()
        latencies.append(now - started)
        if ok:
            if release:
                releases[release] = releases.get(release, 0) + 1
            if failed_since_ok:
                longest = max(longest, now - last_ok)
            last_ok, failed_since_ok = now, False
        else:
            failures += 1
            failed_since_ok = True
            last_failure = time.time()
            first_failure = first_failure or last_failure
            if len(errors) < 10:
                errors.append(f"{time.strftime('%H:%M:%S')} {detail}")
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    if failed_since_ok:
        longest = max(longest, time.monotonic() - last_ok)
    ordered = sorted(latencies)
    return {
        "requests": requests, "failures": failures, "errors": errors, "stopped": stopped,
        "releases": releases, "longest_unavailable_seconds": round(longest, 2),
        "max_latency_seconds": round(ordered[-1], 3) if ordered else None,
        "p50_latency_seconds": round(statistics.median(ordered), 3) if ordered else None,
        "p99_latency_seconds": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3) if ordered else None,
        "first_failure": first_failure, "last_failure": last_failure, "still_failing": failed_since_ok,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
