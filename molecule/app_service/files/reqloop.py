#!/usr/bin/env python3
"""Bounded request loop: GET a URL until a stop file appears (or a time/count cap).

Writes {"requests", "failures", "releases", "errors"} as JSON to --out.
Only talks to 127.0.0.1.
"""

import argparse
import json
import os
import time
import urllib.error
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--url", default="http://127.0.0.1:8080/health")
parser.add_argument("--out", required=True)
parser.add_argument("--stop", required=True)
parser.add_argument("--max-seconds", type=float, default=300)
parser.add_argument("--max-requests", type=int, default=30000)
parser.add_argument("--interval", type=float, default=0.02)
args = parser.parse_args()
assert args.url.startswith("http://127.0.0.1:")

requests = failures = 0
releases: dict = {}
errors: list = []
deadline = time.monotonic() + args.max_seconds
while time.monotonic() < deadline and requests < args.max_requests and not os.path.exists(args.stop):
    requests += 1
    try:
        with urllib.request.urlopen(args.url, timeout=15) as resp:
            body = json.loads(resp.read())
            release = body.get("release", "?")
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
