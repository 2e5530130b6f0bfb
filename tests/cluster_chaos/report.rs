//! The figures of the fault run, and the checks on them: printed as a
//! table (the one `tests/README.md` quotes), and each failed check as a
//! line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::load::lock;
use crate::processes::{Cluster, Frozen, Memory, Settled};
use crate::{CHANNELS, Finished, KILLED, Load, NODES, SURVIVORS, memory_limit};

/// Everything the run measured.
pub(crate) struct Report<'a> {
    pub(crate) load: &'a Load,
    pub(crate) cluster: &'a Cluster,
    pub(crate) finished: Finished,
    /// From the kill to the last of the killed node's clients reconnected.
    pub(crate) reconnected_in: Duration,
    /// From Redis killed to every node ready again.
    pub(crate) redis_outage: Duration,
    pub(crate) frozen: Frozen,
    /// Each node's memory with no client, and with every client connected
    /// before the load.
    pub(crate) idle: Vec<Memory>,
    pub(crate) before: Vec<Memory>,
    pub(crate) settled: Settled,
    pub(crate) elapsed: Duration,
}

/// One line of the table: what, the figure, pass or fail.
struct Row {
    what: String,
    figure: String,
    ok: bool,
}

impl Report<'_> {
    /// Prints the figures; returns the failed checks.
    pub(crate) fn print_and_check(&self) -> Vec<String> {
        let mut rows = Vec::new();
        self.tasks(&mut rows);
        self.events(&mut rows);
        self.reconnects(&mut rows);
        self.nodes(&mut rows);
        let f = &self.frozen;
        eprintln!(
            "\nchaos run: {:.0?} in all; the killed node's clients back in {:.1?}; Redis away \
             {:.1?}; worker {} frozen {:.1?} (task {} at attempt {}, attempt {} elsewhere; \
             then it said \"{}\")\n",
            self.elapsed,
            self.reconnected_in,
            self.redis_outage,
            f.worker,
            f.took,
            f.task,
            f.attempt,
            f.next_attempt,
            f.heard
        );
        eprintln!("| check | figures | result |\n|---|---|---|");
        let mut failures = Vec::new();
        for row in rows {
            let result = if row.ok { "pass" } else { "**FAIL**" };
            eprintln!("| {} | {} | {result} |", row.what, row.figure);
            if !row.ok {
                failures.push(format!("{}: {}", row.what, row.figure));
            }
        }
        failures
    }

    /// Every accepted task completed exactly once from its submitter's view.
    fn tasks(&self, rows: &mut Vec<Row>) {
        let submitters: Vec<_> = self.load.submitters.iter().map(|s| lock(s)).collect();
        let (mut accepted, mut once, mut results, mut not_recorded) = (0, 0, 0, 0);
        let (mut never, mut more) = (Vec::new(), Vec::new());
        let mut double_results = 0;
        for s in &submitters {
            for id in s.accepted.keys() {
                accepted += 1;
                match s.completed.get(id).copied().unwrap_or(0) {
                    0 => never.push(id.clone()),
                    1 => once += 1,
                    n => more.push(format!("{id} ×{n}")),
                }
                let heard = s.results.get(id).copied().unwrap_or(0);
                results += heard.min(1);
                double_results += u32::from(heard > 1);
                if !self.finished.completed_records.contains_key(id) {
                    not_recorded += 1;
                }
            }
        }
        let mut failed: BTreeMap<String, u64> = BTreeMap::new();
        let mut deduplicated = 0;
        let completed_keys: HashSet<&String> =
            submitters.iter().flat_map(|s| s.keys.values()).collect();
        let mut unanswered_ran = 0;
        let mut unrecovered = 0;
        for s in &submitters {
            for (why, n) in &s.failed {
                *failed.entry(why.clone()).or_default() += n;
            }
            deduplicated += s.deduplicated;
            unanswered_ran += s
                .failed_keys
                .iter()
                .filter(|k| completed_keys.contains(k))
                .count();
            unrecovered += s.unrecovered;
        }
        let failed_total: u64 = failed.values().sum();
        let ok = never.is_empty()
            && more.is_empty()
            && double_results == 0
            && not_recorded == 0
            && deduplicated == 0
            && self.finished.tasks_done
            && self.finished.left.is_empty();
        rows.push(Row {
            what: "every accepted task completed exactly once (submitter's view)".into(),
            figure: format!(
                "{accepted} accepted: {once} completed once, {} never{}, {} more than once{} \
                 (task:completed events, recovered after a reconnect); {results} also got \
                 task:result on the submitting connection ({double_results} twice); not \
                 completed in Redis {not_recorded}; left unfinished {:?}; submits refused or \
                 unanswered {failed_total} {failed:?}, of which ran anyway {unanswered_ran}; \
                 deduplicated {deduplicated}; task:completed not recovered {unrecovered}",
                never.len(),
                sample(&never),
                more.len(),
                sample(&more),
                self.finished.left,
            ),
            ok,
        });

        // At least once to workers: what ran again.
        let mut deliveries: HashMap<&str, u32> = HashMap::new();
        let mut acks: HashMap<&str, u32> = HashMap::new();
        let workers: Vec<_> = self.load.workers.iter().map(|w| lock(w)).collect();
        let (mut refused, mut retried, mut cancelled, mut lost) =
            (BTreeMap::<String, u64>::new(), 0, 0, 0);
        let mut later_attempts = 0;
        for w in &workers {
            for (id, attempt) in &w.assigned {
                *deliveries.entry(id).or_default() += 1;
                later_attempts += u32::from(*attempt > 1);
            }
            for id in &w.acked {
                *acks.entry(id).or_default() += 1;
            }
            for (why, n) in &w.refused {
                *refused.entry(why.clone()).or_default() += n;
            }
            retried += w.retried;
            cancelled += w.cancelled;
            lost += w.lost;
        }
        let acked_twice = acks.values().filter(|n| **n > 1).count();
        let completed_later = self
            .finished
            .completed_records
            .values()
            .filter(|t| t["attempt"].as_u64() > Some(1))
            .count();
        rows.push(Row {
            what: "tasks run again when their worker died (at least once to workers)".into(),
            figure: format!(
                "{completed_later} tasks completed at a later attempt (Redis's records); {} \
                 deliveries to the 19 in-process workers, {later_attempts} of them a later \
                 attempt, {} tasks delivered to them more than once; completions acked \
                 {}, acked twice {acked_twice}; completes refused {refused:?}; sent again \
                 after engine_unavailable {retried}; task:cancel {cancelled}; connections \
                 lost holding tasks {lost}",
                deliveries.values().sum::<u32>(),
                deliveries.values().filter(|n| **n > 1).count(),
                acks.values().sum::<u32>(),
            ),
            ok: acked_twice == 0 && completed_later > 0,
        });
    }

    /// No event lost or repeated; every acknowledged publish arrived.
    fn events(&self, rows: &mut Vec<Row>) {
        let channels = &self.finished.channels;
        let mut failed: BTreeMap<String, u64> = BTreeMap::new();
        let mut sent = 0;
        for p in &self.load.publishers {
            let p = lock(p);
            sent += p.acked.len();
            for (why, n) in &p.failed {
                *failed.entry(why.clone()).or_default() += n;
            }
        }
        let stored: u64 = channels.iter().map(|(offset, _)| offset).sum();
        let subscribers: Vec<_> = self.load.subscribers.iter().map(|s| lock(s)).collect();
        let channel_of = |name: &str| -> usize { name["feed:".len()..].parse().expect("feed:<n>") };
        let (mut received, mut stayed, mut stayed_required, mut stayed_bad) = (0, 0, 0, Vec::new());
        for s in &subscribers {
            received += s.received;
            if s.reconnects > 0 {
                continue;
            }
            stayed += 1;
            let (last, epoch) = &channels[channel_of(&s.channel)];
            stayed_required += last;
            let complete = s.silent_gaps.is_empty()
                && s.told_gaps == 0
                && s.out_of_order == 0
                && s.strays == 0
                && s.last == *last
                && s.received == *last
                && s.epoch.as_ref() == Some(epoch);
            if !complete {
                stayed_bad.push(describe(s, *last));
            }
        }
        rows.push(Row {
            what: "no event lost for a subscriber that stayed connected".into(),
            figure: format!(
                "{stayed} subscribers stayed connected: {stayed_required} deliveries required \
                 (every event of their channel), {} missing or out of order{}",
                stayed_bad.len(),
                sample(&stayed_bad),
            ),
            ok: stayed_bad.is_empty() && self.finished.events_done,
        });

        // Every acknowledged publish is in its channel's stream (as its
        // witness, a subscriber that stayed connected, received it).
        let witnesses: HashMap<usize, &HashSet<String>> = subscribers
            .iter()
            .filter(|s| s.reconnects == 0)
            .filter_map(|s| Some((channel_of(&s.channel), s.ids.as_ref()?)))
            .collect();
        let mut missing = 0;
        for p in &self.load.publishers {
            for (channel, id) in &lock(p).acked {
                if !witnesses.get(channel).is_some_and(|ids| ids.contains(id)) {
                    missing += 1;
                }
            }
        }
        rows.push(Row {
            what: "every acknowledged publish delivered".into(),
            figure: format!(
                "{sent} publishes acknowledged (events sent), {stored} events in the channels' \
                 streams; not received by the channel's witness {missing} (witnesses for {} of \
                 {CHANNELS} channels); publishes refused or unanswered {} {failed:?}; events \
                 received by all subscribers {received}",
                witnesses.len(),
                failed.values().sum::<u64>(),
            ),
            ok: missing == 0 && witnesses.len() == CHANNELS,
        });
    }

    /// The killed node's clients came back on other nodes and recovered.
    fn reconnects(&self, rows: &mut Vec<Row>) {
        let channels = &self.finished.channels;
        let channel_of = |name: &str| -> usize { name["feed:".len()..].parse().expect("feed:<n>") };
        let subscribers: Vec<_> = self.load.subscribers.iter().map(|s| lock(s)).collect();
        let (mut of_killed, mut back, mut recovered, mut told, mut told_missed) = (0, 0, 0, 0, 0);
        let (mut bad, mut reconnects) = (Vec::new(), 0);
        let mut survivors_dropped = 0;
        for s in &subscribers {
            reconnects += s.reconnects;
            if s.frontend != KILLED {
                survivors_dropped += u32::from(s.reconnects > 0);
            } else {
                of_killed += 1;
                back += u32::from(s.reconnects > 0);
            }
            if s.reconnects == 0 {
                continue;
            }
            let (last, epoch) = &channels[channel_of(&s.channel)];
            let whole = s.silent_gaps.is_empty()
                && s.out_of_order == 0
                && s.strays == 0
                && s.last == *last
                && s.received + s.told_missed == *last
                && s.epoch.as_ref() == Some(epoch);
            if !whole {
                bad.push(describe(s, *last));
            } else if s.unrecovered == 0 {
                recovered += 1;
            } else {
                told += 1;
                told_missed += s.told_missed;
            }
        }
        let routed = self.cluster.balancer.routed(KILLED);
        let elsewhere: u64 = (0..NODES).filter(|n| *n != KILLED).map(|n| routed[n]).sum();
        let mut others: BTreeMap<String, u32> = BTreeMap::new();
        let mut others_of_killed_back = true;
        for (kind, frontend, count) in &self.load.others {
            let n = count.load(std::sync::atomic::Ordering::Relaxed);
            *others
                .entry(format!("{kind}s of node {frontend}"))
                .or_default() += n;
            if *frontend == KILLED && n == 0 {
                others_of_killed_back = false;
            }
        }
        rows.push(Row {
            what: "clients of the killed node reconnect to another node and recover".into(),
            figure: format!(
                "{back} of its {of_killed} subscribers reconnected ({reconnects} reconnects in \
                 all), through the balancer to the other nodes ({elsewhere} connections; by \
                 node {routed:?}): {recovered} recovered from history with no gap, {told} told \
                 recovered: false ({told_missed} events skipped), {} with a gap or short{}; \
                 subscribers of the other nodes that lost their connection \
                 {survivors_dropped}; other clients' reconnects {others:?}",
                bad.len(),
                sample(&bad),
            ),
            ok: back == of_killed
                && bad.is_empty()
                && told > 0
                && survivors_dropped == 0
                && others_of_killed_back
                && elsewhere as u32 >= of_killed,
        });
    }

    /// No node crashed or logged an error; memory back to its level.
    fn nodes(&self, rows: &mut Vec<Row>) {
        let mut errors = Vec::new();
        let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..NODES {
            let (e, w) = self.cluster.log_lines(i);
            errors.extend(e.into_iter().map(|line| format!("node {i}: {line}")));
            for (message, n) in w {
                *warnings.entry(message).or_default() += n;
            }
        }
        rows.push(Row {
            what: "no node crashes".into(),
            figure: format!(
                "every node running at the end; error lines or panics in their logs {}{}; \
                 warnings {warnings:?}",
                errors.len(),
                sample(&errors),
            ),
            ok: errors.is_empty(),
        });
        let s = &self.settled;
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        let per_node = |memory: &[Memory], anon: bool| -> String {
            let values = memory.iter().map(|m| if anon { m.anon } else { m.rss });
            values.map(mib).collect::<Vec<_>>().join(" / ")
        };
        let within = SURVIVORS
            .iter()
            .all(|&i| s.memory[i].anon <= memory_limit(self.before[i].anon));
        rows.push(Row {
            what: "memory back to baseline after".into(),
            figure: format!(
                "allocated (RssAnon) MiB of nodes 0 / 1 / 2: idle {}, every client connected \
                 before the load {}, once no connection was left ({:.1?} after the clients \
                 closed) {}, {:.1?} after {} (limit for the surviving \
                 nodes 0 and 1: {}); VmRSS: idle {}, before {}, after {}; connections {:?}, \
                 subscriptions {:?}",
                per_node(&self.idle, true),
                per_node(&self.before, true),
                s.emptied,
                per_node(&s.first, true),
                s.took,
                per_node(&s.memory, true),
                SURVIVORS
                    .iter()
                    .map(|&i| mib(memory_limit(self.before[i].anon)))
                    .collect::<Vec<_>>()
                    .join(" / "),
                per_node(&self.idle, false),
                per_node(&self.before, false),
                per_node(&s.memory, false),
                s.connections,
                s.subscriptions,
            ),
            ok: within
                && s.connections.iter().all(|n| *n == 0)
                && s.subscriptions.iter().all(|n| *n == 0),
        });
    }
}

/// A subscriber's stream, for a failed check.
fn describe(s: &crate::load::SubscriberLog, last: u64) -> String {
    format!(
        "{} (node {}): received {} to offset {} of {last}, gaps {:?}, told {} ({} skipped), \
         out of order {}, strays {}, reconnects {} ({} unrecovered)",
        s.channel,
        s.frontend,
        s.received,
        s.last,
        s.silent_gaps.iter().take(5).collect::<Vec<_>>(),
        s.told_gaps,
        s.told_missed,
        s.out_of_order,
        s.strays,
        s.reconnects,
        s.unrecovered,
    )
}

/// The first few items, for a figure.
fn sample(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(
            " (e.g. {})",
            items.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )
    }
}
