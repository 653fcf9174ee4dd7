#!/usr/bin/env bash
# The local sandbox: one systemd container holding the whole stack (groups
# db, app and web), deployed with playbooks/site.yml exactly as a VPS would be.
#   scripts/sandbox.sh up        create/start the container and converge it
#   scripts/sandbox.sh destroy   remove the container
#   scripts/sandbox.sh status    print URLs and health
# Caddy is published on 127.0.0.1:8080 (HTTP) and 127.0.0.1:8443 (HTTPS,
# Caddy's internal CA); PostgreSQL listens on 9991 inside the container.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME="${STACK_SANDBOX_NAME:-stack-sandbox}"
IMAGE="${STACK_SANDBOX_IMAGE:-${STACK_IMAGE_DEBIAN12:-stack-debian:12}}"
CACHE="${STACK_CACHE_DIR:-/var/cache/ansible-stack}"
HTTP_PORT="${STACK_SANDBOX_HTTP_PORT:-8080}"
HTTPS_PORT="${STACK_SANDBOX_HTTPS_PORT:-8443}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"

log() { printf '[sandbox] %s\n' "$*" >&2; }

container_state() { docker inspect -f '{{.State.Status}}' "$NAME" 2>/dev/null || echo missing; }

start_container() {
  case "$(container_state)" in
    running) return 0 ;;
    missing)
      log "starting container $NAME from $IMAGE"
      docker run -d --name "$NAME" --hostname sandbox \
        --cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined \
        --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
        --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
        -v "$CACHE/apt/debian12/archives:/var/cache/apt/archives" \
        -v "$CACHE/apt/debian12/lists:/var/lib/apt/lists" \
        -v "$CACHE/pip:/var/cache/stack-pip" \
        -p "127.0.0.1:$HTTP_PORT:$HTTP_PORT" -p "127.0.0.1:$HTTPS_PORT:$HTTPS_PORT" \
        --label stack.sandbox=true \
        "$IMAGE" /lib/systemd/systemd >/dev/null ;;
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

status() {
  local health db
  health="$(curl -sk --max-time 5 "https://127.0.0.1:$HTTPS_PORT/health" || true)"
  db="$(curl -sk --max-time 5 "https://127.0.0.1:$HTTPS_PORT/health/db" || true)"
  cat <<TXT

Sandbox is up (container: $NAME)
  App through Caddy (HTTPS, Caddy's internal CA):  https://127.0.0.1:$HTTPS_PORT/
  Health:                                          https://127.0.0.1:$HTTPS_PORT/health    -> ${health:-no answer}
  Database health:                                 https://127.0.0.1:$HTTPS_PORT/health/db -> ${db:-no answer}
  Plain HTTP (redirects to HTTPS):                 http://127.0.0.1:$HTTP_PORT/
  PostgreSQL (inside the container, port 9991):    docker exec -it $NAME sudo -u postgres psql -p 9991 app
  Logs:                                            docker exec -it $NAME journalctl -u caddy -u 'demo@*' -f
  Shell:                                           docker exec -it $NAME bash
  Re-run the deployment:                           make sandbox   (a second run changes nothing)
  Redeploy:                                        .venv/bin/ansible-playbook playbooks/redeploy.yml
  Remove it:                                       make sandbox-destroy
TXT
  [ -n "$health" ] && [ -n "$db" ]
}

case "${1:-up}" in
  up)
    mkdir -p "$CACHE/apt/debian12/archives" "$CACHE/apt/debian12/lists" "$CACHE/pip"
    start_container
    log "deploying with playbooks/site.yml"
    ansible-playbook -i inventories/sandbox playbooks/site.yml ${STACK_SANDBOX_ARGS:-}
    status
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
  *) echo "usage: $0 up|status|destroy" >&2; exit 2 ;;
esac
