#!/usr/bin/env bash
# Watch a hub's events as Server-Sent Events with curl: one `data:` line per
# event (see proto-docs/sse.md).
#
# Run with (a hub running, e.g. `cargo run -- serve`):
#
#   examples/sse.sh 'session:*' 'task:**'
#
# Then, in another terminal:  cargo run -- pub session:42 '{"text":"hi"}'
#
# Environment:
#   HUB      the hub's URL (default http://127.0.0.1:7070)
#   TOKEN    a token; by default one is minted with `chanhub token` (or
#            `cargo run -- token` when chanhub is not installed), which
#            needs the hub's local secret
#   CHANHUB  how to run chanhub (default: `chanhub` if on PATH, else
#            `cargo run -q --`)
# Exercised by tests/sse_example.rs.
set -euo pipefail

HUB=${HUB:-http://127.0.0.1:7070}
if [ "$#" -eq 0 ]; then
  set -- '**'
fi

if [ -z "${TOKEN:-}" ]; then
  if [ -z "${CHANHUB:-}" ]; then
    if command -v chanhub >/dev/null 2>&1; then CHANHUB=chanhub; else CHANHUB="cargo run -q --"; fi
  fi
  TOKEN=$($CHANHUB token --type browser --sub sse-example --ttl 1h)
fi

# Patterns joined with commas; -g keeps curl from reading {} and [] as its
# own URL globs; -N prints each event as it arrives.
channels=$(IFS=,; echo "$*")
exec curl -sS -N -g -H "Authorization: Bearer $TOKEN" \
  "$HUB/api/stream?channels=$channels"
