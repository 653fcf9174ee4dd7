#!/usr/bin/env python3
"""Write probe through Caddy for playbooks/promote.yml.

Sends a request (by default a POST that writes) to Caddy on this host every
--interval seconds until a stop file appears or --max-seconds pass, and
writes {"requests", "failures", "write_unavailable_seconds", "errors"} as
JSON to --out. write_unavailable_seconds is the longest time between two
successful requests with failed ones between them: how long writes did not
get through. It connects to 127.0.0.1 only, presenting --server-name for TLS
and Host.
"""

import argparse
import http.client
import json
import os
import socket
import ssl
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=443)
parser.add_argument("--server-name", required=True)
parser.add_argument("--path", required=True)
parser.add_argument("--method", default="POST")
parser.add_argument("--body", default="")
parser.add_argument("--cafile", default="")
parser.add_argument("--out", required=True)
parser.add_argument("--stop", required=True)
parser.add_argument("--interval", type=float, default=0.1)
parser.add_argument("--max-seconds", type=float, default=900)
args = parser.parse_args()
context = ssl.create_default_context(cafile=args.cafile or None)

requests = failures = 0
errors: list = []
last_ok = None
failed_since_ok = False
longest = 0.0
deadline = time.monotonic() + args.max_seconds
while time.monotonic() < deadline and not os.path.exists(args.stop):
    requests += 1
    started = time.monotonic()
    try:
        raw = socket.create_connection(("127.0.0.1", args.port), timeout=15)
        conn = http.client.HTTPConnection(args.server_name, args.port, timeout=15)
        conn.sock = context.wrap_socket(raw, server_hostname=args.server_name)
        conn.request(args.method, args.path, body=args.body or None,
                     headers={"Host": args.server_name, "Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        ok = 200 <= status < 300
        detail = f"HTTP {status}"
    except (OSError, http.client.HTTPException) as exc:
        ok, detail = False, str(exc)
    now = time.monotonic()
    if ok:
        if failed_since_ok and last_ok is not None:
            longest = max(longest, now - last_ok)
        last_ok, failed_since_ok = now, False
    else:
        failures += 1
        failed_since_ok = True
        if len(errors) < 10:
            errors.append(f"{time.strftime('%H:%M:%S')} {detail}")
    time.sleep(max(0.0, args.interval - (time.monotonic() - started)))

if failed_since_ok and last_ok is not None:
    longest = max(longest, time.monotonic() - last_ok)
result = {"requests": requests, "failures": failures, "write_unavailable_seconds": round(longest, 1),
          "still_failing": failed_since_ok, "errors": errors}
tmp = args.out + ".tmp"
with open(tmp, "w", encoding="utf-8") as handle:
    json.dump(result, handle)
os.replace(tmp, args.out)
