//! The checks and the summary table.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::hub::{HubProcess, Logs};
use crate::ledger::{Counters, Ledger, lock};
use crate::{Memory, Mix};

/// Everything the checks need besides the ledger.
pub(crate) struct Outcome {
    pub(crate) seed: u64,
    pub(crate) mix: Mix,
    pub(crate) memory: Memory,
    pub(crate) rss_tolerance: f64,
    /// Tasks the hub still lists as queued / assigned / failed after the drain.
    pub(crate) leftovers: Result<BTreeMap<String, usize>, String>,
    /// `/metrics` at the end of the run.
    pub(crate) metrics: String,
    /// `/metrics` after the final settle.
    pub(crate) settled_metrics: String,
    pub(crate) logs: Logs,
    /// The hub's exit code after SIGTERM.
    pub(crate) exit: Option<i32>,
    /// Client tasks that had to be aborted.
    pub(crate) stuck_clients: usize,
    pub(crate) elapsed: Duration,
}

/// Accepted tasks with no terminal event yet.
pub(crate) fn unfinished(ledger: &Ledger) -> usize {
    lock(&ledger.tasks)
        .values()
        .filter(|t| t.accepted > 0 && t.ev_completed + t.ev_dead + t.ev_cancelled == 0)
        .count()
}

/// What `GET /api/tasks?state=…` lists in the states a drained hub should have none in.
pub(crate) async fn leftover_tasks(hub: &HubProcess) -> Result<BTreeMap<String, usize>, String> {
    let mut out = BTreeMap::new();
    for state in ["queued", "assigned", "failed"] {
        let body = hub
            .get(&format!("/api/tasks?state={state}"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| format!("tasks list: {e}"))?;
        out.insert(state.to_string(), list.len());
    }
    Ok(out)
}

/// A counter or gauge from the Prometheus text, summed over the lines
/// whose name and labels contain every one of `parts`.
fn metric(text: &str, name: &str, parts: &[&str]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Row {
    check: &'static str,
    pass: bool,
    detail: String,
}

/// Prints the tables; true when every check passed.
pub(crate) fn print(command: &str, ledger: &Ledger, o: &Outcome) -> bool {
    let c = &ledger.counters;
    let g = Counters::get;
    let mut rows = Vec::new();

    // Tasks, from the submitters' side.
    let tasks = lock(&ledger.tasks).clone();
    let accepted: Vec<_> = tasks.values().filter(|t| t.accepted > 0).collect();
    let once = accepted
        .iter()
        .filter(|t| t.ev_completed == 1 && t.ev_dead == 0 && t.ev_cancelled == 0)
        .count();
    let never = accepted.iter().filter(|t| t.ev_completed == 0).count();
    let twice = accepted.iter().filter(|t| t.ev_completed > 1).count();
    let dead = accepted.iter().filter(|t| t.ev_dead > 0).count();
    let acks_wrong = accepted.iter().filter(|t| t.worker_acks != 1).count();
    let results = accepted.iter().filter(|t| t.result_completed > 0).count();
    let results_twice = accepted
        .iter()
        .filter(|t| t.result_completed + t.result_other > 1)
        .count();
    let redelivered = accepted.iter().filter(|t| t.assigns > 1).count();
    let dedup = tasks.values().filter(|t| t.deduplicated > 0).count();
    let unacked_ran = tasks
        .values()
        .filter(|t| t.accepted == 0 && t.ev_completed > 0)
        .count();
    let leftover_total = o.leftovers.as_ref().map(|m| m.values().sum::<usize>());
    rows.push(Row {
        check: "every accepted task completed exactly once",
        pass: !accepted.is_empty()
            && once == accepted.len()
            && acks_wrong == 0
            && results_twice == 0
            && dedup == 0
            && leftover_total == Ok(0),
        detail: format!(
            "{} accepted: {once} completed once, {never} never, {twice} more than once, {dead} dead; \
             worker acks ≠ 1: {acks_wrong}; task:result on the submitting connection: {results} (>1: {results_twice}); \
             redelivered after a kill: {redelivered}; left in the hub: {}",
            accepted.len(),
            match &o.leftovers {
                Ok(m) => format!("{m:?}"),
                Err(e) => e.clone(),
            }
        ),
    });

    let bad_order = g(&c.gaps) + g(&c.duplicates) + g(&c.unexpected_events);
    rows.push(Row {
        check: "events in order: no gaps, duplicates or strays",
        pass: bad_order == 0 && g(&c.events_received) > 0,
        detail: format!(
            "{} events received by {} subscriber connections; gaps {}, duplicates/out of order {}, strays {}",
            g(&c.events_received),
            g(&c.subscriber_sessions),
            g(&c.gaps),
            g(&c.duplicates),
            g(&c.unexpected_events)
        ),
    });
    rows.push(Row {
        check: "every event reached every live reading subscriber",
        pass: g(&c.missing) == 0 && g(&c.required) > 0,
        detail: format!(
            "{} required deliveries (published after the subscribe was acknowledged, acknowledged before the subscriber left), {} missing",
            g(&c.required),
            g(&c.missing)
        ),
    });

    let hub_slow = metric(&o.metrics, "chanhub_slow_consumers_total", &[]);
    let hub_4008 = metric(&o.metrics, "chanhub_disconnects_total", &["code=\"4008\""]);
    let stalls = g(&c.stalls);
    rows.push(Row {
        check: "slow readers closed with 4008",
        pass: stalls > 0 && g(&c.stall_closed_4008) == stalls && hub_slow == stalls,
        detail: format!(
            "{stalls} stalls: {} got close 4008, {} another code, {} no close frame, {} not closed; \
             hub: slow_consumers_total {hub_slow}, disconnects 4008 {hub_4008}; {} flood events",
            g(&c.stall_closed_4008),
            g(&c.stall_closed_other),
            g(&c.stall_dropped_no_frame),
            g(&c.stall_not_closed),
            g(&c.flood_events)
        ),
    });

    let closes = lock(&ledger.unexpected_closes).clone();
    let other = g(&c.other_errors)
        + g(&c.publish_errors)
        + g(&c.submit_refused)
        + g(&c.not_assigned)
        + g(&c.task_cancels_to_worker);
    rows.push(Row {
        check: "no unexpected closes, refusals or errors",
        pass: closes.is_empty() && other == 0 && g(&c.connect_failures) == 0,
        detail: format!(
            "closes by the hub (code: count; 0 = no close frame) {closes:?}; connect failures {}; \
             publish errors {}; submits refused {}; not_assigned {}; task:cancel to workers {}; other {}",
            g(&c.connect_failures),
            g(&c.publish_errors),
            g(&c.submit_refused),
            g(&c.not_assigned),
            g(&c.task_cancels_to_worker),
            g(&c.other_errors)
        ),
    });

    let m = &o.memory;
    let rounds = if m.rounds_kib.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = m
            .rounds_kib
            .iter()
            .map(|k| format!("{:.1}", mib(*k)))
            .collect();
        format!("; after each earlier round {} MiB", list.join(", "))
    };
    let limit = m.warm_kib as f64 * (1.0 + o.rss_tolerance / 100.0);
    rows.push(Row {
        check: "hub RSS back to its post-warm-up level",
        pass: m.warm_kib > 0 && (m.end_kib as f64) <= limit,
        detail: format!(
            "idle at start {:.1} MiB, after warm-up {:.1} MiB, peak {:.1} MiB, after the run {:.1} MiB ({:+.1}%, limit +{}%)",
            mib(m.idle_start_kib),
            mib(m.warm_kib),
            mib(m.peak_kib),
            mib(m.end_kib),
            100.0 * (m.end_kib as f64 / m.warm_kib.max(1) as f64 - 1.0),
            o.rss_tolerance
        ) + &rounds
            + &format!(
                "; then the hub held {} connections, {} subscriptions, {} tasks, {} workers; tasks.redb {:.1} MiB",
                metric(&o.settled_metrics, "chanhub_connections{", &[]),
                metric(&o.settled_metrics, "chanhub_subscriptions ", &[]),
                metric(&o.settled_metrics, "chanhub_tasks{", &[]),
                metric(&o.settled_metrics, "chanhub_workers ", &[]),
                m.store_bytes as f64 / 1048576.0
            ),
    });

    let errors = o.logs.by_level.get("ERROR").copied().unwrap_or(0);
    let warn_lines: Vec<String> = o
        .logs
        .messages
        .iter()
        .map(|((level, msg), n)| format!("{level} \"{msg}\" ×{n}"))
        .collect();
    rows.push(Row {
        check: "no error-level log lines",
        pass: errors == 0,
        detail: format!(
            "lines by level {:?}; warnings/errors: {}",
            o.logs.by_level,
            if warn_lines.is_empty() {
                "none".to_string()
            } else {
                warn_lines.join("; ")
            }
        ),
    });
    rows.push(Row {
        check: "hub exits 0 on SIGTERM; clients stop by themselves",
        pass: o.exit == Some(0) && o.stuck_clients == 0,
        detail: format!(
            "exit code {:?}; client tasks aborted {}",
            o.exit, o.stuck_clients
        ),
    });

    let all = rows.iter().all(|r| r.pass);
    println!();
    println!("## chanhub soak");
    println!();
    println!("`{command}` — seed {}, {:.0?} in all", o.seed, o.elapsed);
    println!();
    let mix = o.mix;
    println!(
        "clients: {} browsers + {} slow readers, {} workers, {} publishers, {} submitters; \
         {} sessions ({} graceful leaves, {} abrupt), {} worker kills ({} holding tasks)",
        mix.browsers,
        mix.slow,
        mix.workers,
        mix.publishers,
        mix.submitters,
        g(&c.sessions),
        g(&c.graceful_leaves),
        g(&c.abrupt_leaves),
        g(&c.worker_kills),
        g(&c.worker_kills_holding)
    );
    let lat = lock(&ledger.latency).clone();
    println!(
        "traffic: {} events published ({} acknowledged), {} tasks submitted ({} unanswered when the submitter left, {} of those ran), \
         {} not_assigned, {} task:cancel to workers; publish→receive latency p50 {} p99 {} p99.9 {} max {}",
        g(&c.published),
        g(&c.publish_acked),
        g(&c.submits),
        g(&c.submits_unanswered),
        unacked_ran,
        g(&c.not_assigned),
        g(&c.task_cancels_to_worker),
        fmt_us(lat.value_at_quantile(0.5)),
        fmt_us(lat.value_at_quantile(0.99)),
        fmt_us(lat.value_at_quantile(0.999)),
        fmt_us(lat.max())
    );
    println!(
        "CPU during the measured phase (load and drain): hub {:.0}% of one core, soak clients {:.0}% ({} cores)",
        o.memory.hub_cpu,
        o.memory.soak_cpu,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| check | result | detail |");
    println!("|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} |",
            r.check,
            if r.pass { "pass" } else { "**FAIL**" },
            r.detail.replace('|', "\\|")
        );
    }
    println!();
    let notes = lock(&ledger.notes).clone();
    if !notes.is_empty() {
        println!("First notes:");
        for n in notes {
            println!("- {n}");
        }
        println!();
    }
    if !o.logs.first_errors.is_empty() {
        println!("First error lines of the hub:");
        for l in &o.logs.first_errors {
            println!("    {l}");
        }
        println!();
    }
    println!("{}", if all { "soak: PASS" } else { "soak: FAIL" });
    all
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}
