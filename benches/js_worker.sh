#!/usr/bin/env bash
# The JavaScript package's task worker beside the Rust client's (issue 18):
# tasks/s end to end with one worker of `slots` slots and an echo handler,
# the durable task store off.
#
# For every round and each worker: a fresh `chanhub serve` (release,
# CHANHUB_TASKS__DURABLE=false) pinned to CPU 0; one worker pinned to CPU 1
# — `node benches/js-worker/worker.mjs` (the package from src/web/client,
# Node with `ws`) or `loadgen worker` (chanhub::client, each task completed
# in a tokio task); then `loadgen tasks --workers 0` on CPU 1 keeps
# `window` tasks in flight (task:submit → task:assign → task:complete →
# task:result) for `secs` seconds against whichever worker is connected.
# The worker's CPU time is read from /proc before and after.
#
#   bash benches/js_worker.sh                  # 3 rounds of 10 s each (~2 min after the build)
#   bash benches/js_worker.sh --runs 1 --secs 3
#
# Prints a markdown table of medians; the JSON lines of every run are kept
# in target/loadgen/js-worker-<time>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
SECS=10
SLOTS=64
WINDOW=128
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --slots) SLOTS="$2"; shift ;;
    --window) WINDOW="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

echo "== building (release)" >&2
[ -n "${CHANHUB_BIN:-}" ] || cargo build --release --bin chanhub >&2
LOADGEN=$(cargo bench --bench loadgen --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/.*Executable .*(\(.*loadgen-[0-9a-f]*\)).*/\1/p' | tail -1)
[ -x "$LOADGEN" ] || { echo "could not find the loadgen binary" >&2; exit 1; }
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
CHANHUB="${CHANHUB_BIN:-$TARGET_DIR/release/chanhub}"
[ -d benches/js-worker/node_modules/ws ] || npm ci --prefix benches/js-worker --no-audit --no-fund >&2
if [ "$(nproc)" -ge 2 ]; then
  HUB_PIN=(taskset -c 0)
  CLIENT_PIN=(taskset -c 1)
else
  echo "warning: one CPU; hub, worker and generator share it" >&2
  HUB_PIN=()
  CLIENT_PIN=()
fi

WORK=$(mktemp -d)
OUT_DIR="$TARGET_DIR/loadgen"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/js-worker-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: > "$RESULTS"
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PORT=${BENCH_PORT_BASE:-17070}
ADDR="127.0.0.1:$PORT"
HUB_PID=""
WORKER_PID=""
TICKS=$(getconf CLK_TCK)

stop() {
  local pid
  for pid in $WORKER_PID $HUB_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $WORKER_PID $HUB_PID; do wait "$pid" 2>/dev/null || true; done
  WORKER_PID=""
  HUB_PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "the hub did not open port $1" >&2
  return 1
}

# CPU seconds (user + system) of process $1 so far.
cpu_secs() {
  awk -v t="$TICKS" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}

# run <js|rust>: one run on a fresh hub; appends the loadgen line and the
# worker's CPU seconds to $WORK/<kind>.
run() {
  local kind=$1 data log
  data=$(mktemp -d -p "$WORK")
  CHANHUB_AUTH__SECRET="$SECRET" CHANHUB_DATA_DIR="$data" CHANHUB_TASKS__DURABLE=false \
    CHANHUB_LOG__LEVEL=warn "${HUB_PIN[@]}" "$CHANHUB" serve --listen "$ADDR" >>"$WORK/hub.log" 2>&1 &
  HUB_PID=$!
  wait_port "$PORT"
  log="$WORK/worker-$kind.log"
  : > "$log"
  if [ "$kind" = js ]; then
    "${CLIENT_PIN[@]}" node benches/js-worker/worker.mjs "ws://$ADDR/ws" "$SECRET" "$SLOTS" >"$log" 2>&1 &
  else
    LOADGEN_SECRET="$SECRET" "${CLIENT_PIN[@]}" "$LOADGEN" worker --broker chanhub --addr "$ADDR" \
      --slots "$SLOTS" >"$log" 2>&1 &
  fi
  WORKER_PID=$!
  for _ in $(seq 100); do
    grep -q '^registered' "$log" && break
    sleep 0.1
  done
  grep -q '^registered' "$log" || { echo "the $kind worker did not register:" >&2; cat "$log" >&2; exit 1; }
  local before after line
  before=$(cpu_secs "$WORKER_PID")
  echo "-- $(date +%T) $kind worker, $SLOTS slots, $WINDOW in flight, ${SECS}s" >&2
  LOADGEN_SECRET="$SECRET" timeout 100 "${CLIENT_PIN[@]}" "$LOADGEN" tasks --broker chanhub --addr "$ADDR" \
    --pid "$HUB_PID" --workers 0 --window "$WINDOW" --secs "$SECS" --out "$RESULTS" >&2
  after=$(cpu_secs "$WORKER_PID")
  line=$(tail -1 "$RESULTS")
  python3 - "$kind" "$before" "$after" "$SECS" <<EOF >>"$WORK/$kind"
import json, sys
run = json.loads('''$line''')
kind, before, after, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
done = run["value"] * secs
print(json.dumps({"kind": kind, "tps": run["value"], "p50_us": run["latency"]["p50_us"],
  "p99_us": run["latency"]["p99_us"], "worker_cpu_ms_per_1k": 1e6 * (after - before) / max(done, 1),
  "hub_cpu": run["broker_cpu"]}))
EOF
  stop
}

for round in $(seq "$RUNS"); do
  echo "== round $round of $RUNS" >&2
  run js
  run rust
done

python3 - "$WORK/js" "$WORK/rust" "$RUNS" "$SECS" "$SLOTS" "$WINDOW" <<'EOF'
import json, statistics, sys
js, rust = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
runs, secs, slots, window = sys.argv[3:7]
med = lambda rows, k: statistics.median(r[k] for r in rows)
print(f"\n{runs} rounds of {secs} s; one worker, {slots} slots, echo handler; {window} tasks in flight; durable store off\n")
print("| worker | tasks/s (median) | rounds | round trip p50 / p99 | worker CPU per 1k tasks | hub CPU |")
print("|---|---|---|---|---|---|")
for name, rows in (("chanhub JS package (Node 20, ws)", js), ("Rust client (chanhub::client)", rust)):
    rounds = " / ".join(f"{r['tps'] / 1000:.1f}k" for r in rows)
    print(f"| {name} | {med(rows, 'tps') / 1000:.1f}k | {rounds} | "
          f"{med(rows, 'p50_us') / 1000:.1f} / {med(rows, 'p99_us') / 1000:.1f} ms | "
          f"{med(rows, 'worker_cpu_ms_per_1k'):.0f} ms | {med(rows, 'hub_cpu'):.0f}% |")
print(f"\nJS / Rust: {med(js, 'tps') / med(rust, 'tps'):.2f}")
EOF
