#!/usr/bin/env bash
# Start a private Docker engine for local image tests on a machine without one (CI included).
# Installs Debian's docker.io when dockerd is missing, then starts
#   dockerd --iptables=false --bridge=none
# with its own data root (kept between runs, so built images and layers are cached), exec root,
# pidfile and socket. Containers must use host networking with this engine (there is no bridge).
# Prints the DOCKER_HOST to use on stdout; progress goes to stderr. Idempotent: an engine already
# started by this script is reused. Stop it with scripts/stop-dockerd.sh.
set -euo pipefail

root=${FCN_DOCKER_ROOT:-/var/lib/fcn8s-docker}   # images, layers, build cache (persistent)
run=${FCN_DOCKER_RUN:-/run/fcn8s-docker}         # socket, pidfile, containerd state (short path)
sock="unix://$run/docker.sock"

log() { printf '%s\n' "$*" >&2; }

if ! command -v dockerd >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { log "dockerd is missing and installing it needs root"; exit 1; }
  log "installing docker.io (Debian) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq docker.io >&2
fi

if [ -f "$run/docker.pid" ] && kill -0 "$(cat "$run/docker.pid")" 2>/dev/null \
   && DOCKER_HOST=$sock docker version >/dev/null 2>&1; then
  log "reusing dockerd (pid $(cat "$run/docker.pid"))"
  echo "$sock"
  exit 0
fi

# A previous engine that was killed (not stopped) leaves pidfiles behind; neither process runs now.
rm -f "$run/docker.pid" "$run/exec/containerd/containerd.pid"
mkdir -p "$root" "$run"
log "starting dockerd (data root $root, log $run/dockerd.log) ..."
setsid dockerd --iptables=false --bridge=none --ip-forward=false --ip-masq=false \
  --data-root "$root" --exec-root "$run/exec" --pidfile "$run/docker.pid" --host "$sock" \
  >"$run/dockerd.log" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  if DOCKER_HOST=$sock docker version >/dev/null 2>&1; then
    log "dockerd ready (pid $(cat "$run/docker.pid"))"
    echo "$sock"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 30 s; last log lines:"
tail -n 20 "$run/dockerd.log" >&2
exit 1
