#!/usr/bin/env bash
# CPU per write with shards: starts a 3-node cluster of `crema serve --shards N` (memory
# storage, or RocksDB with --storage rocksdb), waits until every shard has a leader, runs crema-bench's W1 (50 clients, SET, 100-byte
# values, spread over the three nodes) for a window, and prints the throughput, each node's CPU
# time per 1,000 writes, how many shards each node leads, and how many writes a proposal batch
# holds and how many Raft messages a write costs (the nodes' counters over the window). With --reads, W4 instead: the keys
# are written first, then the 50 clients make linearizable GETs (CPU per 1,000 reads).
#
#   scripts/cpu-per-write.sh [--shards 16] [--secs 10] [--storage rocksdb] [--reads] [--debug]
#   CREMA_BIN_DIR=/tmp/base scripts/cpu-per-write.sh ...   # another build's crema and crema-bench
#   scripts/cpu-per-write.sh --perf /tmp/node1.data ...     # also `perf record` the three nodes over the window
#   scripts/cpu-per-write.sh --syscalls ...                 # also count the three nodes' syncs and socket calls
#   scripts/cpu-per-write.sh --cluster ...                  # cluster clients: each key straight to its shard's leader
#   scripts/cpu-per-write.sh --clients 400 ...              # more clients (more writes in flight per shard)
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=16
SECS=10
PROFILE=release
READS=0
CLIENTS=50
while [ $# -gt 0 ]; do
  case "$1" in
    --shards) SHARDS="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --storage) STORAGE="$2"; shift 2 ;;
    --reads) READS=1; shift ;;
    --debug) PROFILE=debug; shift ;;
    --perf) PERF_OUT="$2"; shift 2 ;;
    --syscalls) SYSCALLS=1; shift ;;
    --cluster) CLUSTER=1; shift ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
STORAGE="${STORAGE:-memory}"
if [ -n "${CREMA_BIN_DIR:-}" ]; then
  DIR="$CREMA_BIN_DIR"
else
  BUILD=()
  [ "$PROFILE" = release ] && BUILD=(--release)
  cargo build -q "${BUILD[@]}" -p crema-server -p crema-bench --features crema-server/rocksdb
  DIR="target/$PROFILE"
fi
BIN="$DIR/crema"
# shellcheck source=lib/three-nodes.sh
source scripts/lib/three-nodes.sh
sleep 4 # let the elections and the leader balancer settle
HZ="$(getconf CLK_TCK)"
leads() { # node -> shards it leads, from INFO shards on node 1
  redis-cli -p 46381 INFO shards 2>/dev/null | grep -c "leader=$1," || true
}
TARGET=(resp --addr 127.0.0.1:46381 --addr 127.0.0.1:46382 --addr 127.0.0.1:46383)
[ -n "${CLUSTER:-}" ] && TARGET+=(--cluster)
OP=writes
if [ "$READS" = 1 ]; then
  OP=reads
  # The keys are written first, so that the measured window holds reads only.
  "$DIR/crema-bench" --clients "$CLIENTS" --reads 1 --duration 0.1 --warmup 0 "${TARGET[@]}" --preload >/dev/null 2>&1
fi
"$DIR/crema-bench" --clients "$CLIENTS" --reads "$READS" --duration "$((SECS + 2))" "${TARGET[@]}" >"$WORK/bench.log" 2>&1 &
BENCH=$!
sleep 1 # the bench's own warm-up second is not counted
switches() { # pid -> context switches of all its threads so far
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
counters() { # -> Raft messages sent, proposal batches, proposed entries: summed over the nodes
  for i in 1 2 3; do curl -s "http://127.0.0.1:$((48000 + i))/metrics"; done | awk '
    /^crema_raft_messages_sent_total / { m += $2 } /^crema_raft_proposal_batches_total / { b += $2 }
    /^crema_raft_proposed_entries_total / { e += $2 } END { printf "%d %d %d\n", m, b, e }'
}
read -r msg_before batch_before entry_before < <(counters)
idle() { # -> the machine's idle and total clock ticks so far, from /proc/stat
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat
}
read -r idle_before total_before < <(idle)
bench_before="$(ticks "$BENCH")"
before=()
sw_before=()
for pid in "${PIDS[@]}"; do before+=("$(ticks "$pid")"); sw_before+=("$(switches "$pid")"); done
if [ -n "${SYSCALLS:-}" ]; then
  events=syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
  perf stat -x, -e "$events" -p "$(IFS=,; echo "${PIDS[*]}")" -o "$WORK/syscalls.csv" -- sleep "$SECS" 2>/dev/null
elif [ -n "${PERF_OUT:-}" ]; then
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$(IFS=,; echo "${PIDS[*]}")" -o "$PERF_OUT" -- sleep "$SECS" 2>/dev/null
else
  sleep "$SECS"
fi
read -r msg_after batch_after entry_after < <(counters)
read -r idle_after total_after < <(idle)
# (the load tool may have ended already when a profiler held the window open: then 0)
bench_used="$(($(ticks "$BENCH" 2>/dev/null || echo "$bench_before") - bench_before))"
used=()
sw=()
for k in 0 1 2; do
  used+=($(($(ticks "${PIDS[$k]}") - before[k])))
  sw+=($(($(switches "${PIDS[$k]}") - sw_before[k])))
done
wait "$BENCH"
ops="$(grep -o '[0-9]* ops/s' "$WORK/bench.log" | head -1 | cut -d' ' -f1)"
echo "W$([ "$READS" = 1 ] && echo 4 || echo 1) with $SHARDS shards ($STORAGE): $ops $OP/s ($(grep -o 'p50 [0-9]* µs' "$WORK/bench.log"))"
for k in 0 1 2; do
  awk -v u="${used[$k]}" -v hz="$HZ" -v s="$SECS" -v ops="$ops" -v op="$OP" -v n="$((k + 1))" -v l="$(leads $((k + 1)))" -v sw="${sw[$k]}" \
    'BEGIN { printf "node %d: %.1f%% of one core, %.1f ms CPU per 1,000 %s, %.2f context switches per %s, leads %d shards\n", n, 100 * u / hz / s, 1000 * 1000 * u / hz / s / ops, op, sw / s / ops, substr(op, 1, length(op) - 1), l }'
done
awk -v u="$bench_used" -v hz="$HZ" -v s="$SECS" -v ops="$ops" -v op="$OP" -v i="$((idle_after - idle_before))" -v t="$((total_after - total_before))" \
  'BEGIN { printf "load tool: %.1f%% of one core, %.1f ms CPU per 1,000 %s; the machine idle %.1f%% of the window\n", 100 * u / hz / s, 1000 * 1000 * u / hz / s / ops, op, 100 * i / t }'
if [ "$READS" = 0 ]; then
  awk -v m="$((msg_after - msg_before))" -v b="$((batch_after - batch_before))" -v e="$((entry_after - entry_before))" \
    'BEGIN { if (b > 0 && e > 0) printf "all nodes: %.2f writes per proposal batch, %.2f Raft messages per write\n", e / b, m / e }'
fi
if [ -n "${SYSCALLS:-}" ]; then
  grep -v '^#' "$WORK/syscalls.csv" | awk -F, -v s="$SECS" -v ops="$ops" -v op="${OP%s}" 'NF > 2 && $1 ~ /^[0-9]+$/ {
    split($3, e, "sys_enter_"); printf "%s per %s, all nodes: %.3f\n", e[2], op, $1 / s / ops }'
fi
