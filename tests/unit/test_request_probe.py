"""Unit tests for playbooks/files/request_probe.py against a local HTTP server
that fails for a while."""

import http.server
import importlib.machinery
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
loader = importlib.machinery.SourceFileLoader("request_probe", str(REPO / "playbooks" / "files" / "request_probe.py"))
spec = importlib.util.spec_from_loader("request_probe", loader)
probe = importlib.util.module_from_spec(spec)
loader.exec_module(probe)


class Handler(http.server.BaseHTTPRequestHandler):
    failing_until = 0.0

    def do_GET(self):  # noqa: N802 - the http.server API
        failing = time.monotonic() < Handler.failing_until
        body = json.dumps({"release": "r1"}).encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_counts_a_failure_window_and_says_why_it_stopped(server, tmp_path):
    stop = tmp_path / "stop"
    args = probe.parse_args(["--url", f"http://127.0.0.1:{server}/health", "--out", str(tmp_path / "out.json"),
                             "--stop", str(stop), "--interval", "0.01", "--max-seconds", "10"])
    Handler.failing_until = time.monotonic() + 0.6
    threading.Timer(1.2, stop.touch).start()
    result = probe.run(args)
    assert result["stopped"] == "stop file"
    assert result["failures"] > 5 and result["requests"] > result["failures"]
    assert 0.5 <= result["longest_unavailable_seconds"] < 1.2, result
    assert result["errors"][0].endswith("HTTP 503") and not result["still_failing"]
    assert result["releases"] == {"r1": result["requests"] - result["failures"]}
    assert result["first_failure"] <= result["last_failure"]


def test_a_time_limit_is_reported_as_such(server, tmp_path):
    args = probe.parse_args(["--url", f"http://localhost:{server}/", "--out", str(tmp_path / "o"),
                             "--stop", str(tmp_path / "never"), "--max-seconds", "0.3", "--method", "POST",
                             "--body", "{}"])
    Handler.failing_until = 0
    result = probe.run(args)
    assert result["stopped"] == "time limit" and result["failures"] == 0 and result["requests"] > 0
    assert result["max_latency_seconds"] >= result["p50_latency_seconds"]
    args = probe.parse_args(["--url", f"http://localhost:{server}/", "--out", str(tmp_path / "o"),
                             "--stop", str(tmp_path / "never"), "--max-requests", "3"])
    assert probe.run(args)["stopped"] == "request cap"


def test_only_loopback_urls(tmp_path):
    with pytest.raises(SystemExit):
        probe.parse_args(["--url", "https://example.com/", "--out", "o", "--stop", "s"])
