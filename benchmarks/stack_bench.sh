#!/usr/bin/env bash
# Whole-stack benchmark (prints figures; it asserts nothing):
#   1. cold converge of playbooks/site.yml on a fresh container;
#   2. the no-op re-run: time and changed count;
#   3. redeploy.yml of a new release while a request loop runs through Caddy:
#      time, requests and failed requests; then a release with changed
#      requirements (a new virtualenv);
#   4. the no-op re-run over SSH, as on a real VPS;
#   5. what PgBouncer costs or saves: requests per second and p50/p99 latency
#      of a database-backed request (GET /notes) through Caddy at a fixed
#      concurrency of 20, with the apps on PgBouncer (the default) and
#      connecting to PostgreSQL directly (-e stack_pgbouncer=false).
# Runs 2 and 3 are repeated with Ansible's linear strategy, the previous
# approach, and printed with the ratio (ansible.cfg's default is stack_linear,
# Mitogen); the no-op also with every role play run (stack_skip_unchanged:
# false, the approach before a host whose records all match was left out of
# the role plays). Each figure with a goal (issue 25) is printed with it, and
# one over its goal says so.
# Uses its own container (stack-bench, no published ports) beside any sandbox.
#   make bench-stack      or      benchmarks/stack_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" NO_COLOR=1 ANSIBLE_NOCOLOR=1
export STACK_SANDBOX_NAME=stack-bench STACK_SANDBOX_PUBLISH=0
inv=.cache/bench-inventory
work="$(mktemp -d)"
trap 'rm -rf "$work"; scripts/sandbox.sh destroy >/dev/null 2>&1 || true' EXIT

# An inventory beside the sandbox's, with the bench container as every group.
rm -rf "$inv" && mkdir -p "$inv"
ln -s ../../inventories/sandbox/group_vars "$inv/group_vars"
sed "s/stack-sandbox:/$STACK_SANDBOX_NAME:/" inventories/sandbox/hosts.yml > "$inv/hosts.yml"
export STACK_SANDBOX_INVENTORY="$inv"

changed_count() { # sum of changed= over the PLAY RECAP lines of a log
  awk -v h="$STACK_SANDBOX_NAME" '$1 == h && $2 == ":" { for (i = 3; i <= NF; i++) if ($i ~ /^changed=/) { sub("changed=", "", $i); n += $i } } END { print n + 0 }' "$1.log"
}
timed_play() { # timed_play LOG ARGS... -> seconds on stdout
  local log="$1" start=$SECONDS
  shift
  ansible-playbook -i "$inv" "$@" >"$log.log" 2>&1 || { tail -30 "$log.log" >&2; echo "benchmark: ansible-playbook $* failed" >&2; exit 1; }
  echo $((SECONDS - start))
}

ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a / b:.2f}" if b else "n/a")' "$1" "$2"; }

# A request loop through Caddy for the duration of one redeploy.
docker_loop_start() {
  docker exec "$STACK_SANDBOX_NAME" rm -f /tmp/bench-loop.json /tmp/bench-loop.stop
  docker exec "$STACK_SANDBOX_NAME" systemd-run --unit=bench-loop --collect /usr/bin/python3 /usr/local/bin/reqloop \
    --url https://localhost:8443/health --cafile "$ca" --out /tmp/bench-loop.json --stop /tmp/bench-loop.stop --max-seconds 900 >/dev/null
  sleep 2
}
docker_loop_stop() { # -> "REQUESTS FAILURES"
  sleep 3
  docker exec "$STACK_SANDBOX_NAME" touch /tmp/bench-loop.stop
  for _ in $(seq 1 30); do docker exec "$STACK_SANDBOX_NAME" test -f /tmp/bench-loop.json && break; sleep 1; done
  docker exec "$STACK_SANDBOX_NAME" cat /tmp/bench-loop.json \
    | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["requests"], r["failures"])'
}
release() { # release NAME [requirements-change] -> path of a new demo_app release
  cp -r examples/demo_app "$work/$1" && echo "$1 $(date +%s)" > "$work/$1/RELEASE_NOTE"
  [ -z "${2:-}" ] || echo "# $1: changed requirements, a new virtualenv" >> "$work/$1/requirements.txt"
  echo "$work/$1"
}
redeploy_under_load() { # redeploy_under_load LOG SOURCE -> "SECONDS REQUESTS FAILURES"
  local took
  docker_loop_start
  took=$(timed_play "$1" playbooks/redeploy.yml -e "stack_app_source_path=$2")
  echo "$took $(docker_loop_stop)"
}

scripts/sandbox.sh destroy >/dev/null 2>&1 || true
scripts/sandbox.sh start
# The project's strategy (ansible.cfg: stack_linear, i.e. Mitogen), then the
# same runs with Ansible's linear strategy as the previous approach.
cold=$(timed_play "$work/cold" playbooks/site.yml)
noop=$(timed_play "$work/noop" playbooks/site.yml)
noop_changed=$(changed_count "$work/noop")
noop_every=$(timed_play "$work/noop-every" playbooks/site.yml -e stack_skip_unchanged=false)
noop_every_changed=$(changed_count "$work/noop-every")
noop_linear=$(ANSIBLE_STRATEGY=linear timed_play "$work/noop-linear" playbooks/site.yml)
noop_linear_changed=$(changed_count "$work/noop-linear")

# The path real users take: the same no-op run over SSH (root with a key,
# to the container's address), with Mitogen and with linear + pipelining and
# ControlPersist (ansible.cfg's [ssh_connection]).
# The same inventory directory (its generated secrets live beside it), with
# host_vars that say SSH for the length of these two runs.
mkdir -p "$inv/host_vars"
ssh-keygen -q -t ed25519 -N "" -f "$work/ssh-key"
docker exec "$STACK_SANDBOX_NAME" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null \
  && install -d -m 0700 /root/.ssh && systemctl enable --now ssh >/dev/null 2>&1'
