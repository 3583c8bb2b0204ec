#!/usr/bin/env bash
# Profiles one crema node under a crema-bench workload with `perf` (Debian's linux-perf) and
# prints where its CPU time goes: the hottest functions (self time) and the hottest call chains
# (time including callees).
#
#   scripts/profile.sh w1 [seconds]   3 nodes, memory, 50 clients writing; profiles the leader
#   scripts/profile.sh w4 [seconds]   3 nodes, memory, 50 clients, linearizable reads; the leader
#   scripts/profile.sh w5 [seconds]   1 node, 50 clients, pipeline 16, local reads (READONLY)
#
# Needs a release build (`cargo build --release -p crema-server -p crema-bench`; `CREMA_BIN_DIR`
# points at another directory of the two binaries, to profile an older build) and `perf`.
# This VM has no hardware counters, so it samples the `cpu-clock` software event. The load
# generator runs on the same 2 cores as the nodes: the profile shows each function's share of
# the profiled node's time, which is what the fixes change.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOAD="${1:-w1}"
SECS="${2:-10}"
BIN="${CREMA_BIN_DIR:-target/release}"
WORK="$(mktemp -d /tmp/crema-profile.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

for tool in perf "$BIN/crema" "$BIN/crema-bench"; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool" >&2; exit 1; }
done

start_nodes() { # count
  local n="$1" i j peers
  ADDRS=()
  for i in $(seq 1 "$n"); do
    peers=()
    for j in $(seq 1 "$n"); do
      [ "$j" = "$i" ] || peers+=(--peer "$j=127.0.0.1:$((37000 + j)),127.0.0.1:$((36380 + j))")
    done
    "$BIN/crema" serve --node-id "$i" --raft-addr "127.0.0.1:$((37000 + i))" \
      --resp-addr "127.0.0.1:$((36380 + i))" --admin-addr "127.0.0.1:$((38000 + i))" \
      "${peers[@]}" >"$WORK/crema-$i.log" 2>&1 &
    PIDS+=($!)
    ADDRS+=("127.0.0.1:$((36380 + i))")
  done
}

# The node whose `INFO replication` says it leads; its process id.
leader_pid() {
  local i
  for _ in $(seq 1 100); do
    for i in "${!ADDRS[@]}"; do
      local a="${ADDRS[$i]}"
      if redis-cli -h "${a%:*}" -p "${a#*:}" INFO replication 2>/dev/null | grep -q '^role:master'; then
        echo "${PIDS[$i]}"
        return 0
      fi
    done
    sleep 0.1
  done
  echo "no leader" >&2
  return 1
}

bench_args=()
PRELOAD=0
case "$WORKLOAD" in
  w1)
    start_nodes 3
    bench_args=(--clients 50)
    ;;
  w4)
    start_nodes 3
    bench_args=(--clients 50 --reads 1)
    PRELOAD=1
    ;;
  w5)
    start_nodes 1
    bench_args=(--local-reads --clients 50 --pipeline 16 --reads 1)
    PRELOAD=1
    ;;
  *) echo "unknown workload $WORKLOAD (w1, w4 or w5)" >&2; exit 2 ;;
esac
PID="$(leader_pid)"
target=(resp)
for a in "${ADDRS[@]}"; do target+=(--addr "$a"); done
# --local-reads is an option of the resp target: it goes right after it.
if [ "${bench_args[0]}" = --local-reads ]; then
  target+=(--local-reads)
  bench_args=("${bench_args[@]:1}")
fi
# Keys are written before the profiled run, so that the samples hold none of it.
if [ "$PRELOAD" = 1 ]; then
  "$BIN/crema-bench" "${target[@]}" --clients 50 --reads 1 --preload --duration 0.1 --warmup 0 >/dev/null 2>&1
fi
"$BIN/crema-bench" "${target[@]}" "${bench_args[@]}" --duration "$((SECS + 2))" --warmup 1 >"$WORK/bench.txt" 2>&1 &
BENCH=$!
sleep 2
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$PID" -o "$WORK/perf.data" -- sleep "$SECS" 2>"$WORK/perf.err"
wait "$BENCH" || true
echo "== $WORKLOAD: crema-bench"
cat "$WORK/bench.txt"
echo "== $WORKLOAD: hottest functions, self time (% of the profiled node's samples)"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -E "^ +[0-9]" | head -40 || true
echo "== $WORKLOAD: time including callees"
perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E "^ +[0-9]" | head -60 || true
echo "(perf data kept in $WORK/perf.data)"
