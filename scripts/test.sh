#!/usr/bin/env bash
# Test runner behind `make lint|unit|molecule|test`.
#   scripts/test.sh lint | unit | molecule [SCENARIO...] | all
# Runs the steps in lanes side by side (STACK_TEST_LANES, default 2; see
# run_steps), prints each step's output when it ends, then each step's result,
# duration and lane, the sum and the wall-clock total; exits non-zero when any
# step failed. Logs stay in reports/ (molecule-SCENARIO.log, step-NAME.log).
set -uo pipefail
cd "$(dirname "$0")/.."

# Plain output in logs and CI; colours only on a terminal.
[ -t 1 ] && [ -z "${CI:-}" ] || export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0

declare -a names=() results=() durations=() step_lanes=()
wall_start=$SECONDS
failed=0

do_yamllint() { yamllint --strict . ; }
do_ansible_lint() { ansible-lint --profile production --strict --nocolor -q ; }
do_unit() {
  python -m pytest -q -p no:cacheprovider tests/unit
}

scenarios() {
  local d
  for d in molecule/*/molecule.yml; do
    [ -f "$d" ] && basename "$(dirname "$d")"
  done
}

# Before `molecule create`: remove containers left by an interrupted run
# (Docker's storage can outlive the machine's processes; create would reuse
# them), and create the shared cache directories the platforms mount (their
# containers completed from molecule/shared/container.yml, as the scenario's
# create step does).
# A scenario that proves nothing fails here: one without tests (Molecule
# says "Skipping, no tests found" and succeeds) or whose test sequence has no
# verify.
prepare_scenario() { # prepare_scenario SCENARIO
  python - "$1" <<'PY'
import glob, subprocess, sys, yaml
sys.path.insert(0, "molecule/shared")
import container
scenario = sys.argv[1]
own = yaml.safe_load(open(f"molecule/{scenario}/molecule.yml")) or {}
base = yaml.safe_load(open(".config/molecule/config.yml"))
sequence = (own.get("scenario") or {}).get("test_sequence") or (base.get("scenario") or {}).get("test_sequence") or []
problems = (["its test_sequence has no verify"] if "verify" not in sequence else []) + (
    [f"it has no tests (molecule/{scenario}/tests/test_*.py)"]
    if not glob.glob(f"molecule/{scenario}/tests/test_*.py") else [])
if problems:
    sys.exit(f"scenario {scenario}: {' and '.join(problems)}: it would pass proving nothing")
for platform in own.get("platforms") or base["platforms"]:
    spec = container.complete(container.expand(platform, scenario))
    if subprocess.run(["docker", "inspect", spec["name"]], capture_output=True).returncode == 0:
        print(f"removing stale container {spec['name']}")
        subprocess.run(["docker", "rm", "-f", spec["name"]], check=True, capture_output=True)
    container.make_cache_dirs(spec)
PY
}

# One Debian release per role scenario: the whole-stack scenarios run every
# role on the other one too (default and apps on Debian 12, fleet on 13).
# base and app_service keep both hosts: base's firewall tests talk from one
# to the other, and app_service's tests give each host another variant of a
# failure (hand edit vs stale record, recorded vs unrecorded schema head).
# STACK_ALL_RELEASES=1 runs every platform of every scenario.
declare -A ONE_RELEASE=([postgresql]=debian13 [caddy]=debian12)

do_molecule() { # do_molecule SCENARIO (output: reports/molecule-SCENARIO.log)
  local scenario="$1" args=()
  mkdir -p reports "${STACK_CACHE_DIR:-/var/cache/ansible-stack}"
  prepare_scenario "$scenario"
  if [ -z "${STACK_ALL_RELEASES:-}" ] && [ -n "${ONE_RELEASE[$scenario]:-}" ]; then
    args=(--platform-name "${scenario}-${ONE_RELEASE[$scenario]}")
    echo "platform: ${args[1]} (STACK_ALL_RELEASES=1 for every release)"
  fi
  local out rc
  out=$(mktemp)
  molecule test -s "$scenario" "${args[@]}" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ] && grep -q "Skipping, no tests found" "$out"; then
    echo "scenario $scenario: Molecule found no tests to verify; failing the step" >&2
    rc=1
  fi
  rm -f "$out"
  return "$rc"
}

# Steps run side by side in STACK_TEST_LANES lanes (default 2). A scenario's
# time goes mostly to waiting (request loops across restarts, alert and timer
# tests, systemd start-ups), so two lanes on a 2-core machine finish well
# before one would. Each lane takes the next step from one queue: the longest
# scenario first (the seconds below, from the last full run, only order the
# queue), then the lint and unit steps, then the other scenarios, longest
# first. A lane exports STACK_TEST_LANE: lanes 2+ keep their own copies of the
# shared apt caches (container.py), as apt locks them. Each step's output goes
# to reports/step-NAME.log (molecule-SCENARIO.log for a scenario) and is
# printed whole when the step ends, so lanes do not interleave their lines.
declare -A EXPECTED=([fleet]=900 [app_service]=680 [apps]=680 [default]=460 [postgresql]=460
                     [backups]=290 [monitoring]=280 [base]=130 [caddy]=110)

step_log() { # step_log NAME
  case "$1" in
    molecule:*) echo "reports/molecule-${1#molecule:}.log" ;;
    *) echo "reports/step-$1.log" ;;
  esac
}

step_command() { # step_command NAME: the function behind a step
  case "$1" in
    yamllint) do_yamllint ;;
    ansible-lint) do_ansible_lint ;;
    unit) do_unit ;;
    molecule:*) do_molecule "${1#molecule:}" ;;
  esac
}

queue_next() { # queue_next QUEUE: pop the queue's first line (empty when done)
  local queue="$1"
  (
    flock -x 9
    head -n 1 "$queue"
    sed -i 1d "$queue"
  ) 9>"$queue.lock"
}

lane() { # lane NUMBER QUEUE RESULTS: run steps until the queue is empty
  local number="$1" queue="$2" results_file="$3" name log start rc took
  export STACK_TEST_LANE="$number"
  while name=$(queue_next "$queue") && [ -n "$name" ]; do
    log=$(step_log "$name")
    start=$SECONDS
    printf '=== %s: started in lane %s ===\n' "$name" "$number"
    step_command "$name" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    (
      flock -x 9
      printf '\n=== %s (lane %s) ===\n' "$name" "$number"
      cat "$log"
      printf '=== %s: %s in %ss ===\n' "$name" "$([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)")" "$took"
      printf '%s %s %s %s\n' "$name" "$rc" "$took" "$number" >>"$results_file"
    ) 9>"$queue.print"
  done
}

run_steps() { # run_steps STEP...: in lanes, then record each step's result
  local queue results_file lanes="${STACK_TEST_LANES:-2}" i name rc took number
  mkdir -p reports
  queue=$(mktemp reports/.queue.XXXXXX)
  results_file=$(mktemp reports/.results.XXXXXX)
  printf '%s\n' "$@" >"$queue"
  [ "$lanes" -ge 1 ] || lanes=1
  [ "$lanes" -le "$#" ] || lanes=$#
  echo "steps: $*"
  echo "lanes: $lanes (STACK_TEST_LANES)"
  for ((i = 1; i <= lanes; i++)); do
    lane "$i" "$queue" "$results_file" &
  done
  wait
  for name in "$@"; do
    if read -r _ rc took number < <(grep -m1 "^$name " "$results_file"); then
      names+=("$name"); durations+=("$took"); step_lanes+=("$number")
      if [ "$rc" -eq 0 ]; then results+=("passed"); else results+=("FAILED (exit $rc)"); failed=$((failed + 1)); fi
    else
      names+=("$name"); durations+=(0); step_lanes+=("-"); results+=("NOT RUN"); failed=$((failed + 1))
    fi
  done
  rm -f "$queue" "$queue.lock" "$queue.print" "$results_file"
}

ordered_scenarios() { # ordered_scenarios [SCENARIO...]: longest expected first
  local s list=("$@")
  [ "${#list[@]}" -gt 0 ] || mapfile -t list < <(scenarios)
  for s in "${list[@]}"; do
    printf '%s %s\n' "${EXPECTED[$s]:-300}" "$s"
  done | sort -k1,1nr -k2 | awk '{print "molecule:" $2}'
}

summary() {
  printf '\n=== summary ===\n'
  local i total=0 passed=0
  for i in "${!names[@]}"; do
    printf '  %-24s %-18s %6ss  lane %s\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}" "${step_lanes[$i]}"
    total=$((total + durations[i]))
    [ "${results[$i]}" = passed ] && passed=$((passed + 1))
  done
  printf '  %-24s %-18s %6ss\n' "sum of steps" "" "$total"
  printf '  %-24s %-18s %6ss  (%s lanes)\n' "total (wall clock)" "" "$((SECONDS - wall_start))" "${STACK_TEST_LANES:-2}"
  printf 'steps: %d passed, %d failed\n' "$passed" "$failed"
}

# Everything runs from main so that editing this file during a run is safe
# (bash has parsed the whole function before it starts).
main() {
  local what="${1:-all}" list=()
  shift || true
  wall_start=$SECONDS
  case "$what" in
    lint) run_steps yamllint ansible-lint ;;
    unit) run_steps unit ;;
    molecule)
      mapfile -t list < <(ordered_scenarios "$@")
      [ "${#list[@]}" -gt 0 ] || { echo "no Molecule scenarios found" >&2; exit 1; }
      run_steps "${list[@]}"
      ;;
    all)
      mapfile -t list < <(ordered_scenarios)
      [ "${#list[@]}" -gt 0 ] || { echo "no Molecule scenarios found" >&2; exit 1; }
      # The longest scenario first, then lint and unit (early feedback), then the rest.
      run_steps "${list[0]}" yamllint ansible-lint unit "${list[@]:1}"
      ;;
    *) echo "usage: $0 lint|unit|molecule [SCENARIO...]|all" >&2; exit 2 ;;
  esac
  summary
  [ "$failed" -eq 0 ]
}

main "$@"
exit $?