docker exec -i "$STACK_SANDBOX_NAME" sh -c 'cat > /root/.ssh/authorized_keys' < "$work/ssh-key.pub"
cat > "$inv/host_vars/$STACK_SANDBOX_NAME.yml" <<YML
ansible_connection: ssh
ansible_host: $(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$STACK_SANDBOX_NAME")
ansible_user: root
ansible_ssh_private_key_file: $work/ssh-key
ansible_host_key_checking: false
ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
YML
# A failed SSH run is reported (its log kept in .cache/) and the rest goes on.
noop_ssh=failed noop_ssh_changed=n/a noop_ssh_linear=failed noop_ssh_linear_changed=n/a
if noop_ssh=$(timed_play "$work/noop-ssh" playbooks/site.yml); then
  noop_ssh_changed=$(changed_count "$work/noop-ssh")
  noop_ssh_linear=$(ANSIBLE_STRATEGY=linear timed_play "$work/noop-ssh-linear" playbooks/site.yml) \
    && noop_ssh_linear_changed=$(changed_count "$work/noop-ssh-linear") || noop_ssh_linear=failed
else
  noop_ssh=failed
fi
cp "$work"/noop-ssh*.log .cache/ 2>/dev/null || true
rm -r "$inv/host_vars"

docker cp playbooks/files/request_probe.py "$STACK_SANDBOX_NAME:/usr/local/bin/reqloop"
ca=/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt
read -r redeploy redeploy_requests redeploy_failed < <(redeploy_under_load "$work/redeploy" "$(release v2)")
read -r redeploy_linear redeploy_linear_requests redeploy_linear_failed < <(
  ANSIBLE_STRATEGY=linear redeploy_under_load "$work/redeploy-linear" "$(release v3)")
read -r redeploy_reqs redeploy_reqs_requests redeploy_reqs_failed < <(
  redeploy_under_load "$work/redeploy-reqs" "$(release v4 requirements)")

# PgBouncer vs direct: the same load, the app switched between the two by
# site.yml (a health-gated restart for the new DATABASE_URL).
docker cp benchmarks/http_load.py "$STACK_SANDBOX_NAME:/usr/local/bin/http_load"
load() { # -> JSON figures of 15 s at concurrency 20 on GET /notes
  docker exec "$STACK_SANDBOX_NAME" python3 /usr/local/bin/http_load --url https://127.0.0.1:8443/notes \
    --server-name localhost --cafile "$ca" --concurrency 20 --seconds 15
}
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
pooled=$(load)
timed_play "$work/direct" playbooks/site.yml -e stack_pgbouncer=false >/dev/null
direct=$(load)
timed_play "$work/pooled-again" playbooks/site.yml >/dev/null

goal() { # goal SECONDS GOAL -> "goal N s: met" or "goal N s: OVER GOAL"
  python3 -c 'import sys
v, g = sys.argv[1:]
try:
    print(f"goal {g} s: " + ("met" if float(v) <= float(g) else "OVER GOAL"))
except ValueError:
    print(f"goal {g} s: not measured")' "$1" "$2"
}

cat <<TXT

Whole-stack benchmark ($(nproc) cores, image ${STACK_SANDBOX_IMAGE:-stack-debian:12}, $(date -u +%F))
Ratio = the previous approach / this one: Ansible's linear strategy / stack_linear (Mitogen); every role play run / unchanged hosts left out
  cold converge of site.yml:             ${cold} s ($(goal "$cold" 60))
  no-op re-run of site.yml:              ${noop} s, changed=${noop_changed} ($(goal "$noop" 10))
    every role play run (skip off):      ${noop_every} s, changed=${noop_every_changed}, ratio $(ratio "$noop_every" "$noop")
    with strategy linear:                ${noop_linear} s, changed=${noop_linear_changed}, ratio $(ratio "$noop_linear" "$noop")
  no-op re-run over SSH:                 ${noop_ssh} s, changed=${noop_ssh_changed} ($(goal "$noop_ssh" 12))
    with strategy linear (pipelining):   ${noop_ssh_linear} s, changed=${noop_ssh_linear_changed}, ratio $( [ "$noop_ssh" != failed ] && [ "$noop_ssh_linear" != failed ] && ratio "$noop_ssh_linear" "$noop_ssh" || echo n/a) (logs: .cache/noop-ssh*.log)
  redeploy.yml, unchanged requirements:  ${redeploy} s, ${redeploy_requests} requests through Caddy, ${redeploy_failed} failed ($(goal "$redeploy" 15))
    with strategy linear:                ${redeploy_linear} s, ${redeploy_linear_requests} requests, ${redeploy_linear_failed} failed, ratio $(ratio "$redeploy_linear" "$redeploy")
  redeploy.yml, changed requirements:    ${redeploy_reqs} s, ${redeploy_reqs_requests} requests, ${redeploy_reqs_failed} failed ($(goal "$redeploy_reqs" 20))
GET /notes through Caddy, 20 concurrent clients for 15 s, PgBouncer vs the app connecting directly, ratio = PgBouncer / direct
  through PgBouncer (the default):       $(field "$pooled" rps) requests/s, p50 $(field "$pooled" p50_ms) ms, p99 $(field "$pooled" p99_ms) ms, $(field "$pooled" failures) failed
  straight to PostgreSQL:                $(field "$direct" rps) requests/s, p50 $(field "$direct" p50_ms) ms, p99 $(field "$direct" p99_ms) ms, $(field "$direct" failures) failed, ratio $(ratio "$(field "$pooled" rps)" "$(field "$direct" rps)") (requests/s)
TXT
