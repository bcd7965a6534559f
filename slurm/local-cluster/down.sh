#!/usr/bin/env bash
# Stop what up.sh started, by the pids it recorded, newest first.
set -u
STATE=${ROADMAP_SLURM_STATE:-/var/tmp/roadmap-slurm}
[ -s "$STATE/pids" ] || { echo "[slurm down] nothing recorded in $STATE/pids"; exit 0; }
tac "$STATE/pids" | while read -r name pid; do
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "[slurm down] stopped $name ($pid)"
  fi
done
: > "$STATE/pids"
