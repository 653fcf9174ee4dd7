#!/usr/bin/python3
"""The stack's status page, rendered from Prometheus (installed by the
Ansible role `monitoring`).

  stack_status.py --prometheus URL --out FILE [--title TITLE]

One card per component (each scrape target, PostgreSQL, disks, backups, HTTP
checks, failed units) with its state and key figure, and the firing alerts
underneath. Static HTML with inline CSS, no script; written to a temporary
file and renamed. When Prometheus itself does not answer, the page says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

OK, WARN, FAIL = "ok", "warning", "failing"
TIMEOUT = 10

Fetch = Callable[[str, dict[str, str]], Any]


def fetch_from(base: str) -> Fetch:
    """A function that asks the Prometheus API at `base` and returns `data`."""

    def fetch(path: str, params: dict[str, str]) -> Any:
        url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # noqa: S310 - a local URL from the role
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('error', body)}")
        return body["data"]

    return fetch


def query(fetch: Fetch, expr: str) -> list[tuple[dict[str, str], float]]:
    data = fetch("/api/v1/query", {"query": expr})
    return [(item["metric"], float(item["value"][1])) for item in data.get("result", [])]


def components(fetch: Fetch, backups_max_age_hours: float, disk_used_percent: float,
               cert_min_days: float) -> list[dict[str, str]]:
    """Cards: {name, state, figure}, problems first."""
    cards: list[dict[str, str]] = []
    apps: dict[str, list[float]] = {}
    for labels, value in query(fetch, "up"):
        job = labels.get("job", "?")
        if job.startswith("http_"):
            continue
        if job.startswith("app_"):
            # Blue/green: one colour is idle and does not answer; the app is
            # up when one of its instances answers.
            apps.setdefault(job[len("app_"):], []).append(value)
            continue
        name = f"{job} on {labels.get('host') or labels.get('instance', '?')}"
        cards.append({"name": name, "state": OK if value == 1 else FAIL,
                      "figure": "answers" if value == 1 else "does not answer"})
    for app, values in apps.items():
        live = sum(1 for value in values if value == 1)
        cards.append({"name": f"App {app}", "state": OK if live else FAIL,
                      "figure": f"{live} of {len(values)} instances answer" if live else "no instance answers"})
    for labels, value in query(fetch, "pg_up"):
        cards.append({"name": f"PostgreSQL on {labels.get('host') or labels.get('instance', '?')}",
                      "state": OK if value == 1 else FAIL, "figure": "up" if value == 1 else "down"})
    for labels, value in query(fetch, "probe_success"):
        cards.append({"name": f"HTTP check {labels.get('check') or labels.get('instance', '?')}",
                      "state": OK if value == 1 else FAIL, "figure": labels.get("instance", "")})
    # Short-lived certificates a server renews itself (Caddy's internal ones)
    # are labelled cert_check="no" and left out, as in the expiry alert.
    for labels, value in query(fetch, '(probe_ssl_earliest_cert_expiry{cert_check!="no"} - time()) / 86400'):
        cards.append({"name": f"Certificate of {labels.get('instance', '?')}",
                      "state": OK if value >= cert_min_days else WARN, "figure": f"{value:.0f} days left"})
    disks = query(fetch, '(1 - node_filesystem_avail_bytes{fstype!~"overlay|squashfs|nsfs|proc|ramfs",'
                         'mountpoint!~"/(run|dev|sys|proc)($|/.*)"} / node_filesystem_size_bytes) * 100')
    if disks:
        labels, value = max(disks, key=lambda item: item[1])
        cards.append({"name": "Disks", "state": OK if value <= disk_used_percent else WARN,
                      "figure": f"fullest {labels.get('mountpoint', '?')}: {value:.0f} % used"})
    for labels, value in query(fetch, "(time() - stack_backup_last_good_timestamp_seconds) / 3600"):
        cards.append({"name": f"Backups on {labels.get('host') or labels.get('instance', '?')}",
                      "state": OK if value <= backups_max_age_hours else FAIL,
                      "figure": f"newest good backup {value:.1f} h old"})
    ages = {(labels.get("app"), labels.get("instance")): value
            for labels, value in query(fetch, "time() - stack_deploy_timestamp_seconds")}
    for labels, _ in query(fetch, "stack_deploy_info"):
        age = ages.get((labels.get("app"), labels.get("instance")))
        host = labels.get("host") or labels.get("instance", "?")
        done = {"deploy": "deployed", "rollback": "rolled back", "restart": "restarted",
                "maintenance-on": "switched on", "maintenance-off": "switched off"}.get(
            labels.get("action", ""), labels.get("action", "changed"))
        switch = labels.get("app") == "maintenance"
        figure = (f"{done} {_ago(age)} by {labels.get('by') or '?'}"
                  + ("" if switch else f": {labels.get('release') or '?'}")
                  + ("" if labels.get("result") == "ok" else f" ({labels.get('result') or '?'})")
                  + (f", {labels['message']}" if labels.get("message") else ""))
        cards.append({"name": f"Maintenance switch on {host}" if switch
                      else f"Last change of {labels.get('app', '?')} on {host}",
                      "state": OK if labels.get("result") == "ok" else WARN, "figure": figure})
    failed = [labels.get("unit", "?") for labels, value in query(fetch, "stack_unit_failed") if value == 1]
    cards.append({"name": "systemd units", "state": FAIL if failed else OK,
                  "figure": ", ".join(sorted(failed)) + " failed" if failed else "none failed"})
    order = {FAIL: 0, WARN: 1, OK: 2}
    return sorted(cards, key=lambda card: (order[card["state"]], card["name"]))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time"
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def firing_alerts(fetch: Fetch) -> list[dict[str, str]]:
    alerts = []
    for alert in fetch("/api/v1/alerts", {}).get("alerts", []):
        labels = alert.get("labels", {})
        if alert.get("state") != "firing" or labels.get("alertname") == "Watchdog":
            continue
        alerts.append({"name": labels.get("alertname", "?"), "severity": labels.get("severity", ""),
                       "summary": alert.get("annotations", {}).get("summary", ""),
                       "since": alert.get("activeAt", "")[:19].replace("T", " ")})
    return sorted(alerts, key=lambda a: (a["severity"] != "page", a["name"]))


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:18px 28px;color:#fff}
header.ok{background:#1f7a4d}header.warning{background:#9a6a00}header.failing{background:#b3261e}
h1{margin:0;font-size:22px}header p{margin:4px 0 0}
main{padding:20px 28px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:12px 14px;border-left:6px solid #1f7a4d;box-shadow:0 1px 2px #0002}
.card.warning{border-color:#d99a00}.card.failing{border-color:#b3261e}
.card h2{font-size:15px;margin:0 0 4px}.state{font-weight:600;text-transform:uppercase;font-size:12px}
.ok .state{color:#1f7a4d}.warning .state{color:#9a6a00}.failing .state{color:#b3261e}
table{border-collapse:collapse;width:100%;background:#fff;margin-top:8px}
td,th{padding:6px 10px;border-bottom:1px solid #e3e5ea;text-align:left}
footer{padding:0 28px 20px;color:#5b6272;font-size:13px}
"""


