#!/usr/bin/env bash
# Release virtualenv benchmark (prints figures; it asserts nothing): what a
# release build with unchanged requirements does, a new virtualenv installed
# from the wheelhouse with no network, with pip (what app_service runs) and
# with uv, three times each, in a throwaway Debian 12 container with the
# shared caches. Requirements: examples/demo_app/requirements.txt.
#   make bench-venv      or      benchmarks/venv_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${STACK_IMAGE_DEBIAN12:-stack-debian:12}"
CACHE="${STACK_CACHE_DIR:-/var/cache/ansible-stack}"
NAME=stack-venv-bench
mkdir -p "$CACHE/apt/debian12/archives" "$CACHE/apt/debian12/lists" "$CACHE/pip"
docker rm -f "$NAME" >/dev/null 2>&1 || true
trap 'docker rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$NAME" \
  -v "$CACHE/apt/debian12/archives:/var/cache/apt/archives" \
  -v "$CACHE/apt/debian12/lists:/var/lib/apt/lists" \
  -v "$CACHE/pip:/var/cache/stack-pip" \
  -v "$PWD/examples/demo_app/requirements.txt:/tmp/requirements.txt:ro" \
  "$IMAGE" sleep infinity >/dev/null
docker exec "$NAME" sh -c 'apt-get install -y -qq --no-install-recommends python3-venv >/dev/null 2>&1 \
  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null)'
# The wheelhouse app_service keeps for this Python and requirements set
# (filled here as the role fills it, when missing); uv from PyPI, cached.
docker exec "$NAME" sh -ec '
  key=$(python3 -c "import hashlib, sys; print(\"cp%d%d-%s\" % (sys.version_info[0], sys.version_info[1], hashlib.sha256(open(\"/tmp/requirements.txt\", \"rb\").read()).hexdigest()[:16]))")
  wh=/var/cache/stack-pip/wheelhouse/$key
  python3 -m venv /tmp/tools
  /tmp/tools/bin/pip install -q --cache-dir /var/cache/stack-pip/http uv
  [ -d "$wh" ] || /tmp/tools/bin/pip wheel -q --cache-dir /var/cache/stack-pip/http --wheel-dir "$wh" -r /tmp/requirements.txt
  echo "$wh" > /tmp/wheelhouse'
run() { # run LABEL COMMAND -> seconds (best of three, each into a fresh directory)
  local best=""
  for i in 1 2 3; do
    t=$(docker exec "$NAME" bash -c "rm -rf /tmp/v; s=\$(date +%s.%N); $2 >/dev/null; e=\$(date +%s.%N); echo \"\$e - \$s\" | bc")
    best=$(python3 -c 'import sys; v=[float(x) for x in sys.argv[1:] if x]; print(f"{min(v):.2f}")' "$t" $best)
  done
  echo "$best"
}
docker exec "$NAME" sh -c 'command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null'
WH="\$(cat /tmp/wheelhouse)"
pip_s=$(run pip "python3 -m venv /tmp/v && /tmp/v/bin/python -m pip install --no-input --quiet --no-index --find-links $WH -r /tmp/requirements.txt")
uv_s=$(run uv "/tmp/tools/bin/uv venv -q --python /usr/bin/python3 /tmp/v && UV_CACHE_DIR=/var/cache/stack-pip/uv /tmp/tools/bin/uv pip install -q --python /tmp/v/bin/python --no-index --find-links $WH -r /tmp/requirements.txt")
uvc_s=$(run uv-nocache "/tmp/tools/bin/uv venv -q --python /usr/bin/python3 /tmp/v && /tmp/tools/bin/uv pip install -q --no-cache --python /tmp/v/bin/python --no-index --find-links $WH -r /tmp/requirements.txt")
count=$(docker exec "$NAME" sh -c 'ls "$(cat /tmp/wheelhouse)" | wc -l')
cat <<REPORT

Release virtualenv benchmark (2 cores, image $IMAGE, $(date +%F)), $count wheels of examples/demo_app, no network, best of 3
  python3 -m venv + pip install (app_service today): ${pip_s} s
  uv venv + uv pip install (uv cache warm):          ${uv_s} s, ratio $(python3 -c "print(f'{$pip_s/$uv_s:.2f}')")
  uv venv + uv pip install --no-cache:               ${uvc_s} s, ratio $(python3 -c "print(f'{$pip_s/$uvc_s:.2f}')")
REPORT
