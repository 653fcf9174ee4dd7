#!/usr/bin/env python3
"""Bounded request loop for zero-downtime tests.

GETs a URL until a stop file appears, or a time or request cap is reached,
and writes {"requests", "failures", "releases", "errors"} as JSON to --out.
It talks to this host only (127.0.0.1 or localhost), over HTTP or HTTPS with
an explicit CA file (e.g. Caddy's internal root).
"""

import argparse
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="http://127.0.0.1:8080/health")
parser.add_argument("--cafile", help="CA bundle to verify an HTTPS server with")
parser.add_argument("--out", required=True)
parser.add_argument("--stop", required=True)
parser.add_argument("--max-seconds", type=float, default=300)
parser.add_argument("--max-requests", type=int, default=30000)
parser.add_argument("--interval", type=float, default=0.02)
args = parser.parse_args()
if urllib.parse.urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
    parser.error("only loopback URLs are allowed")
context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None

requests = failures = 0
releases: dict = {}
errors: list = []
deadline = time.monotonic() + args.max_seconds
while time.monotonic() < deadline and requests < args.max_requests and not os.path.exists(args.stop):
    requests += 1
    try:
        with urllib.request.urlopen(args.url, timeout=15, context=context) as resp:
            body = json.loads(resp.read())
            release = str(body.get("release", "?"))
            releases[release] = releases.get(release, 0) + 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        failures += 1
        if len(errors) < 10:
            errors.append(f"{time.strftime('%H:%M:%S')} {exc}")
    time.sleep(args.interval)

tmp = args.out + ".tmp"
with open(tmp, "w", encoding="utf-8") as handle:
    json.dump({"requests": requests, "failures": failures, "releases": releases, "errors": errors}, handle)
os.replace(tmp, args.out)
