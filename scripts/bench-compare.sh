#!/usr/bin/env bash
# Side-by-side load runs: the same workloads, from the same load tool (crema-bench), against
# crema (1 node and 3 nodes; crema1tls and crema3tls with TLS on the RESP port and mutual TLS
# between the nodes, certificates from `crema certs init`), redis-server (no persistence, and AOF
# with fsync always) and a 3-member etcd (default, and --unsafe-no-fsync), all on 127.0.0.1. Systems alternate run by run;
# each pair of system and workload runs RUNS times. Prints one table (median and range of the
# throughput, median p50/p99, and the ratios crema/redis and crema/etcd) and, with --write,
# appends it to docs/performance.md with the machine and the date.
#
# Installs nothing: redis-server (Debian: redis-server) and etcd (Debian: etcd-server) are used
# when present; without them only crema runs.
#
#   scripts/bench-compare.sh                 # 3 runs x 10 s per workload and system
#   scripts/bench-compare.sh --short         # 1 run x 2 s: the CI smoke run
#   scripts/bench-compare.sh --runs 5 --secs 20 --write
#   (--only W4: one workload; --crema-only: skip redis and etcd; --debug: debug build)
#   CREMA_BIN_DIR=/tmp/base scripts/bench-compare.sh ...   # another build's crema and crema-bench
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
SECS=10
WARMUP=2
PROFILE=release
WRITE=0
ONLY=""
CREMA_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --short) RUNS=1; SECS=2; WARMUP=0.5 ;;
    --runs) RUNS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --debug) PROFILE=debug ;;
    --write) WRITE=1 ;;
    --only) ONLY="$2"; shift ;;
    --crema-only) CREMA_ONLY=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

FEATURES=(--features crema-server/rocksdb)
HAVE_ETCD=0
if [ "$CREMA_ONLY" = 0 ] && command -v etcd >/dev/null && command -v protoc >/dev/null; then
  HAVE_ETCD=1
  FEATURES=(--features crema-server/rocksdb,crema-bench/etcd)
fi
HAVE_REDIS=0
[ "$CREMA_ONLY" = 0 ] && command -v redis-server >/dev/null && HAVE_REDIS=1

# Link Debian's librocksdb where it is installed (as .ci/run does): building RocksDB's bundled
# C++ takes 18-30 minutes on 2 cores.
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  so="$(find /usr/lib -name 'librocksdb.so' 2>/dev/null | head -1)"
  if [ -n "$so" ]; then export ROCKSDB_LIB_DIR="${so%/*}"; fi
fi

if [ -n "${CREMA_BIN_DIR:-}" ]; then
  # An A/B run: the binaries of another build (built with the features above), not built here.
  BIN="$CREMA_BIN_DIR"
  PROFILE="$BIN"
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

wait_port() { # host:port
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  return 1
}

# --- systems: start_<name> starts it and sets ADDRS (space-separated host:port) and KIND ---

start_crema() { # nodes storage [tls] [shards]
  local n="$1" storage="$2" shards="${4:-1}" i j peers ready tls=()
  rm -rf "$WORK/crema"
  ADDRS=""
  TLS_CA=""
  if [ "${3:-}" = tls ]; then
    [ -d "$WORK/certs" ] || "$BIN/crema" certs init --dir "$WORK/certs" --nodes 3 >/dev/null
    TLS_CA="$WORK/certs/ca.crt"
  fi
  for i in $(seq 1 "$n"); do
    peers=()
    for j in $(seq 1 "$n"); do
      [ "$j" = "$i" ] || peers+=(--peer "$j=127.0.0.1:$((27000 + j)),127.0.0.1:$((26380 + j))")
    done
    if [ -n "$TLS_CA" ]; then
      tls=(--tls-cert "$WORK/certs/node-$i.crt" --tls-key "$WORK/certs/node-$i.key"
        --peer-tls-cert "$WORK/certs/node-$i.crt" --peer-tls-key "$WORK/certs/node-$i.key" --peer-tls-ca "$TLS_CA")
    fi
    "$BIN/crema" serve --node-id "$i" --raft-addr "127.0.0.1:$((27000 + i))" \
      --resp-addr "127.0.0.1:$((26380 + i))" --admin-addr "127.0.0.1:$((28000 + i))" \
      --storage "$storage" --data-dir "$WORK/crema/$i" --shards "$shards" "${peers[@]}" "${tls[@]}" >"$WORK/crema-$i.log" 2>&1 &
    PIDS+=($!)
    ADDRS="$ADDRS 127.0.0.1:$((26380 + i))"
  done
  for a in $ADDRS; do wait_port "$a"; done
  ADDRS="${ADDRS# }"
  # Ready once every node said so (`crema ready`: its shard map confirmed and a leader known of
  # every shard it serves; before that a node answers CLUSTERDOWN for the slot map, as CI saw a
  # cluster client fail to connect when only the first node was asked) and a write goes through.
  for _ in $(seq 1 300); do
    ready=0
    for i in $(seq 1 "$n"); do grep -q '^crema ready' "$WORK/crema-$i.log" && ready=$((ready + 1)); done
    if [ "$ready" = "$n" ] \
      && { ! command -v redis-cli >/dev/null || redis_cli "${ADDRS%% *}" SET ready 1 2>/dev/null | grep -q OK; }; then
      break
    fi
    sleep 0.1
  done
  [ "$ready" = "$n" ] || echo "warning: not every crema node said 'crema ready' within 30 s" >&2
  KIND=resp
}

