#!/usr/bin/env bash
# Durable writes: a 3-node `crema serve --storage rocksdb` cluster (every write fsynced on a
# majority before it is answered) against `redis-server --appendonly yes --appendfsync always`
# (every write fsynced on one machine), and a 3-node memory cluster for reference. Same machine,
# redis-benchmark SET with 64 clients, no pipelining, sent to the crema leader.
#
#   scripts/durable-vs-redis-aof.sh [requests]     (default 50000)
#
# Needs redis-server, redis-tools and librocksdb-dev (see the README); builds crema in release
# mode with the rocksdb feature. Ports 17380-17382 (RESP), 19100-19102 (Raft), 17399 (redis).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-50000}
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-$(dirname "$(find /usr/lib -name 'librocksdb.so' | head -1)")}"
cargo build --release -q -p crema-server --features rocksdb
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_cluster() { # storage
  pids=()
  for i in 1 2 3; do
    local peers=()
    for j in 1 2 3; do
      [ "$i" = "$j" ] || peers+=(--peer "$j=127.0.0.1:$((19099 + j)),127.0.0.1:$((17379 + j))")
    done
    ./target/release/crema serve --node-id "$i" --resp-addr "127.0.0.1:$((17379 + i))" \
      --raft-addr "127.0.0.1:$((19099 + i))" --admin-addr 127.0.0.1:0 --storage "$1" \
      --data-dir "$work/$1/node$i" "${peers[@]}" >/dev/null 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 100); do
    for port in 17380 17381 17382; do
      if redis-cli -p $port INFO raft 2>/dev/null | grep -q 'raft_role:Leader'; then leader=$port; return; fi
    done
    sleep 0.1
  done
  echo "no leader" >&2; exit 1
}

rps() { redis-benchmark -p "$1" -t set -c 64 -n "$requests" -q 2>/dev/null | tr '\r' '\n' | awk '$1 == "SET:" { print int($2) }' | tail -1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); redis-benchmark -t set -c 64 -n $requests"
start_cluster rocksdb
echo "crema 3 nodes rocksdb (leader $leader): $(rps "$leader") SET/s"
kill "${pids[@]}"; wait 2>/dev/null || true
start_cluster memory
echo "crema 3 nodes memory  (leader $leader): $(rps "$leader") SET/s"
kill "${pids[@]}"; wait 2>/dev/null || true
pids=()
redis-server --port 17399 --appendonly yes --appendfsync always --dir "$work" --save '' >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p 17399 PING >/dev/null 2>&1 && break; sleep 0.1; done
echo "redis-server appendfsync always:        $(rps 17399) SET/s"
