# Sourced by scripts/idle-cpu.sh and scripts/cpu-per-write.sh: a 3-node cluster of
# `crema serve --shards $SHARDS` on fixed 127.0.0.1 ports (RESP 46381-46383), killed on exit, and
# `ticks PID` (the process's CPU time in clock ticks).
#
# Needs: BIN (the crema binary), SHARDS, and the caller's `set -euo pipefail`; STORAGE (memory,
# the default, or rocksdb: each node's data in the script's temporary directory).
# NODE_WORKERS, if set: the nodes' tokio worker threads (TOKIO_WORKER_THREADS; default one per core).

WORK="$(mktemp -d)"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

for i in 1 2 3; do
  peers=()
  for j in 1 2 3; do
    [ "$j" = "$i" ] || peers+=(--peer "$j=127.0.0.1:$((47000 + j)),127.0.0.1:$((46380 + j))")
  done
  storage=()
  [ "${STORAGE:-memory}" = rocksdb ] && storage=(--storage rocksdb --data-dir "$WORK/data-$i")
  env ${NODE_WORKERS:+TOKIO_WORKER_THREADS=$NODE_WORKERS} "$BIN" serve --node-id "$i" --raft-addr "127.0.0.1:$((47000 + i))" --resp-addr "127.0.0.1:$((46380 + i))" \
    --admin-addr "127.0.0.1:$((48000 + i))" --shards "$SHARDS" "${storage[@]}" "${peers[@]}" >"$WORK/crema-$i.log" 2>&1 &
  PIDS+=($!)
done
# Ready: every node printed its `crema ready` line (a leader of every shard is known).
for _ in $(seq 1 600); do
  ready=0
  for i in 1 2 3; do grep -q '^crema ready' "$WORK/crema-$i.log" && ready=$((ready + 1)); done
  [ "$ready" = 3 ] && break
  sleep 0.1
done
[ "$ready" = 3 ] || { echo "the cluster did not become ready" >&2; exit 1; }

ticks() { # pid -> utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
