#!/usr/bin/env bash
# Container harness: make sure a Docker engine answers and the systemd base
# images exist. Used by `make test`, `make sandbox` and the benchmarks.
#
#   scripts/harness.sh engine   # start (or install and start) a Docker engine
#   scripts/harness.sh images   # build missing or outdated base images
#   scripts/harness.sh all      # both (default)
#
# The images carry a revision label (stack.image.rev); one missing or older
# than IMAGE_REV below is rebuilt (Docker's storage can outlive a change of
# this script). Raise IMAGE_REV whenever what build_image puts into the image
# changes. Revisions: 2 = apt sources like a real VPS (<release>,
# <release>-updates, <release>-security).
#
# Environment:
#   STACK_IMAGE_DEBIAN12  image name for Debian 12 (default: stack-debian:12);
#                         an image named here is built when missing but never
#                         rebuilt: an old revision only gets a warning
#   STACK_IMAGE_DEBIAN13  image name for Debian 13 (default: stack-debian:13), the same
#   STACK_EXTRA_CA_DIR    directory of extra CA certificates (*.crt) to trust
#                         inside the images (default: /usr/local/share/ca-certificates)
#   STACK_DEBOOTSTRAP_MIRROR  mirror URL for debootstrap, also the images'
#                         <release> and <release>-updates source
#                         (default: http://deb.debian.org/debian)
#   STACK_SECURITY_MIRROR  the images' <release>-security source
#                         (default: http://deb.debian.org/debian-security)
#   DOCKERD_LOG           where a dockerd started here logs (default: /var/log/dockerd.log)
set -euo pipefail

IMAGE_12="${STACK_IMAGE_DEBIAN12:-stack-debian:12}"
IMAGE_13="${STACK_IMAGE_DEBIAN13:-stack-debian:13}"
IMAGE_REV=2
MIRROR="${STACK_DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${STACK_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CA_DIR="${STACK_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"

log() { printf '[harness] %s\n' "$*" >&2; }
die() { printf '[harness] ERROR: %s\n' "$*" >&2; exit 1; }

have_apt_root() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  have_apt_root || die "need root on an apt-based system to install: $*"
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_engine() {
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  if ! have_apt_root; then
    die "no Docker engine answers 'docker info'. Start Docker (e.g. 'sudo systemctl start docker') or run this as root on Debian/Ubuntu so it can install and start docker.io."
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd in the background (log: $DOCKERD_LOG)"
    # setsid: keep the engine alive after this script (and make) exit.
    setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      log "Docker engine is up"
      return 0
    fi
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
}

# The image's stack.image.rev label (empty: no such image or no label).
image_rev() {
  docker image inspect -f '{{ index .Config.Labels "stack.image.rev" }}' "$1" 2>/dev/null || true
}

# build_image IMAGE SUITE NAMED_BY_USER(0|1)
# Builds IMAGE when it is missing, or when its revision is missing or older
# than IMAGE_REV and the name is the default one (an image the user named is
# theirs: only a warning then).
build_image() {
  local image="$1" suite="$2" named="$3" rev old_id=""
  if docker image inspect "$image" >/dev/null 2>&1; then
    rev="$(image_rev "$image")"
    if [[ "$rev" =~ ^[0-9]+$ ]] && [ "$rev" -ge "$IMAGE_REV" ]; then
      return 0
    fi
    if [ "$named" = 1 ]; then
      log "WARNING: $image (named by STACK_IMAGE_*) has image revision '${rev:-none}', this script builds $IMAGE_REV" \
          "(apt sources with $suite-updates and $suite-security); using it as it is"
      return 0
    fi
    log "$image has image revision '${rev:-none}', older than $IMAGE_REV: rebuilding it"
    old_id="$(docker image inspect -f '{{ .Id }}' "$image")"
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local root
  root="$(mktemp -d "/var/tmp/stack-rootfs-${suite}.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  log "building $image from Debian $suite with debootstrap (about a minute)"
  local start=$SECONDS
  # Packages every role needs; installing them here keeps scenarios fast.
  local include="systemd,systemd-sysv,dbus,python3,python3-apt,sudo,ca-certificates,iproute2,procps,curl,gnupg,locales"
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$root" "$MIRROR" >"$root.log" 2>&1; then
    tail -n 30 "$root.log" >&2
    die "debootstrap $suite failed (log above)"
  fi
  rm -f "$root.log"
  # apt sources as on a real Debian VPS: the release, its point-release
  # updates and its security updates (debootstrap writes only the first).
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Trust extra CAs (e.g. an HTTPS-inspecting proxy) so pip works inside.
  if [ -d "$CA_DIR" ] && compgen -G "$CA_DIR/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "$CA_DIR"/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in $suite image"
    log "trusting extra CA files from $CA_DIR"
  fi
  # A generated UTF-8 locale: PostgreSQL initdb and Python want one.
  sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' "$root/etc/locale.gen"
  chroot "$root" locale-gen >/dev/null 2>&1 || true
  # Units that make no sense in a container.
  for unit in systemd-resolved.service getty@tty1.service systemd-logind.service \
              console-getty.service systemd-firstboot.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit" 2>/dev/null || true
  done
  : > "$root/etc/machine-id"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    -c 'CMD ["/lib/systemd/systemd"]' \
    -c 'ENV container=docker' \
    -c "LABEL stack.image.rev=$IMAGE_REV" \
    - "$image" >/dev/null
  log "built $image (image revision $IMAGE_REV) in $((SECONDS - start)) s"
  # The replaced image goes, unless a container or another tag still uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{ .Id }}' "$image")" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
  fi
}

ensure_images() {
  build_image "$IMAGE_12" bookworm "$([ -n "${STACK_IMAGE_DEBIAN12:-}" ] && echo 1 || echo 0)"
  build_image "$IMAGE_13" trixie "$([ -n "${STACK_IMAGE_DEBIAN13:-}" ] && echo 1 || echo 0)"
}

case "${1:-all}" in
  engine) ensure_engine ;;
  images) ensure_engine; ensure_images ;;
  all) ensure_engine; ensure_images ;;
  *) die "usage: $0 [engine|images|all]" ;;
esac
