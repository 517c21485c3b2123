#!/usr/bin/env bash
# Stop the Docker engine started by scripts/start-dockerd.sh (by its pidfile; nothing else is touched).
set -euo pipefail
run=${FCN_DOCKER_RUN:-/run/fcn8s-docker}
pidfile="$run/docker.pid"
[ -f "$pidfile" ] || { echo "no dockerd pidfile at $pidfile: nothing to stop" >&2; exit 0; }
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "dockerd $pid still running after 30 s; sending KILL" >&2
    kill -KILL "$pid"
  fi
fi
rm -f "$pidfile"
echo "dockerd $pid stopped" >&2
