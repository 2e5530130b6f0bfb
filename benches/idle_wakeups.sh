#!/usr/bin/env bash
# How often an idle hub wakes: context switches of `chanhub serve` with no
# client at all, summed over its threads, over a 30 s window.
#
#   bash benches/idle_wakeups.sh [BINARY ...]
#
# BINARY defaults to target/release/chanhub (build it first with
# `cargo build --release`); give several to compare builds, e.g.
# `bash benches/idle_wakeups.sh /tmp/chanhub-before target/release/chanhub`.
# For each binary and each of ROUNDS rounds (default 3): start
# `serve --listen 127.0.0.1:0` with a fresh temporary data dir, wait SETTLE
# seconds (default 5), read voluntary_ctxt_switches +
# nonvoluntary_ctxt_switches of every thread (/proc/PID/task/*/status),
# wait WINDOW seconds (default 30), read them again, stop the hub. A
# thread's count is diffed against its own earlier count (a thread started
# within the window counts from zero; one that exited within it is lost and
# reported). Prints one line per round and the median per binary.
#
# CLIENTS=n (default 0) connects n idle WebSocket clients first
# (`chanhub sub 'idle:*'`, each a process of its own whose switches are not
# counted) and waits for them before the window opens: an idle hub with
# connections, which should wake only for their keepalive pings
# (websocket.ping_interval, 25 s by default).
#
# Linux only (it reads /proc). Loopback only. Every round stops by itself:
# the hub gets SIGTERM, then SIGKILL after 5 s.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-0}
SETTLE=${SETTLE:-5}
WINDOW=${WINDOW:-30}

if [ $# -eq 0 ]; then
  set -- target/release/chanhub
fi
for bin in "$@"; do
  if [ ! -x "$bin" ]; then
    echo "idle_wakeups: $bin is not an executable (cargo build --release?)" >&2
    exit 2
  fi
done

# "tid switches" for every thread of $1.
snapshot() {
  local pid=$1 status tid
  for status in /proc/"$pid"/task/*/status; do
    tid=${status%/status}
    tid=${tid##*/}
    awk -v tid="$tid" '
      /^voluntary_ctxt_switches/ { v = $2 }
      /^nonvoluntary_ctxt_switches/ { n = $2 }
      END { if (v != "") print tid, v + n }' "$status" 2>/dev/null || true
  done
}

hub_pid=""
data_dir=""
client_pids=()
stop_clients() {
  for pid in "${client_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${client_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  client_pids=()
}
cleanup() {
  stop_clients
  if [ -n "$hub_pid" ] && kill -0 "$hub_pid" 2>/dev/null; then
    kill -KILL "$hub_pid" 2>/dev/null || true
  fi
  if [ -n "$data_dir" ]; then
    rm -rf "$data_dir"
  fi
}
trap cleanup EXIT

# Stops the hub: SIGTERM, and SIGKILL if it is still there after 5 s.
stop_hub() {
  kill -TERM "$hub_pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$hub_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$hub_pid" 2>/dev/null || true
  wait "$hub_pid" 2>/dev/null || true
  hub_pid=""
}

echo "clients: $CLIENTS, window: $WINDOW s after $SETTLE s"
printf '%-40s %5s %8s %8s %8s\n' binary round threads lost switches
for bin in "$@"; do
  results=()
  for round in $(seq "$ROUNDS"); do
    data_dir=$(mktemp -d)
    CHANHUB_DATA_DIR="$data_dir" CHANHUB_LOG__LEVEL=info \
      "$bin" serve --listen 127.0.0.1:0 2>"$data_dir/log" &
    hub_pid=$!
    addr=""
    for _ in $(seq 100); do
      addr=$(sed -e 's/\x1b\[[0-9;]*m//g' "$data_dir/log" |
        sed -n 's/.*chanhub listening.*addr=\([0-9.]*:[0-9]*\).*/\1/p' | head -n 1)
      [ -n "$addr" ] && break
      sleep 0.05
    done
    if [ -z "$addr" ] || ! kill -0 "$hub_pid" 2>/dev/null; then
      echo "idle_wakeups: $bin did not start:" >&2
      cat "$data_dir/log" >&2
      exit 1
    fi
    for _ in $(seq "$CLIENTS"); do
      CHANHUB_DATA_DIR="$data_dir" "$bin" sub --json --url "ws://$addr/ws" 'idle:*' \
        >/dev/null 2>>"$data_dir/clients.log" &
      client_pids+=("$!")
    done
    sleep "$SETTLE"
    if ! kill -0 "$hub_pid" 2>/dev/null; then
      echo "idle_wakeups: $bin exited early:" >&2
      cat "$data_dir/log" >&2
      exit 1
    fi
    for pid in "${client_pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "idle_wakeups: a client exited early:" >&2
        cat "$data_dir/clients.log" >&2
        exit 1
      fi
    done
    before=$(snapshot "$hub_pid")
    sleep "$WINDOW"
    after=$(snapshot "$hub_pid")
    stop_clients
    stop_hub
    rm -rf "$data_dir"
    data_dir=""
    # threads in the window, threads lost, switches in the window
    read -r threads lost switches < <(
      awk 'NR == FNR { seen[$1] = $2; next }
           { total += $2 - ($1 in seen ? seen[$1] : 0); threads++; delete seen[$1] }
           END { lost = 0; for (t in seen) lost++; print threads, lost, total }' \
        <(printf '%s\n' "$before") <(printf '%s\n' "$after")
    )
    printf '%-40s %5s %8s %8s %8s\n' "$bin" "$round" "$threads" "$lost" "$switches"
    results+=("$switches")
  done
  median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  printf '%-40s median over %s rounds: %s context switches in %s s\n' "$bin" "$ROUNDS" "$median" "$WINDOW"
done
