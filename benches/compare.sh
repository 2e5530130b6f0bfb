#!/usr/bin/env bash
# chanhub vs NATS, side by side on this machine (issue 4).
#
# Builds chanhub and the load generator in release, then for every scenario
# starts each broker fresh (auth on, default limits: chanhub derives its
# connection limit from the open-file limit, raised below),
# pinned to CPU 0, runs the generator pinned to CPU 1, stops the broker, and
# finally prints one markdown table with medians and chanhub/NATS ratios.
# Loopback only; every run stops by itself in under a minute and a half.
#
#   bash benches/compare.sh            # 3 rounds, full counts (~15 min)
#   bash benches/compare.sh --quick    # 1 round, small counts (~3 min)
#   bash benches/compare.sh --runs 1 --only fanout,latency
#   bash benches/compare.sh --quick --only fanout,tasks,cluster
#   bash benches/compare.sh --quick --only calls   # request/reply (issue 16)
#   CHANHUB_BIN=/tmp/chanhub-old BROKERS=chanhub bash benches/compare.sh \
#     --only fanout,latency,patterns,idle   # an older build, chanhub only
#
# --only takes a comma-separated list of: fanout, latency, load, patterns,
# idle, sse, connect, tasks, calls, cluster.
#
# `load` is fan-out at a fixed offered rate (issue 19): 1 → 1,000 at 1M and
# 2M deliveries/s, 1 → 5,000 at 2M, 5 s each; delivered/s, p50…p99.9 and
# both brokers' CPU in the same run.
#
# CHANHUB_BIN runs that chanhub binary instead of building one (to compare
# two builds on one machine); BROKERS (default "chanhub nats") picks which
# brokers each scenario runs.
#
# `cluster` runs chanhub as three nodes on one redis-server (engine = redis):
# fan-out with the subscribers spread over the three nodes and the publisher
# on the first, and task round trips with the submitter on the first node
# and the workers on the other two; reported beside the single-node figures.
#
# Results (one JSON line per run) are kept in target/loadgen/. The hubs
# listen from port 17070 on (BENCH_PORT_BASE=... to move them when another
# benchmark on the machine uses those ports).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
RUNS=3
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; RUNS=1 ;;
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  FANOUT_SMALL=100; FANOUT_LARGE=500; LATENCY_SUBS=100; LATENCY_SECS=3
  PATTERN_CONNS=1000; IDLE_CONNS=1000; SSE_SUBS=100; CONNECT_CONNS=1000; TASK_SECS=2
  CALLS_ONE=5000; CALLS_MANY=100000; CALL_SECS=2
  LOAD_RATE_1M=1000; LOAD_RATE_2M=2000; LOAD_RATE_LARGE=400; LOAD_SECS=2
  SEARCH=(--step-secs 1 --drain-secs 1 --budget-secs 20)
else
  FANOUT_SMALL=1000; FANOUT_LARGE=5000; LATENCY_SUBS=1000; LATENCY_SECS=10
  PATTERN_CONNS=10000; IDLE_CONNS=10000; SSE_SUBS=1000; CONNECT_CONNS=10000; TASK_SECS=5
  CALLS_ONE=20000; CALLS_MANY=1000000; CALL_SECS=5
  LOAD_RATE_1M=1000; LOAD_RATE_2M=2000; LOAD_RATE_LARGE=400; LOAD_SECS=5
  SEARCH=(--step-secs 2 --drain-secs 2 --budget-secs 40)
fi

# 10,000 client connections need as many descriptors in the generator (and
# in the broker, which inherits this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 200)) ]; then
  echo "warning: ulimit -n is $(ulimit -n); the ${IDLE_CONNS}-connection scenarios will fail" >&2
fi

if [[ -z "$ONLY" || ",$ONLY," == *",cluster,"* ]] && ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y redis-server
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "== installing nats-server" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y nats-server
fi

