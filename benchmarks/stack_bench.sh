#!/usr/bin/env bash
# Whole-stack benchmark (prints figures; it asserts nothing):
#   1. cold converge of playbooks/site.yml on a fresh container;
#   2. the no-op re-run: time and changed count;
#   3. redeploy.yml of a new release while a request loop runs through Caddy:
#      time, requests and failed requests.
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

scripts/sandbox.sh destroy >/dev/null 2>&1 || true
scripts/sandbox.sh start
cold=$(timed_play "$work/cold" playbooks/site.yml)
noop=$(timed_play "$work/noop" playbooks/site.yml)
noop_changed=$(changed_count "$work/noop")

# The same no-op re-run with Mitogen's strategy (README: Figures). Mitogen
# replaces the connection plugins it knows by their short name, so the
# container's host_vars say `docker` instead of community.docker.docker (an
# extra var would also apply to the tasks delegated to localhost).
mitogen_dir="$(python -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))' 2>/dev/null || true)"
noop_mitogen="" noop_mitogen_changed=""
if [ -n "$mitogen_dir" ]; then
  mkdir -p "$inv/host_vars"
  echo "ansible_connection: docker" > "$inv/host_vars/$STACK_SANDBOX_NAME.yml"
  if noop_mitogen=$(ANSIBLE_STRATEGY_PLUGINS="$mitogen_dir/plugins/strategy" ANSIBLE_STRATEGY=mitogen_linear \
      timed_play "$work/noop-mitogen" playbooks/site.yml); then
    noop_mitogen_changed=$(changed_count "$work/noop-mitogen")
  else
    noop_mitogen=""  # reported as failed below; the rest of the benchmark goes on
    noop_mitogen_changed="run failed"
  fi
  rm -r "$inv/host_vars"
fi
ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a / b:.2f}" if b else "n/a")' "$1" "$2"; }

# A new release: the demo app with one more file.
cp -r examples/demo_app "$work/demo_app-v2" && date +%s > "$work/demo_app-v2/RELEASE_NOTE"
docker cp molecule/shared/files/reqloop.py "$STACK_SANDBOX_NAME:/usr/local/bin/reqloop"
ca=/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt
docker exec "$STACK_SANDBOX_NAME" systemd-run --unit=bench-loop --collect /usr/bin/python3 /usr/local/bin/reqloop \
  --url https://localhost:8443/health --cafile "$ca" --out /tmp/bench-loop.json --stop /tmp/bench-loop.stop --max-seconds 900 >/dev/null
sleep 2
redeploy=$(timed_play "$work/redeploy" playbooks/redeploy.yml -e "stack_app_source_path=$work/demo_app-v2")
sleep 3
docker exec "$STACK_SANDBOX_NAME" touch /tmp/bench-loop.stop
for _ in $(seq 1 30); do docker exec "$STACK_SANDBOX_NAME" test -f /tmp/bench-loop.json && break; sleep 1; done
loop="$(docker exec "$STACK_SANDBOX_NAME" cat /tmp/bench-loop.json)"
requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$loop")
failures=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failures"])' "$loop")

cat <<TXT

Whole-stack benchmark ($(nproc) cores, image ${STACK_SANDBOX_IMAGE:-stack-debian:12})
  cold converge of site.yml:        ${cold} s
  no-op re-run of site.yml:         ${noop} s, changed=${noop_changed} (strategy linear)
  no-op re-run, Mitogen:            ${noop_mitogen:-n/a} s, changed=${noop_mitogen_changed:-n/a}, ratio linear/Mitogen $( [ -n "$noop_mitogen" ] && ratio "$noop" "$noop_mitogen" || echo n/a)
  redeploy.yml of a new release:    ${redeploy} s, ${requests} requests through Caddy, ${failures} failed
TXT