start_redis() { # appendonly: no|always
  local args=(--port 26400 --save "" --dir "$WORK" --daemonize no)
  if [ "$1" = always ]; then args+=(--appendonly yes --appendfsync always); else args+=(--appendonly no); fi
  rm -rf "$WORK"/appendonly* "$WORK"/*.aof
  redis-server "${args[@]}" >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  ADDRS="127.0.0.1:26400"
  wait_port "$ADDRS"
  KIND=resp
}

start_etcd() { # extra flag or ""
  local i cluster=""
  rm -rf "$WORK/etcd"
  for i in 1 2 3; do cluster="$cluster,e$i=http://127.0.0.1:$((23800 + i))"; done
  cluster="${cluster#,}"
  ADDRS=""
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd/$i" \
      --listen-client-urls "http://127.0.0.1:$((23790 + i))" --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((23800 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new --log-level error $1 >"$WORK/etcd-$i.log" 2>&1 &
    PIDS+=($!)
    ADDRS="$ADDRS 127.0.0.1:$((23790 + i))"
  done
  for a in $ADDRS; do wait_port "$a"; done
  KIND=etcd
  # Ready once a member has a leader and a write commits: a short probe run without errors.
  local probe=() _
  for a in $ADDRS; do probe+=(--endpoint "$a"); done
  for _ in $(seq 1 100); do
    if "$BIN/crema-bench" etcd "${probe[@]}" --clients 1 --keys 10 --duration 0.2 --warmup 0 --json 2>/dev/null \
      | grep -q '"errors":0'; then
      return 0
    fi
    sleep 0.1
  done
  echo "etcd did not become ready" >&2
  return 1
}

# The RESP address of a crema node that leads (role master) or follows (role slave), as
# INFO replication says.
crema_node() { # master|slave
  local a
  for _ in $(seq 1 100); do
    for a in $ADDRS; do
      if redis_cli "$a" INFO replication 2>/dev/null | grep -q "^role:$1"; then echo "$a"; return 0; fi
    done
    sleep 0.1
  done
  echo "no crema node with role $1" >&2
  return 1
}

redis_cli() { # addr args...
  local addr="$1" tls=(); shift
  [ -n "${TLS_CA:-}" ] && tls=(--tls --cacert "$TLS_CA")
  if command -v redis-cli >/dev/null; then redis-cli -h "${addr%:*}" -p "${addr#*:}" "${tls[@]}" "$@"; else return 0; fi
}

# --- one measurement ---

bench() { # system-label workload-label extra crema-bench args...
  local system="$1" workload="$2"; shift 2
  local target_args=()
  local a
  if [ "$KIND" = resp ]; then
    target_args=(resp)
    for a in $ADDRS; do target_args+=(--addr "$a"); done
    [ -n "${TLS_CA:-}" ] && target_args+=(--tls-ca "$TLS_CA")
  else
    target_args=(etcd)
    for a in $ADDRS; do target_args+=(--endpoint "$a"); done
  fi
  local json
  if ! json="$("$BIN/crema-bench" "${target_args[@]}" --duration "$SECS" --warmup "$WARMUP" --json "$@" 2>"$WORK/bench.err")"; then
    echo "crema-bench failed for $system / $workload:" >&2
    { grep -q '^Error' "$WORK/bench.err" && sed -n '/^Error/,/^Stack/p' "$WORK/bench.err" | head -12 \
      || tail -5 "$WORK/bench.err"; } | sed 's/^/    /' >&2
    FAILURES=$((FAILURES + 1))
    return 0
  fi
  local ops p50 p99 errors
  ops="$(grep -o '"ops_per_sec":[0-9.]*' <<<"$json" | cut -d: -f2)"
  p50="$(grep -o '"p50_us":[0-9]*' <<<"$json" | cut -d: -f2)"
  p99="$(grep -o '"p99_us":[0-9]*' <<<"$json" | cut -d: -f2)"
  errors="$(grep -o '"errors":[0-9]*' <<<"$json" | cut -d: -f2)"
  printf '%s\t%s\t%.0f\t%s\t%s\t%s\n' "$workload" "$system" "$ops" "$p50" "$p99" "$errors" >>"$WORK/results.tsv"
  printf '  %-34s %-26s %10.0f ops/s  p50 %6s us  p99 %7s us  errors %s\n' "$workload" "$system" "$ops" "$p50" "$p99" "$errors" >&2
}

# The workloads (16-byte keys, 100-byte values, 100,000 keys): name, systems, bench arguments.
# Systems: crema1, crema3, crema3d (RocksDB), crema3s16 (16 shards), crema3ds16 (RocksDB, 16
# shards), crema1tls, crema3tls, redis, redisaof, etcd, etcdnofsync.
WORKLOADS=(
  "W1 writes, 50 clients|crema3 crema3s16 crema3tls redis etcd etcdnofsync|--clients 50"
  "W2 writes, 50 clients, pipeline 16|crema3 redis|--clients 50 --pipeline 16"
  "W3 durable writes, 50 clients|crema3d crema3ds16 redisaof etcd|--clients 50"
  "W4 linearizable reads, 50 clients|crema3 crema3s16 etcd|--clients 50 --reads 1 --preload"
  "W1 writes, 50 cluster clients|crema3 crema3s16|--clients 50 --cluster"
  "W3 durable writes, 50 cluster clients|crema3d crema3ds16|--clients 50 --cluster"
  "W4 linearizable reads, 50 cluster clients|crema3 crema3s16|--clients 50 --reads 1 --preload --cluster"
  "W5 local reads, 1 node, pipeline 16|crema1 crema1tls redis|--clients 50 --pipeline 16 --reads 1 --preload"
  "W6 90% reads zipfian, 50 clients|crema3 redis etcd|--clients 50 --reads 0.9 --distribution zipfian --preload"
  "W8 1 client SET (crema: to a follower)|crema3 redis etcd|--clients 1"
  "W8 1 client linearizable GET (crema: to a follower)|crema3 redis etcd|--clients 1 --reads 1 --preload"
  "W8 1 client SET, to the leader|crema3 crema3tls|--clients 1"
  "W8 1 client linearizable GET, to the leader|crema3|--clients 1 --reads 1 --preload"
)

start_system() {
  TLS_CA=""
  case "$1" in
    crema1) start_crema 1 memory ;;
    crema3) start_crema 3 memory ;;
    crema1tls) start_crema 1 memory tls ;;
    crema3tls) start_crema 3 memory tls ;;
    crema3d) start_crema 3 rocksdb ;;
    crema3s16) start_crema 3 memory "" 16 ;;
    crema3ds16) start_crema 3 rocksdb "" 16 ;;
    redis) start_redis no ;;
    redisaof) start_redis always ;;
    etcd) start_etcd "" ;;
    etcdnofsync) start_etcd "--unsafe-no-fsync" ;;
  esac
}

available() {
  case "$1" in
    redis*) [ "$HAVE_REDIS" = 1 ] ;;
    etcd*) [ "$HAVE_ETCD" = 1 ] ;;
    *) return 0 ;;
  esac
}

: >"$WORK/results.tsv"
FAILURES=0
for entry in "${WORKLOADS[@]}"; do
  IFS='|' read -r name systems args <<<"$entry"
  if [ -n "$ONLY" ] && [[ "$name" != "$ONLY"* ]]; then continue; fi
  echo "== $name" >&2
  for run in $(seq 1 "$RUNS"); do
    for system in $systems; do
      available "$system" || continue
      start_system "$system"
      # W8's one client talks to one crema node: a follower (each write is forwarded, and each
      # read asks the leader for a read index), or the leader, as a Redis client talks to its
      # primary.
      if [[ "$system" == crema3* ]]; then
        case "$name" in
          *"to the leader"*) ADDRS="$(crema_node master)" ;;
          *"to a follower"*) ADDRS="$(crema_node slave)" ;;
        esac
      fi
      extra=()
      # crema1 serves W5 with local reads (READONLY on each connection).
      [[ "$system" == crema1* ]] && [[ "$name" == W5* ]] && extra=(--local-reads)
      # shellcheck disable=SC2086
      bench "$system" "$name" $args "${extra[@]}"
      stop_all
    done
  done
done

# W7: the embedded API, crema only.
if [ -z "$ONLY" ] || [[ "W7" == "$ONLY"* ]]; then
  echo "== W7 embedded, 3 nodes, 64 writers" >&2
  for run in $(seq 1 "$RUNS"); do
    json="$("$BIN/crema-bench" embedded --nodes 3 --clients 64 --duration "$SECS" --warmup "$WARMUP" --json)"
    ops="$(grep -o '"ops_per_sec":[0-9.]*' <<<"$json" | cut -d: -f2)"
    p50="$(grep -o '"p50_us":[0-9]*' <<<"$json" | cut -d: -f2)"
    p99="$(grep -o '"p99_us":[0-9]*' <<<"$json" | cut -d: -f2)"
    errors="$(grep -o '"errors":[0-9]*' <<<"$json" | cut -d: -f2)"
    printf '%s\t%s\t%.0f\t%s\t%s\t%s\n' "W7 embedded, 64 writers" crema3 "$ops" "$p50" "$p99" "$errors" >>"$WORK/results.tsv"
    printf '  %-34s %-26s %10.0f ops/s  p50 %6s us  p99 %7s us\n' "W7 embedded, 64 writers" crema3 "$ops" "$p50" "$p99" >&2
  done
fi

# --- the table: median and range per workload and system, ratios against redis and etcd ---
table="$(sort -t$'\t' -k1,1 -k2,2 -k3,3n "$WORK/results.tsv" | awk -F'\t' '
  function flush() {
    if (n == 0) return
    m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    med[key] = m; lo[key] = v[1]; hi[key] = v[n]
    p50[key] = p50s[int((n + 1) / 2)]; p99[key] = p99s[int((n + 1) / 2)]; err[key] = errs
    order[++count] = key; n = 0; errs = 0
  }
  { k = $1 "\t" $2; if (k != key) { flush(); key = k }
    v[++n] = $3; p50s[n] = $4; p99s[n] = $5; errs += $6 }
  END {
    flush()
    print "| workload | system | ops/s (median) | range | p50 µs | p99 µs | errors | crema/redis | crema/etcd |"
    # p50 and p99 are those of the run with the median throughput.
    print "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= count; i++) {
      key = order[i]; split(key, parts, "\t"); w = parts[1]; s = parts[2]
      best_redis = ""; best_etcd = ""
      if (s ~ /^crema/) {
        for (j = 1; j <= count; j++) {
          split(order[j], q, "\t")
          if (q[1] != w) continue
          if (q[2] ~ /^redis/ && med[order[j]] > 0) best_redis = best_redis sprintf("%s%.2f (%s)", best_redis == "" ? "" : ", ", med[key] / med[order[j]], q[2])
          if (q[2] ~ /^etcd/ && med[order[j]] > 0) best_etcd = best_etcd sprintf("%s%.2f (%s)", best_etcd == "" ? "" : ", ", med[key] / med[order[j]], q[2])
        }
      }
      printf "| %s | %s | %.0f | %.0f–%.0f | %s | %s | %s | %s | %s |\n", w, s, med[key], lo[key], hi[key], p50[key], p99[key], err[key], best_redis, best_etcd
    }
  }')"

echo
echo "$table"

if [ "$WRITE" = 1 ]; then
  {
    echo
    echo "## Side by side: crema, redis-server, etcd ($(date -u +%Y-%m-%d))"
    echo
    echo "Command: \`scripts/bench-compare.sh --runs $RUNS --secs $SECS --write\` ($PROFILE build;"
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo),"
    echo "$(uname -sr); crema-bench: 16-byte keys, 100-byte values, 100,000 keys, warm-up ${WARMUP} s)."
    echo "Systems alternate run by run; range = lowest–highest of the runs."
    echo
    echo "$table"
  } >>docs/performance.md
  echo "appended to docs/performance.md" >&2
fi

if [ "$FAILURES" -gt 0 ]; then
  echo "$FAILURES runs failed" >&2
  exit 1
fi
