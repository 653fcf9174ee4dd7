"""Further deploys: the API from a uv.lock pinning the same set as the first
release's requirements.lock, a release without a lock file while
app_service_require_lock is true, and a frontend whose build fails."""

import re

from conftest import current_release, freeze, report, snapshot

from stacktest import recap

testinfra_hosts = ["ansible://apps-host"]


def test_uv_lock_is_exported_and_gives_the_same_freeze(host, api_uv, first_api_release):
    rc, out = api_uv
    assert rc == 0
    release = f"/srv/api/releases/{current_release(host, 'api')}"
    exported = host.file(f"{release}/.app_service_uv_requirements.txt")
    assert exported.user == "root" and "--hash=sha256:" in exported.content_string
    assert "pytest" not in exported.content_string  # the dev group stays out
    uv = host.check_output("/opt/app_service/uv-0.13.8/bin/uv --version")
    report(f"api: uv.lock release {current_release(host, 'api')} built with {uv}")
    # Two builds of two sources from two lock formats: the same environment.
    assert release != f"/srv/api/releases/{first_api_release}"
    first_freeze = freeze(host, f"/srv/api/releases/{first_api_release}")
    report(f"api: releases {first_api_release} (requirements.lock) and {release} (uv.lock): "
           f"pip freeze identical = {freeze(host, release) == first_freeze}, {len(first_freeze)} packages")
    assert freeze(host, release) == first_freeze
    assert host.file("/opt/app_service").user == "root" and not host.file("/opt/app_service").mode & 0o022


def test_release_without_lock_is_refused_and_serving_release_untouched(host, api_without_lock):
    (rc, out), before = api_without_lock
    assert rc != 0
    assert "app_service_require_lock is true" in out
    assert "requirements.lock (app_service_python_lock_file)" in out and "uv.lock" in out
    assert snapshot(host, "api") == before
    assert not host.file("/run/lock/app_service-api.lock").exists


def test_failed_node_build_leaves_nothing_and_the_serving_release_untouched(host, web_failed_build):
    (rc, out), before = web_failed_build
    assert rc != 0
    # The build's own failure, named, and the run's recap counting it.
    assert re.search(r"Building release \w+ failed", out), out[-3000:]
    assert recap(out).get("apps-host", {}).get("failed", 0) >= 1, recap(out)
    report(f"web: failed build refused, releases still {before['releases']}")
    assert snapshot(host, "web") == before
    assert not host.file("/run/lock/app_service-web.lock").exists