def render(title: str, cards: list[dict[str, str]], alerts: list[dict[str, str]], now: dt.datetime,
           error: str = "") -> str:
    esc = html.escape
    if error:
        overall, headline = FAIL, f"Prometheus does not answer: {error}"
    else:
        states = [card["state"] for card in cards]
        overall = FAIL if FAIL in states or alerts else (WARN if WARN in states else OK)
        problems = sum(state != OK for state in states)
        headline = ("Everything is working" if overall == OK
                    else f"{problems} component(s) need attention, {len(alerts)} alert(s) firing")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="30">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}: {esc(overall)}</title><style>{STYLE}</style></head><body>",
        f'<header class="{overall}"><h1>{esc(title)}</h1><p id="overall" data-state="{overall}">{esc(headline)}</p></header>',
        "<main>", '<section class="cards">',
    ]
    for card in cards:
        parts.append(f'<div class="card {card["state"]}" data-state="{card["state"]}"><h2>{esc(card["name"])}</h2>'
                     f'<div class="state">{esc(card["state"])}</div><div>{esc(card["figure"])}</div></div>')
    parts.append("</section>")
    parts.append("<h2>Alerts firing</h2>")
    if alerts:
        parts.append("<table><tr><th>Alert</th><th>Severity</th><th>Since (UTC)</th><th>What</th></tr>")
        for alert in alerts:
            parts.append(f"<tr><td>{esc(alert['name'])}</td><td>{esc(alert['severity'])}</td>"
                         f"<td>{esc(alert['since'])}</td><td>{esc(alert['summary'])}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append(f"</main><footer>Rendered {now.strftime('%Y-%m-%d %H:%M:%S')} UTC from Prometheus; "
                 "refreshes every 30 s.</footer></body></html>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="Stack status")
    parser.add_argument("--backups-max-age-hours", type=float, default=26)
    parser.add_argument("--disk-used-percent", type=float, default=85)
    parser.add_argument("--cert-min-days", type=float, default=14)
    args = parser.parse_args(argv)
    fetch = fetch_from(args.prometheus)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        page = render(args.title, components(fetch, args.backups_max_age_hours, args.disk_used_percent,
                                             args.cert_min_days), firing_alerts(fetch), now)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        page = render(args.title, [], [], now, error=str(exc))
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
