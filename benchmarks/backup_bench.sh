#!/usr/bin/env bash
# Benchmark of the backups role (a script, not a test).
#
# Inside a container converged by the Molecule scenario (PostgreSQL on port
# 9991 plus the backups role), generate `pgbench -i -s 50` (about 750 MB),
# then time, in the same invocation and alternating ROUNDS times:
#   - bare:  pg_dump -Fc of the database
#   - role:  the role's backup run without verification (the installed
#            runner: snapshot row counts, pg_dump -Fc with the role's
#            compression, globals, sha256 files, manifest, rename)
# and once the role's verification of that set (checksum, pg_restore into a
# scratch database, per-table row counts). Prints the times and role/bare.
#
#   molecule converge -s backups      # once, to have the container
#   benchmarks/backup_bench.sh        # BENCH_CONTAINER=backups-debian13 for PostgreSQL 17
#
# Environment: BENCH_CONTAINER (default backups-debian12), BENCH_SCALE (50),
# BENCH_ROUNDS (4), BENCH_KEEP=1 keeps the bench database afterwards,
# BENCH_REUSE=1 reuses a kept one instead of generating it again.
set -euo pipefail
shopt -s inherit_errexit

container="${BENCH_CONTAINER:-backups-debian12}"
scale="${BENCH_SCALE:-50}"
rounds="${BENCH_ROUNDS:-4}"
keep="${BENCH_KEEP:-0}"
reuse="${BENCH_REUSE:-0}"

if ! docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null | grep -qx true; then
  echo "container $container is not running: run 'molecule converge -s backups' first" >&2
  exit 2
fi

in_container() { docker exec -i "$container" bash -euo pipefail -c "$1"; }

# Seconds (with milliseconds) taken by a command run inside the container.
timed() {
  local ms
  ms=$(in_container "start=\$(date +%s%N); $1 >/dev/null; end=\$(date +%s%N); echo \$(( (end - start) / 1000000 ))")
  awk -v ms="$ms" 'BEGIN { printf "%.2f", ms / 1000 }'
}

bindir=$(in_container 'python3 -c "import json; print(json.load(open(\"/etc/backups/config.json\"))[\"bin_dir\"])"')
pg="runuser -u postgres --"
conn="-h /var/run/postgresql -p 9991"

cleanup() {
  in_container "rm -rf /var/backups/bench /var/lib/backups/bench-*"
  if [ "$keep" != 1 ]; then
    in_container "$pg $bindir/dropdb $conn --if-exists bench" || true
  fi
}
trap cleanup EXIT

echo "container: $container, PostgreSQL bin: $bindir, pgbench scale $scale, rounds $rounds"
if [ "$reuse" = 1 ] && in_container "$pg psql -X -At $conn -d bench -c 'SELECT 1' >/dev/null 2>&1"; then
  echo "reusing the existing bench database"
else
  in_container "$pg $bindir/dropdb $conn --if-exists bench; $pg $bindir/createdb $conn bench"
  init=$(timed "$pg $bindir/pgbench $conn -i -q -s $scale bench 2>/dev/null")
  printf 'pgbench -i -s %s: %.1f s\n' "$scale" "$init"
fi
size=$(in_container "$pg psql -X -At $conn -d bench -c \"SELECT pg_size_pretty(pg_database_size('bench'))\"")
echo "database size: $size"

# The role's runner with the installed configuration, pointed at the bench
# database and a separate directory and status file.
in_container "python3 - <<'PY'
import json
cfg = json.load(open('/etc/backups/config.json'))
cfg.update(databases=['bench'], dir='/var/backups/bench/role', status_file='/var/lib/backups/bench-status.json',
           lock_file='/var/lib/backups/bench-lock', offsite_rsync=None, offsite_rclone=None, checkin_url='')
with open('/var/lib/backups/bench-config.json', 'w') as handle:
    json.dump(cfg, handle)
PY
install -d -o postgres -g postgres -m 0700 /var/backups/bench /var/backups/bench/role
chown postgres:postgres /var/lib/backups/bench-config.json"
runner="$pg /usr/bin/python3 /usr/local/lib/backups/backup.py --config /var/lib/backups/bench-config.json"

declare -a bare_t=() role_t=()
for round in $(seq 1 "$rounds"); do
  in_container "rm -f /var/backups/bench/bare.dump; rm -rf /var/backups/bench/role/2*"
  # Alternate which goes first so neither always gets the warmer cache.
  if [ $((round % 2)) -eq 1 ]; then
    b=$(timed "$pg $bindir/pg_dump $conn -Fc -f /var/backups/bench/bare.dump bench")
    r=$(timed "$runner run --no-verify --no-offsite --no-retention")
  else
    r=$(timed "$runner run --no-verify --no-offsite --no-retention")
    b=$(timed "$pg $bindir/pg_dump $conn -Fc -f /var/backups/bench/bare.dump bench")
  fi
  bare_t+=("$b"); role_t+=("$r")
  printf 'round %s: bare pg_dump -Fc %.1f s, role run (no verification) %.1f s\n' "$round" "$b" "$r"
done
bare_size=$(in_container "stat -c %s /var/backups/bench/bare.dump")
role_size=$(in_container "cat /var/backups/bench/role/2*/bench.dump | wc -c")
verify=$(timed "$runner verify")
summary=$(python3 - "${bare_t[*]}" "${role_t[*]}" <<'PY'
import statistics, sys
bare = [float(x) for x in sys.argv[1].split()]
role = [float(x) for x in sys.argv[2].split()]
print(f"{statistics.median(bare):.1f} {statistics.median(role):.1f} {statistics.median(role) / statistics.median(bare):.3f}")
PY
)
read -r bare_med role_med ratio <<<"$summary"
echo
echo "=== backup benchmark ($container, pgbench -s $scale, $size) ==="
printf '  %-44s %8s s  (%s bytes)\n' "bare pg_dump -Fc (median)" "$bare_med" "$bare_size"
printf '  %-44s %8s s  (%s bytes)\n' "role run without verification (median)" "$role_med" "$role_size"
printf '  %-44s %8.1f s\n' "verification (checksum, restore, row counts)" "$verify"
printf '  %-44s %8s    (target <= 1.15)\n' "ratio role/bare" "$ratio"
