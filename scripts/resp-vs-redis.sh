#!/usr/bin/env bash
# redis-benchmark against `crema serve` (one node, in memory, default linearizable reads) and
# against Debian's redis-server on the same machine, in one run; prints each figure and the ratio.
#
#   scripts/resp-vs-redis.sh [requests] [rounds]      (defaults: 200000 requests, 3 rounds)
#
# Needs redis-server and redis-tools (apt-get install redis-server redis-tools). Builds crema in
# release mode first. Ports: crema 16380 (Raft 19000, admin 19090), redis-server 16399.
#
# With two or more cores, both servers are pinned to the last core and redis-benchmark to the
# first (taskset): redis-server is single-threaded, so each server gets the same one core and
# the load generator does not steal from either. PIN=0 turns that off.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
rounds=${2:-3}

cargo build --release -q -p crema-server
server_cpu="" bench_cpu=""
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  server_cpu="taskset -c $(($(nproc) - 1))"
  bench_cpu="taskset -c 0"
fi
$server_cpu ./target/release/crema serve --resp-addr 127.0.0.1:16380 --raft-addr 127.0.0.1:19000 \
  --admin-addr 127.0.0.1:19090 >/dev/null 2>&1 &
crema_pid=$!
$server_cpu redis-server --port 16399 --save '' --appendonly no >/dev/null 2>&1 &
redis_pid=$!
trap 'kill $crema_pid $redis_pid 2>/dev/null || true' EXIT
for port in 16380 16399; do
  for _ in $(seq 100); do redis-cli -p $port PING >/dev/null 2>&1 && break; sleep 0.1; done
done

rps() { # port test pipeline
  $bench_cpu redis-benchmark -p "$1" -t "$2" -n "$requests" -P "$3" -q 2>/dev/null | tr '\r' '\n' \
    | awk -v t="$(echo "$2" | tr a-z A-Z)" '$1 == t":" { print int($2) }' | tail -1
}

echo "pinning: servers '${server_cpu:-none}', redis-benchmark '${bench_cpu:-none}'"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "redis-benchmark -n $requests, 50 clients; crema vs $(redis-server --version | awk '{print $1, $3}')"
for pipeline in 16 1; do
  for test in set get; do
    for round in $(seq "$rounds"); do
      r=$(rps 16399 $test $pipeline)
      c=$(rps 16380 $test $pipeline)
      awk -v t=$test -v p=$pipeline -v n=$round -v r="$r" -v c="$c" \
        'BEGIN { printf "%-3s -P %-2s round %d: redis %9d ops/s  crema %9d ops/s  ratio %.2f\n", toupper(t), p, n, r, c, c / r }'
    done
  done
done
