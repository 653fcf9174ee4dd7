#!/usr/bin/env bash
# Test runner behind `make lint|unit|molecule|test`.
#   scripts/test.sh lint | unit | molecule [SCENARIO...] | all
# Prints each step's duration and result, a summary at the end, and exits
# non-zero when any step failed. Molecule logs go to reports/molecule-*.log
# as well as to the terminal.
set -uo pipefail
cd "$(dirname "$0")/.."

# Plain output in logs and CI; colours only on a terminal.
[ -t 1 ] && [ -z "${CI:-}" ] || export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0

declare -a names=() results=() durations=()
failed=0

run_step() { # run_step NAME COMMAND...
  local name="$1"; shift
  local start=$SECONDS rc
  printf '\n=== %s ===\n' "$name"
  "$@"
  rc=$?
  local took=$((SECONDS - start))
  names+=("$name"); durations+=("$took")
  if [ "$rc" -eq 0 ]; then
    results+=("passed")
  else
    results+=("FAILED (exit $rc)")
    failed=$((failed + 1))
  fi
  printf '=== %s: %s in %ss ===\n' "$name" "${results[-1]}" "$took"
  return 0
}

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
prepare_scenario() { # prepare_scenario SCENARIO
  python - "$1" <<'PY'
import subprocess, sys, yaml
sys.path.insert(0, "molecule/shared")
import container
scenario = sys.argv[1]
own = yaml.safe_load(open(f"molecule/{scenario}/molecule.yml")) or {}
base = yaml.safe_load(open(".config/molecule/config.yml"))
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

do_molecule() { # do_molecule SCENARIO
  local scenario="$1" rc args=()
  mkdir -p reports "${STACK_CACHE_DIR:-/var/cache/ansible-stack}"
  prepare_scenario "$scenario"
  if [ -z "${STACK_ALL_RELEASES:-}" ] && [ -n "${ONE_RELEASE[$scenario]:-}" ]; then
    args=(--platform-name "${scenario}-${ONE_RELEASE[$scenario]}")
    echo "platform: ${args[1]} (STACK_ALL_RELEASES=1 for every release)"
  fi
  molecule test -s "$scenario" "${args[@]}" 2>&1 | tee "reports/molecule-${scenario}.log"
  rc=${PIPESTATUS[0]}
  return "$rc"
}

summary() {
  printf '\n=== summary ===\n'
  local i total=0 passed=0
  for i in "${!names[@]}"; do
    printf '  %-28s %-18s %5ss\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}"
    total=$((total + durations[i]))
    [ "${results[$i]}" = passed ] && passed=$((passed + 1))
  done
  printf '  %-28s %-18s %5ss\n' "total" "" "$total"
  printf 'steps: %d passed, %d failed\n' "$passed" "$failed"
}

lint_steps() {
  run_step yamllint do_yamllint
  run_step ansible-lint do_ansible_lint
}

molecule_steps() {
  local s list=("$@")
  [ "${#list[@]}" -gt 0 ] || mapfile -t list < <(scenarios)
  if [ "${#list[@]}" -eq 0 ]; then
    echo "no Molecule scenarios found" >&2
    failed=$((failed + 1))
    return
  fi
  for s in "${list[@]}"; do
    run_step "molecule:$s" do_molecule "$s"
  done
}

# Everything runs from main so that editing this file during a run is safe
# (bash has parsed the whole function before it starts).
main() {
  what="${1:-all}"; shift || true
  case "$what" in
    lint) lint_steps ;;
    unit) run_step unit do_unit ;;
    molecule) molecule_steps "$@" ;;
    all)
      lint_steps
      run_step unit do_unit
      molecule_steps
      ;;
    *) echo "usage: $0 lint|unit|molecule [SCENARIO...]|all" >&2; exit 2 ;;
  esac
  summary
  [ "$failed" -eq 0 ]
}

main "$@"
exit $?
