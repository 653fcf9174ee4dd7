"""Unit tests for filter_plugins/app_service.py and the role's pack_release.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402

import app_service as flt  # noqa: E402

_spec = importlib.util.spec_from_file_location("pack_release", ROOT / "roles/app_service/files/pack_release.py")
pack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack)


# ------------------------------------------------------------------ pick_slots

def test_first_deploy_uses_first_port_and_has_no_active():
    slots = flt.pick_slots([8001, 8002], {}, {}, "")
    assert slots["active"] is None and slots["idle"] == 8001


def test_active_is_running_instance_on_current_release():
    slots = flt.pick_slots([8001, 8002], {8001: "aaa", 8002: "bbb"}, {8001: "inactive", 8002: "active"}, "bbb")
    assert slots == {"active": 8002, "idle": 8001, "active_release": "bbb", "running": [8002]}


def test_prefers_the_instance_on_current_when_both_run():
    slots = flt.pick_slots(["8001", "8002"], {"8001": "old", "8002": "new"},
                           {"8001": "active", "8002": "active"}, "new")
    assert slots["active"] == 8002 and slots["idle"] == 8001


def test_running_instance_off_current_still_counts_as_active():
    slots = flt.pick_slots([8001, 8002], {8001: "x"}, {8001: True}, "y")
    assert slots["active"] == 8001 and slots["idle"] == 8002


@pytest.mark.parametrize("ports", [[8001], [8001, 8001], [8001, 8002, 8003], ["a", 1], [0, 8002], "8001,8002"])
def test_bad_ports_are_refused_naming_the_variable(ports):
    with pytest.raises(AnsibleFilterError, match="app_service_ports"):
        flt.pick_slots(ports, {}, {}, "")


# ---------------------------------------------------------------- release_plan

def _rel(rid, mtime):
    return {"path": f"/srv/app/releases/{rid}", "mtime": mtime}


def _mark(rid, name, mtime=0):
    return {"path": f"/srv/app/releases/{rid}/{name}", "mtime": mtime}


def test_keeps_newest_and_never_current():
    releases = [_rel(f"r{i}", i) for i in range(8)]
    plan = flt.release_plan(releases, [], current="r0", keep=3)
    assert "r0" not in plan["prune"]
    assert sorted(plan["prune"]) == ["r1", "r2", "r3", "r4", "r5"]


def test_failed_releases_are_pruned_first():
    releases = [_rel("good_old", 1), _rel("good", 2), _rel("bad_new", 3), _rel("cur", 4)]
    markers = [_mark("bad_new", ".app_service_failed"), _mark("cur", ".app_service_activated", 4),
               _mark("good", ".app_service_activated", 2), _mark("good_old", ".app_service_activated", 1)]
    plan = flt.release_plan(releases, markers, current="cur", keep=3)
    assert plan["prune"] == ["bad_new"]
    assert plan["failed"] == ["bad_new"]


def test_previous_is_last_activated_good_release():
    releases = [_rel("a", 1), _rel("b", 2), _rel("c", 3), _rel("broken", 9)]
    markers = [_mark("a", ".app_service_activated", 50), _mark("b", ".app_service_activated", 20),
               _mark("c", ".app_service_activated", 30), _mark("broken", ".app_service_failed")]
    # "a" went live most recently (a rollback), then c, then b.
    plan = flt.release_plan(releases, markers, current="c", keep=5)
    assert plan["previous"] == "a"
    assert plan["order"][:3] == ["a", "c", "b"]


def test_no_previous_without_another_activated_release():
    plan = flt.release_plan([_rel("only", 1), _rel("never_live", 2)],
                            [_mark("only", ".app_service_activated", 1)], current="only")
    assert plan["previous"] == "" and plan["prune"] == []


@pytest.mark.parametrize("keep", [0, -1, "x", None])
def test_bad_keep_is_refused(keep):
    with pytest.raises(AnsibleFilterError, match="app_service_keep_releases"):
        flt.release_plan([], [], "", keep)


def test_release_without_path_or_id_is_refused():
    with pytest.raises(AnsibleFilterError):
        flt.release_plan([{"mtime": 1}], [], "")


def test_filter_module_maps_names():
    names = flt.FilterModule().filters()
    assert set(names) == {"app_service_pick_slots", "app_service_release_plan",
                          "app_service_revisions", "app_service_exec_line", "app_service_ip_networks"}


# ------------------------------------------------------------------- revisions

def test_revisions_take_the_first_token_of_each_line():
    assert flt.revisions("0002 (head)\n") == ["0002"]
    assert flt.revisions("0001\n") == ["0001"]


def test_revisions_skip_log_lines_and_blank_lines():
    out = "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.\n\n  0002 (head)\n"
    assert flt.revisions(out) == ["0002"]


def test_several_heads_compare_regardless_of_order():
    assert flt.revisions("b2 (head)\na1 (head)\n") == flt.revisions("a1 (head)\nb2 (head)") == ["a1", "b2"]
    assert flt.revisions(["a1 (head)", "b2"]) == ["a1", "b2"]


def test_revisions_of_nothing_is_empty():
    assert flt.revisions("") == [] and flt.revisions(None) == [] and flt.revisions("\n \n") == []


def test_revisions_refuse_non_text():
    with pytest.raises(AnsibleFilterError, match="app_service_schema_head_command"):
        flt.revisions({"a": 1}, var="app_service_schema_head_command")


# ------------------------------------------- the role's settings record (vars)

def _render_settings_record(**overrides):
    """Render __app_service_settings_record from the role's defaults and vars
    with Ansible's templar and the project's filter plugins."""
    yaml = pytest.importorskip("yaml")
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import filter_loader
    from ansible.template import Templar, trust_as_template

    filter_loader.add_directory(str(ROOT / "filter_plugins"))

    def trust(value):
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, dict):
            return {k: trust(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trust(v) for v in value]
        return value

    variables = {}
    for name in ("defaults/main.yml", "vars/main.yml"):
        variables.update(trust(yaml.safe_load((ROOT / "roles/app_service" / name).read_text())))
    variables.update({"app_service_name": "demo", "app_service_db_name": "app", "app_service_db_user": "app_rw",
                      "app_service_db_password": "rw-pass", "app_service_db_migration_user": "app_owner",
                      "app_service_db_migration_password": "owner-pass",
                      "app_service_environment": {"SENTRY_DSN": "https://key@sentry", "GREETING": "hi"}})
    variables.update(overrides)
    templar = Templar(loader=DataLoader(), variables=variables)
    return json.loads(json.dumps(templar.template(trust_as_template("{{ __app_service_settings_record }}"))))


def _changed(old, new):
    import settings  # filter_plugins/settings.py, on sys.path above

    return settings.changed_settings(old, new)


def test_settings_record_holds_secrets_only_as_digests():
    record = _render_settings_record()
    text = json.dumps(record)
    assert not [s for s in ("rw-pass", "owner-pass", "https://key@sentry", '"hi"') if s in text]
    assert record["app_service_db_password"].startswith("sha256:")
    assert set(record["app_service_environment"]) == {"SENTRY_DSN", "GREETING"}
    assert record["app_service_asgi_app"] == "app.main:app" and record["app_service_ports"] == [8001, 8002]


def test_settings_record_names_what_changed():
    base = _render_settings_record()
    env = {"SENTRY_DSN": "https://other@sentry", "GREETING": "hi"}
    assert _changed(base, _render_settings_record(app_service_environment=env)) == ["app_service_environment.SENTRY_DSN"]
    assert _changed(base, _render_settings_record(app_service_db_password="new")) == ["app_service_db_password"]
    assert _changed(base, _render_settings_record(app_service_asgi_app="app.main:nope")) == ["app_service_asgi_app"]
    # Values from -e arrive as strings: the same port or worker count is no change.
    assert _changed(base, _render_settings_record(app_service_db_port="5432", app_service_workers="2",
                                                  app_service_ports=["8001", "8002"])) == []


def test_settings_record_covers_every_variable_the_settings_files_use():
    """Every public variable the env template and the unit template use,
    directly or through the role's internal vars, is in the record."""
    yaml = pytest.importorskip("yaml")
    role = ROOT / "roles/app_service"
    internal = yaml.safe_load((role / "vars/main.yml").read_text())
    filters = set(flt.FilterModule().filters())
    # The console's script and URLs (bin/console) are not settings of the
    # app's instances: no restart follows them, so the record leaves them out.
    todo = [p.read_text() for p in (role / "templates").rglob("*.j2") if "console" not in p.name]
    # The env templates get their mapping from the template tasks' vars.
    todo += [json.dumps(task.get("vars", {})) for task in yaml.safe_load((role / "tasks/config.yml").read_text())
             if "ansible.builtin.template" in task and "console" not in task["ansible.builtin.template"]["dest"]]
    used, seen = set(), set()
    while todo:
        text = todo.pop()
        used |= set(re.findall(r"(?<![\w])app_service_\w+", text)) - filters
        for name in set(re.findall(r"__app_service_\w+", text)) - seen:
            seen.add(name)
            if name in internal and name != "__app_service_settings_record":
                todo.append(json.dumps(internal[name]))
    assert {"app_service_asgi_app", "app_service_environment", "app_service_db_password"} <= used
    missing = used - set(_render_settings_record())
    assert not missing, f"variables that shape the env file or the unit but are not in the settings record: {missing}"