echo "== building (release)" >&2
[ -n "${CHANHUB_BIN:-}" ] || cargo build --release --bin chanhub >&2
LOADGEN=$(cargo bench --bench loadgen --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/.*Executable .*(\(.*loadgen-[0-9a-f]*\)).*/\1/p' | tail -1)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
CHANHUB="${CHANHUB_BIN:-$TARGET_DIR/release/chanhub}"
BROKERS="${BROKERS:-chanhub nats}"
[ -x "$LOADGEN" ] || { echo "could not find the loadgen binary" >&2; exit 1; }

if [ "$(nproc)" -ge 2 ]; then
  BROKER_PIN=(taskset -c 0)
  GEN_PIN=(taskset -c 1)
else
  echo "warning: one CPU; broker and generator share it" >&2
  BROKER_PIN=()
  GEN_PIN=()
fi

WORK=$(mktemp -d)
OUT_DIR="$TARGET_DIR/loadgen"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: > "$RESULTS"
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
NATS_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
CH_PORT=${BENCH_PORT_BASE:-17070}
NATS_PORT=17222
NATS_WS_PORT=17080
BROKER_PID=""
REDIS_PORT=$((CH_PORT + 309))
CLUSTER_PIDS=()

cleanup() {
  stop_broker
  stop_cluster
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "broker did not open port $1" >&2
  return 1
}

start_chanhub() {
  local data
  data=$(mktemp -d -p "$WORK")
  CHANHUB_AUTH__SECRET="$SECRET" CHANHUB_DATA_DIR="$data" \
    CHANHUB_LOG__LEVEL=warn \
    "${BROKER_PIN[@]}" "$CHANHUB" serve --listen "127.0.0.1:$CH_PORT" >>"$WORK/chanhub.log" 2>&1 &
  BROKER_PID=$!
  wait_port "$CH_PORT"
  ADDR="127.0.0.1:$CH_PORT"
  export LOADGEN_SECRET="$SECRET"
}

start_nats() {
  cat >"$WORK/nats.conf" <<EOF
listen: "127.0.0.1:$NATS_PORT"
authorization { token: "$NATS_TOKEN" }
websocket { listen: "127.0.0.1:$NATS_WS_PORT", no_tls: true }
EOF
  "${BROKER_PIN[@]}" nats-server -c "$WORK/nats.conf" >>"$WORK/nats.log" 2>&1 &
  BROKER_PID=$!
  wait_port "$NATS_WS_PORT"
  ADDR="127.0.0.1:$NATS_WS_PORT"
  export LOADGEN_SECRET="$NATS_TOKEN"
}

stop_broker() {
  [ -n "$BROKER_PID" ] || return 0
  kill -TERM "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

# Three chanhub nodes (ports CH_PORT..CH_PORT+2) on a fresh redis-server,
# all pinned beside each other like the single broker.
start_cluster() {
  "${BROKER_PIN[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no >>"$WORK/redis.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  wait_port "$REDIS_PORT"
  local i port data
  for i in 0 1 2; do
    port=$((CH_PORT + i))
    data=$(mktemp -d -p "$WORK")
    CHANHUB_AUTH__SECRET="$SECRET" CHANHUB_DATA_DIR="$data" \
      CHANHUB_LOG__LEVEL=warn CHANHUB_TASKS__DURABLE=false \
      "${BROKER_PIN[@]}" "$CHANHUB" serve --listen "127.0.0.1:$port" \
      --engine redis --redis-url "redis://127.0.0.1:$REDIS_PORT" >>"$WORK/chanhub.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    [ "$i" = 0 ] && BROKER_PID=$!
    wait_port "$port"
  done
  # Ready: every node reaches Redis.
  for i in 0 1 2; do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$((CH_PORT + i))/readyz" >/dev/null && break
      sleep 0.1
    done
  done
  ADDR="127.0.0.1:$CH_PORT"
  export LOADGEN_SECRET="$SECRET"
}

stop_cluster() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CLUSTER_PIDS=()
  BROKER_PID=""
}

# run_cluster all|workers <loadgen subcommand and arguments…>: subscribers
# (all) or workers (workers: nodes 2 and 3) spread over the nodes.
run_cluster() {
  local which=$1
  shift
  start_cluster
  local spread=(--spread "127.0.0.1:$((CH_PORT + 1))" --spread "127.0.0.1:$((CH_PORT + 2))")
  [ "$which" = all ] && spread=(--spread "127.0.0.1:$CH_PORT" "${spread[@]}")
  echo "-- $(date +%T) chanhub, 3 nodes + redis: $*" >&2
  if ! timeout 100 "${GEN_PIN[@]}" "$LOADGEN" "$@" --broker chanhub --addr "$ADDR" \
    --pid "$BROKER_PID" "${spread[@]}" --out "$RESULTS"; then
    echo "!! run failed: cluster $*" >&2
  fi
  stop_cluster
}

# run <broker> <loadgen subcommand and arguments…>: one run on a fresh broker.
run() {
  local broker=$1
  shift
  "start_$broker"
  echo "-- $(date +%T) $broker: $*" >&2
  if ! timeout 100 "${GEN_PIN[@]}" "$LOADGEN" "$@" --broker "$broker" --addr "$ADDR" \
    --pid "$BROKER_PID" --out "$RESULTS"; then
    echo "!! run failed: $broker $*" >&2
  fi
  stop_broker
}

# The loopback floor of a one-at-a-time call: two raw TCP round trips
# between the generator's core and a tokio echo server on the broker's core.
floor() {
  "${BROKER_PIN[@]}" "$LOADGEN" floor echo --listen "127.0.0.1:$((CH_PORT + 400))" &
  local echo_pid=$!
  wait_port $((CH_PORT + 400))
  timeout 60 "${GEN_PIN[@]}" "$LOADGEN" floor ping --addr "127.0.0.1:$((CH_PORT + 400))" \
    --round-trips 2 --ops "$CALLS_ONE" | tee -a "$WORK/floor.txt" >&2 || echo "!! floor failed" >&2
  kill "$echo_pid" 2>/dev/null || true
  wait "$echo_pid" 2>/dev/null || true
}

wanted() {
  [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]
}

both() {
  local scenario=$1
  shift
  wanted "$scenario" || return 0
  local broker
  for broker in $BROKERS; do
    run "$broker" "$@"
  done
}

START=$(date +%s)
for round in $(seq "$RUNS"); do
  echo "== round $round of $RUNS" >&2
  both fanout fanout --subs "$FANOUT_SMALL" "${SEARCH[@]}"
  both fanout fanout --subs "$FANOUT_LARGE" "${SEARCH[@]}"
  both latency latency --subs "$LATENCY_SUBS" --rate 100 --secs "$LATENCY_SECS"
  both load load --subs "$FANOUT_SMALL" --rate "$LOAD_RATE_1M" --secs "$LOAD_SECS"
  both load load --subs "$FANOUT_SMALL" --rate "$LOAD_RATE_2M" --secs "$LOAD_SECS"
  both load load --subs "$FANOUT_LARGE" --rate "$LOAD_RATE_LARGE" --secs "$LOAD_SECS"
  both patterns patterns --conns "$PATTERN_CONNS" "${SEARCH[@]}"
  both idle idle --conns "$IDLE_CONNS"
  if wanted sse; then run chanhub fanout --sse --subs "$SSE_SUBS" "${SEARCH[@]}"; fi
  both connect connect --conns "$CONNECT_CONNS"
  both tasks tasks --workers 8 --window 64 --secs "$TASK_SECS"
  # Calls: (a) one caller, one server, one call at a time, CALLS_ONE calls
  # (10 s at most); (b) one caller keeping 64 calls in flight, 4 servers,
  # CALL_SECS seconds (or CALLS_MANY calls).
  both calls calls --servers 1 --callers 1 --window 1 --calls "$CALLS_ONE" --secs 10
  both calls calls --servers 4 --callers 1 --window 64 --calls "$CALLS_MANY" --secs "$CALL_SECS"
  if wanted calls; then floor; fi
  if wanted cluster; then
    run_cluster all fanout --subs "$FANOUT_SMALL" "${SEARCH[@]}"
    run_cluster workers tasks --workers 8 --window 64 --secs "$TASK_SECS"
  fi
done

echo
echo "## chanhub vs NATS — $(date -u +%Y-%m-%d)"
echo
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
  "$(nats-server --version); $(rustc --version | cut -d' ' -f1-2);" \
  "$RUNS round(s)$([ "$QUICK" = 1 ] && echo ', --quick counts'); $(( $(date +%s) - START ))s."
echo
"$LOADGEN" report "$RESULTS"
if [ -s "$WORK/floor.txt" ]; then
  echo
  echo "One-at-a-time calls cannot beat the machine's loopback floor (two round"
  echo "trips, no broker; medians are not taken, one line per round):"
  echo
  sed 's/^/    /' "$WORK/floor.txt"
fi
echo
echo "Results: $RESULTS" >&2
