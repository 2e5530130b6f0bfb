#!/usr/bin/env bash
# Runs fuzz targets one at a time, each until it has had SECONDS of CPU
# time (default 600), and prints one summary line per target. See README.md.
#
#   tests/fuzz/run-all.sh                    # every target, 10 minutes each
#   SECONDS_EACH=60 tests/fuzz/run-all.sh token config
#   MERGE=1 tests/fuzz/run-all.sh            # then merge what is new into corpus/
#
# Run from anywhere (two invocations with different targets may run side by
# side); everything written goes under tests/fuzz/target/
# (ignored): the work corpora (work-corpus/<target>), the logs
# (logs/<target>-<n>.log) and the summary (logs/summary.tsv). A crash
# leaves its input in tests/fuzz/artifacts/<target>/ (ignored).
#
# While /tmp/bench-quiet exists (someone is benchmarking on this machine)
# nothing is started; a run already going may be paused with SIGSTOP.
# -max_total_time is wall-clock time, so a target whose run got less CPU
# than asked is run again on its work corpus until the total is reached.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$fuzz_dir/../.." && pwd)"
seconds="${SECONDS_EACH:-600}"
all=(client_message channel_pattern subscription_index sse_query last_event_id token config)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
target_dir="$fuzz_dir/target"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
mkdir -p "$target_dir/logs"

quiet_wait() {
    while [ -e /tmp/bench-quiet ]; do sleep 30; done
}

# The dictionary of a target, if it has one.
dict_for() {
    case "$1" in
        sse_query) echo "$fuzz_dir/dicts/channel_pattern.dict" ;;
        *) [ -f "$fuzz_dir/dicts/$1.dict" ] && echo "$fuzz_dir/dicts/$1.dict" || true ;;
    esac
}

# Inputs libFuzzer saved in a target's artifact directory as failures:
# crashes, panics, leaks, timeouts and out-of-memory, not its slow-unit-*
# reports (a unit is "slow" by wall-clock time, and a run paused with
# SIGSTOP for a benchmark makes the unit it was in the middle of as slow
# as the pause) nor timeouts that replayed in time (paused-*).
failures() {
    ls "$1" | grep -Evc '^(slow-unit-|paused-)' || true
}

# libFuzzer's -timeout is wall-clock time too: an input a paused run was
# working on times out. Replays each new timeout-* of target $1 in $2; one
# that now runs within the timeout is renamed paused-* (not a failure).
replay_timeouts() {
    local f
    for f in "$2"/timeout-*; do
        [ -e "$f" ] || continue
        if timeout 60 "$bin_dir/$1" "$f" >/dev/null 2>&1; then
            mv "$f" "$2/paused-$(basename "$f")"
        fi
    done
}

# The last value of `key: N` in a libFuzzer log.
last_stat() {
    grep -o "$2: [0-9]*" "$1" | tail -1 | grep -o '[0-9]*$' || echo 0
}

quiet_wait
(cd "$root" && RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build --fuzz-dir tests/fuzz -a)

summary="$target_dir/logs/summary.tsv"
[ -f "$summary" ] || printf 'target\truns\tcpu_s\texecs\tcov\tft\tcorpus_before\tcorpus_after\tcrashes\n' >"$summary"

for t in "${targets[@]}"; do
    work="$target_dir/work-corpus/$t"
    seeds="$fuzz_dir/corpus/$t"
    artifacts="$fuzz_dir/artifacts/$t"
    mkdir -p "$work" "$seeds" "$artifacts"
    before=$(($(ls "$work" | wc -l) + $(ls "$seeds" | wc -l)))
    crashes_before=$(failures "$artifacts")
    dict="$(dict_for "$t")"
    cpu=0 execs=0 runs=0 cov=0 ft=0
    while [ "$cpu" -lt "$seconds" ]; do
        quiet_wait
        runs=$((runs + 1))
        log="$target_dir/logs/$t-$runs.log"
        # Wall-clock budget: what is missing, plus a minute for pauses.
        budget=$((seconds - cpu + 60))
        (
            # libFuzzer writes fuzz-0.log where it runs: a directory per
            # target, so that two invocations can run side by side.
            mkdir -p "$target_dir/run/$t"
            cd "$target_dir/run/$t"
            rm -f fuzz-0.log
            /usr/bin/time -f '%U %S' -o "$log.time" nice -n 19 "$bin_dir/$t" \
                "$work" "$seeds" \
                -max_total_time="$budget" -jobs=1 -workers=1 -print_final_stats=1 \
                -timeout=60 -artifact_prefix="$artifacts/" \
                ${dict:+-dict="$dict"} >/dev/null 2>&1 || true
            mv fuzz-0.log "$log"
        )
        # The last line: time writes "Command exited with non-zero status"
        # above it when libFuzzer was interrupted.
        used=$(tail -1 "$log.time" | awk '{printf "%d", $1 + $2}')
        cpu=$((cpu + used))
        execs=$((execs + $(last_stat "$log" stat::number_of_executed_units)))
        cov=$(last_stat "$log" cov)
        ft=$(last_stat "$log" ft)
        echo "$t run $runs: ${used}s CPU, cov $cov ft $ft" >&2
        replay_timeouts "$t" "$artifacts"
        if [ "$(failures "$artifacts")" -gt "$crashes_before" ]; then
            echo "$t: crash, see $artifacts and $log" >&2
            break
        fi
    done
    after=$(($(ls "$work" | wc -l) + $(ls "$seeds" | wc -l)))
    crashes=$(($(failures "$artifacts") - crashes_before))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$t" "$runs" "$cpu" "$execs" "$cov" "$ft" "$before" "$after" "$crashes" | tee -a "$summary"
    if [ "${MERGE:-0}" = 1 ] && [ "$crashes" = 0 ]; then
        # Keep what adds coverage to the committed corpus, and no more.
        quiet_wait
        (cd "$target_dir" && nice -n 19 "$bin_dir/$t" -merge=1 "$seeds" "$work" \
            >"$target_dir/logs/$t-merge.log" 2>&1)
        echo "$t: committed corpus now $(ls "$seeds" | wc -l) files" >&2
    fi
done
