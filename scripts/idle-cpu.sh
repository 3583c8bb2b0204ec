#!/usr/bin/env bash
# Idle cost of shards: starts a 3-node cluster of `crema serve --shards N` (memory storage, no
# traffic), waits until every shard has a leader, then reads each process's CPU time over a
# window and prints it as a percentage of one core.
#
#   scripts/idle-cpu.sh [--shards 256] [--secs 20] [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=256
SECS=20
PROFILE=release
while [ $# -gt 0 ]; do
  case "$1" in
    --shards) SHARDS="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BUILD=()
[ "$PROFILE" = release ] && BUILD=(--release)
cargo build -q "${BUILD[@]}" -p crema-server
BIN="target/$PROFILE/crema"
# shellcheck source=lib/three-nodes.sh
source scripts/lib/three-nodes.sh
sleep 2 # let the elections' aftermath settle
HZ="$(getconf CLK_TCK)"
before=()
for pid in "${PIDS[@]}"; do before+=("$(ticks "$pid")"); done
sleep "$SECS"
total=0
for k in 0 1 2; do
  used=$(($(ticks "${PIDS[$k]}") - before[k]))
  pct="$(awk -v u="$used" -v hz="$HZ" -v s="$SECS" 'BEGIN { printf "%.2f", 100 * u / hz / s }')"
  echo "node $((k + 1)): $pct% of one core ($SHARDS shard replicas, idle, $SECS s)"
  total=$((total + used))
done
awk -v u="$total" -v hz="$HZ" -v s="$SECS" 'BEGIN { printf "mean per node: %.2f%% of one core\n", 100 * u / hz / s / 3 }'
