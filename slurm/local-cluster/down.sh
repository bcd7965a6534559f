#!/usr/bin/env bash
# Stop what up.sh started, by the pids and names it recorded, newest first: daemons, node namespaces, the bridge,
# the lines it added to /etc/hosts.
set -u
STATE=${ROADMAP_SLURM_STATE:-/var/tmp/roadmap-slurm}
[ -s "$STATE/pids" ] || { echo "[slurm down] nothing recorded in $STATE/pids"; exit 0; }
tac "$STATE/pids" | while read -r name what; do
  case "$name" in
    netns) ip netns pids "$what" 2>/dev/null | xargs -r kill 2>/dev/null; ip netns del "$what" && echo "[slurm down] removed netns $what" ;;
    bridge) ip link del "$what" && echo "[slurm down] removed bridge $what" ;;
    hosts) sed -i '/# roadmap-local-cluster$/d' "$what" && echo "[slurm down] removed the nodes from $what" ;;
    *)
      pid=$what
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "[slurm down] stopped $name ($pid)"
      fi ;;
  esac
done
: > "$STATE/pids"
