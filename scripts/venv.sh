#!/usr/bin/env bash
# Create or refresh the controller virtualenv from requirements.txt.
# Writes a stamp with the requirements' hash; make calls this only when
# requirements.txt is newer than the stamp, and the hash check keeps a
# touched-but-unchanged file from reinstalling.
set -euo pipefail
venv="${1:-.venv}"
python="${2:-python3}"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  touch "$stamp"
  exit 0
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "[venv] ERROR: $python has no venv module; install python3-venv" >&2
    exit 1
  fi
fi
echo "[venv] installing requirements.txt into $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$stamp"
echo "[venv] ready" >&2