# ---------------------------------------------------------------- pack_release

def _tree(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "requirements.txt").write_text("fastapi==1\n")
    (root / "app" / "__pycache__").mkdir()
    (root / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_same_content_same_id_and_identical_archive(tmp_path, capsys):
    src = _tree(tmp_path / "src")
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir()
    out2.mkdir()
    pack.main(["dir", str(src), str(out1), "--exclude", "__pycache__"])
    first = json.loads(capsys.readouterr().out)
    os.utime(src / "app" / "main.py", (1, 1))  # mtimes do not matter
    pack.main(["dir", str(src), str(out2), "--exclude", "__pycache__"])
    second = json.loads(capsys.readouterr().out)
    assert first["id"] == second["id"] and len(first["id"]) == 12
    assert Path(first["archive"]).read_bytes() == Path(second["archive"]).read_bytes()
    with tarfile.open(first["archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"app/main.py", "requirements.txt"}
    assert all(m.uid == 0 and m.mode == 0o644 for m in members.values())


def test_id_only_without_outdir_and_expect_refuses_a_changed_tree(tmp_path, capsys):
    src = _tree(tmp_path / "src")
    pack.main(["dir", str(src), "--exclude", "__pycache__"])
    only_id = json.loads(capsys.readouterr().out)
    assert only_id["archive"] is None and only_id["files"] == 2
    # "auto": a new temporary directory; --expect matches the id read before.
    pack.main(["dir", str(src), "auto", "--exclude", "__pycache__", "--expect", only_id["id"]])
    packed = json.loads(capsys.readouterr().out)
    assert packed["id"] == only_id["id"] and Path(packed["archive"]).is_file()
    assert Path(packed["archive"]).name == f"{only_id['id']}.tar.gz"
    (src / "app" / "main.py").write_text("print('edited meanwhile')\n")
    with pytest.raises(SystemExit, match=f"app_service_source_path: .* changed during the run .*{only_id['id']}"):
        pack.main(["dir", str(src), "auto", "--exclude", "__pycache__", "--expect", only_id["id"]])


def test_changed_content_or_exec_bit_changes_id(tmp_path):
    src = _tree(tmp_path / "src")
    files = pack.walk(str(src), ["__pycache__"])
    base = pack.tree_id(files)
    (src / "app" / "main.py").write_text("print('bye')\n")
    changed = pack.tree_id(pack.walk(str(src), ["__pycache__"]))
    assert changed != base
    (src / "app" / "main.py").chmod(0o755)
    assert pack.tree_id(pack.walk(str(src), ["__pycache__"])) != changed


def test_excluded_paths_do_not_change_id(tmp_path):
    src = _tree(tmp_path / "src")
    base = pack.tree_id(pack.walk(str(src), ["__pycache__", ".venv"]))
    (src / ".venv").mkdir()
    (src / ".venv" / "x").write_text("x")
    assert pack.tree_id(pack.walk(str(src), ["__pycache__", ".venv"])) == base


def test_archive_id_is_content_hash(tmp_path, capsys):
    archive = tmp_path / "r.tar.gz"
    archive.write_bytes(b"abc")
    pack.main(["archive", str(archive)])
    result = json.loads(capsys.readouterr().out)
    assert result["id"] == "ba7816bf8f01"  # sha256("abc")[:12]


def test_missing_source_fails_naming_the_variable(tmp_path):
    with pytest.raises(SystemExit, match="app_service_source_path"):
        pack.walk(str(tmp_path / "nope"), [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="app_service_source_path"):
        pack.walk(str(tmp_path / "empty"), [])


# --- exec_line: systemd ExecStart= from an argument list -------------------------------

def test_exec_line_fills_placeholders_after_escaping():
    line = flt.exec_line(["/usr/bin/env", "uvicorn", "--host", "{host}", "--port", "{port}"],
                                 host="127.0.0.1", port="%i")
    assert line == "/usr/bin/env uvicorn --host 127.0.0.1 --port %i"


def test_exec_line_escapes_specifiers_variables_and_spaces():
    line = flt.exec_line(["node", "50%", "$HOME", "a b", 'q"t', ";"])
    assert line == 'node 50%% $$HOME "a b" "q\\"t" ";"'


@pytest.mark.parametrize("argv", [[], "uvicorn app:app", [""], ["a", None], ["a", ["b"]], ["a\nb"]])
def test_exec_line_refuses_bad_commands_naming_the_variable(argv):
    with pytest.raises(AnsibleFilterError, match="app_service_processes.worker.command"):
        flt.exec_line(argv, var="app_service_processes.worker.command")


def test_exec_line_refuses_a_placeholder_without_a_value():
    with pytest.raises(AnsibleFilterError, match=r"\{port\}"):
        flt.exec_line(["worker", "--port", "{port}"], var="app_service_processes.worker.command")


# --- ip_networks: egress allow/deny entries ----------------------------------------------

def test_ip_networks_normalises_addresses_and_networks():
    assert flt.ip_networks(["10.0.0.5", "10.0.0.1/24", " fd00:ec2::254/128", "169.254.0.0/16"]) == [
        "10.0.0.5/32", "10.0.0.0/24", "fd00:ec2::254/128", "169.254.0.0/16"]
    assert flt.ip_networks([]) == []


@pytest.mark.parametrize("values, index", [(["example.org"], 0), (["10.0.0.5", "10.0.0.300"], 1),
                                           (["10.0.0.0/33"], 0), ([None], 0), ([["10.0.0.5"]], 0)])
def test_ip_networks_refuses_non_addresses_naming_the_entry(values, index):
    with pytest.raises(AnsibleFilterError, match=rf"app_service_egress_allow\[{index}\]"):
        flt.ip_networks(values)


@pytest.mark.parametrize("values", ["10.0.0.5", {"a": "10.0.0.5"}, None])
def test_ip_networks_refuses_a_non_list(values):
    with pytest.raises(AnsibleFilterError, match="app_service_egress_deny: must be a list"):
        flt.ip_networks(values, var="app_service_egress_deny")
