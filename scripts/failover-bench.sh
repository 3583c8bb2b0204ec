#!/usr/bin/env bash
# Write latency across a leader kill: three `crema serve` processes on 127.0.0.1, an open-loop
# write load (crema-bench, SET) through the two followers, and a SIGKILL of the leader a few
# seconds into the measured window. Open loop, so a stalled write is counted from when it was
# due, and the writes queued behind it are too. Each run starts a fresh cluster; prints one
# line per run (time to any answer, errors included: p50, p99, max; successes; errors by kind)
# and, with --json, crema-bench's whole report.
#
#   scripts/failover-bench.sh                       # 5 runs, memory storage
#   scripts/failover-bench.sh --runs 3 --storage rocksdb
#   CREMA_BIN_DIR=/tmp/base scripts/failover-bench.sh   # another build's crema and crema-bench
#   (--rate OPS, --clients N, --secs S (measured), --kill-at S (into the window), --debug)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5
STORAGE=memory
RATE=2000
CLIENTS=40
SECS=12
KILL_AT=3
PROFILE=release
JSON=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --storage) STORAGE="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --kill-at) KILL_AT="$2"; shift ;;
    --debug) PROFILE=debug ;;
    --json) JSON=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
command -v redis-cli >/dev/null || { echo "redis-cli is needed (Debian: redis-tools)" >&2; exit 2; }

FEATURES=()
if [ "$STORAGE" = rocksdb ]; then
  FEATURES=(--features crema-server/rocksdb)
  if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
    so="$(find /usr/lib -name 'librocksdb.so' 2>/dev/null | head -1)"
    if [ -n "$so" ]; then export ROCKSDB_LIB_DIR="${so%/*}"; fi
  fi
fi
if [ -n "${CREMA_BIN_DIR:-}" ]; then
  BIN="$CREMA_BIN_DIR"
else
  BUILD=()
  [ "$PROFILE" = release ] && BUILD=(--release)
  echo "== building ($PROFILE)" >&2
  cargo build -q "${BUILD[@]}" -p crema-server -p crema-bench "${FEATURES[@]}"
  BIN="target/$PROFILE"
fi

WORK="$(mktemp -d)"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

resp() { echo "127.0.0.1:$((26480 + $1))"; }

start_cluster() {
  local i j peers
  rm -rf "$WORK/data"
  PIDS=()
  for i in 1 2 3; do
    peers=()
    for j in 1 2 3; do
      [ "$j" = "$i" ] || peers+=(--peer "$j=127.0.0.1:$((27100 + j)),$(resp "$j")")
    done
    "$BIN/crema" serve --node-id "$i" --raft-addr "127.0.0.1:$((27100 + i))" --resp-addr "$(resp "$i")" \
      --admin-addr "127.0.0.1:$((28100 + i))" --storage "$STORAGE" --data-dir "$WORK/data/$i" "${peers[@]}" \
      >"$WORK/node-$i.log" 2>&1 &
    PIDS+=($!)
  done
}

# The node (1-3) whose INFO replication says it leads, once a write has gone through.
leader() {
  local i a
  for _ in $(seq 1 200); do
    for i in 1 2 3; do
      a="$(resp "$i")"
      if redis-cli -h "${a%:*}" -p "${a#*:}" SET failover-probe 1 >/dev/null 2>&1 \
        && redis-cli -h "${a%:*}" -p "${a#*:}" INFO replication 2>/dev/null | grep -q '^role:master'; then
        echo "$i"
        return 0
      fi
    done
    sleep 0.05
  done
  echo "no leader" >&2
  return 1
}

field() { grep -o "\"$1\":[0-9.]*" <<<"$2" | cut -d: -f2; }
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }

printf 'run  leader  answer p50 ms  p99 ms  max ms   ok      errors by kind\n'
for run in $(seq 1 "$RUNS"); do
  start_cluster
  lead="$(leader)"
  addrs=()
  for i in 1 2 3; do [ "$i" = "$lead" ] || addrs+=(--addr "$(resp "$i")"); done
  "$BIN/crema-bench" resp "${addrs[@]}" --clients "$CLIENTS" --rate "$RATE" --duration "$SECS" --warmup 1 \
    --keys 10000 --timeout 30 --json >"$WORK/report.json" 2>"$WORK/bench.err" &
  bench=$!
  sleep "$(awk -v k="$KILL_AT" 'BEGIN { print k + 1 }')"
  kill -9 "${PIDS[$((lead - 1))]}"
  wait "$bench" 2>/dev/null || { cat "$WORK/bench.err" >&2; exit 1; }
  json="$(cat "$WORK/report.json")"
  kinds="$(grep -o '"error_kinds":{[^}]*}' <<<"$json" | sed 's/"error_kinds"://; s/[{}"]//g; s/,/ /g')"
  printf '%-4s %-7s %13s %7s %7s %7s  %s\n' "$run" "$lead" "$(ms "$(field answer_p50_us "$json")")" \
    "$(ms "$(field answer_p99_us "$json")")" "$(ms "$(field answer_max_us "$json")")" "$(field ops "$json")" "${kinds:--}"
  [ "$JSON" = 1 ] && echo "$json"
  stop_all
done
