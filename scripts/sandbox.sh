#!/usr/bin/env bash
# The local sandbox: one systemd container holding the whole stack (groups
# db, app and web), deployed with playbooks/site.yml exactly as a VPS would be.
#   scripts/sandbox.sh up        create/start the container and converge it
#   scripts/sandbox.sh start     create/start the container only
#   scripts/sandbox.sh destroy   remove the container
#   scripts/sandbox.sh status    print URLs and health
# Caddy is published on 127.0.0.1:8080 (HTTP) and 127.0.0.1:8443 (HTTPS,
# Caddy's internal CA); PostgreSQL listens on 9991 inside the container.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME="${STACK_SANDBOX_NAME:-stack-sandbox}"
IMAGE="${STACK_SANDBOX_IMAGE:-${STACK_IMAGE_DEBIAN12:-stack-debian:12}}"
HTTP_PORT="${STACK_SANDBOX_HTTP_PORT:-8080}"
HTTPS_PORT="${STACK_SANDBOX_HTTPS_PORT:-8443}"
INVENTORY="${STACK_SANDBOX_INVENTORY:-inventories/sandbox}"
# Set to 0 to publish no port (benchmarks run beside a sandbox).
PUBLISH="${STACK_SANDBOX_PUBLISH:-1}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"

log() { printf '[sandbox] %s\n' "$*" >&2; }

container_state() {
  local state
  state="$(docker inspect -f '{{.State.Status}}' "$NAME" 2>/dev/null)" || state=missing
  echo "${state:-missing}"
}

# The container is the test scenarios' (molecule/shared/container.yml):
# container.py makes the apt (Debian 12's, shared with the one-host
# scenarios) and pip cache directories and prints the `docker run` arguments.
start_container() {
  case "$(container_state)" in
    running) return 0 ;;
    missing)
      log "starting container $NAME from $IMAGE"
      local publish=() args=() out
      [ "$PUBLISH" = 1 ] && publish=(-p "127.0.0.1:$HTTP_PORT:$HTTP_PORT" -p "127.0.0.1:$HTTPS_PORT:$HTTPS_PORT")
      out="$(python3 molecule/shared/container.py run-args "$NAME" sandbox "$IMAGE" debian12 \
        "${publish[@]}" --label stack.sandbox=true)"
      mapfile -t args <<<"$out"
      docker run -d "${args[@]}" >/dev/null ;;
    *) log "starting stopped container $NAME"; docker start "$NAME" >/dev/null ;;
  esac
  for _ in $(seq 1 60); do
    state="$(docker exec "$NAME" systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running|degraded) return 0 ;; esac
    sleep 1
  done
  log "systemd in $NAME did not come up (state: ${state:-unknown})"
  exit 1
}

# The apps' health paths from the inventory (stack_app_health_path and
# stack_app_deep_health_path, or each app's of stack_apps), /health if unset.
health_paths() {
  ansible -i "$INVENTORY" 'web[0]' -o -m ansible.builtin.debug \
    -a 'msg={{ ((stack_apps | default([]) | map(attribute="health_path", default=stack_app_health_path | default("/health")) | list)
              if stack_apps | default([]) | length > 0 else [stack_app_health_path | default("/health")])
             + ((stack_apps | default([]) | map(attribute="deep_health_path", default="") | list)
                + [stack_app_deep_health_path | default("")]) | select | list }}' 2>/dev/null \
  | python3 -c 'import json, sys; line = sys.stdin.read(); print("\n".join(json.loads(line[line.index("{"):])["msg"]))'
}

status() {
  local ca=.cache/sandbox-ca.crt path code body ok=0 lines=""
  mkdir -p .cache
  # Caddy's internal root CA, so the host can verify the sandbox's certificate.
  docker exec "$NAME" cat /var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt > "$ca" 2>/dev/null || true
  local paths
  paths="$(health_paths)" || paths=/health
  for path in $paths; do
    body="$(curl -sS --cacert "$ca" --max-time 5 -w '\n%{http_code}' "https://localhost:$HTTPS_PORT$path" 2>&1 || true)"
    code="${body##*$'\n'}"; body="${body%$'\n'*}"
    [ "$code" = 200 ] || ok=1
    lines+="$(printf '  Health %-41s https://localhost:%s%s -> %s %s' "($path):" "$HTTPS_PORT" "$path" "${code:-no answer}" "${body:0:80}")"$'\n'
  done
  local status_code
  status_code="$(curl -sS --cacert "$ca" --max-time 5 -o /dev/null -w '%{http_code}' \
    -u "status:$(cat .cache/sandbox-secrets/status_password 2>/dev/null)" "https://localhost:$HTTPS_PORT/status/" 2>/dev/null || true)"
  cat <<TXT

Sandbox is up (container: $NAME)
  App through Caddy (HTTPS):                       https://localhost:$HTTPS_PORT/
  Caddy's internal CA (to trust in a browser):     $ca   (curl --cacert $ca ...)
${lines}  Status page (user status, password in .cache/sandbox-secrets/status_password):
                                                   https://localhost:$HTTPS_PORT/status/   -> $status_code
  Prometheus / Alertmanager (inside the container): docker exec -it $NAME curl -s localhost:9090/api/v1/alerts
  Plain HTTP (redirects to HTTPS):                 http://localhost:$HTTP_PORT/
  PostgreSQL (inside the container, port 9991):    docker exec -it $NAME sudo -u postgres psql -p 9991 demo
  PgBouncer (the apps' pool, 127.0.0.1:6432):      docker exec -it $NAME pgbouncer-ctl show pools
  Logs:                                            docker exec -it $NAME journalctl -u caddy -u 'demo@*' -f
  Shell:                                           docker exec -it $NAME bash
  Re-run the deployment:                           make sandbox   (a second run changes nothing)
  Redeploy:                                        .venv/bin/ansible-playbook playbooks/redeploy.yml
  Remove it:                                       make sandbox-destroy
TXT
  return "$ok"
}

case "${1:-up}" in
  up)
    start_container
    log "deploying with playbooks/site.yml"
    ansible-playbook -i "$INVENTORY" playbooks/site.yml ${STACK_SANDBOX_ARGS:-}
    status
    ;;
  start)
    start_container
    ;;
  status) status ;;
  destroy)
    if [ "$(container_state)" != missing ]; then
      docker rm -f "$NAME" >/dev/null
      log "removed $NAME"
    else
      log "no sandbox container"
    fi
    ;;
  *) echo "usage: $0 up|start|status|destroy" >&2; exit 2 ;;
esac
