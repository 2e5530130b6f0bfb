//! Flood protection: how fast one connection may send, how often one IP
//! address may open connections, and how many sockets may sit
//! unauthenticated. The frame, subscription, connection and queue limits sit
//! beside these in [`LimitsConfig`](crate::config::LimitsConfig).
//!
//! Both rates are token buckets (governor's GCRA): `count` per `window`,
//! refilled evenly, and a full window's worth may arrive at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::ClientType;

/// `[limits.messages]`: frames one connection may send per window, by client
/// type. Every inbound frame counts: requests, bad frames and WebSocket pings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageRateConfig {
    /// Frames per window for a browser; 0 means unlimited.
    pub browser: u32,
    /// Frames per window for a worker; 0 means unlimited.
    pub worker: u32,
    /// Frames per window for a hub-type client (a trusted backend or a peer
    /// hub); 0 means unlimited.
    pub hub: u32,
    /// The window the counts refer to.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Frames refused with `rate_limited` within one window before the
    /// connection is closed with 4029.
    pub close_after: u32,
}

impl Default for MessageRateConfig {
    fn default() -> Self {
        MessageRateConfig {
            browser: 1_000,
            worker: 100_000,
            hub: 0,
            window: Duration::from_secs(10),
            close_after: 100,
        }
    }
}

impl MessageRateConfig {
    /// The count per window for `client_type` (0: unlimited).
    pub fn count_for(&self, client_type: ClientType) -> u32 {
        match client_type {
            ClientType::Browser => self.browser,
            ClientType::Worker => self.worker,
            ClientType::Hub => self.hub,
        }
    }
}

/// `[limits.connect]`: connection attempts (WebSocket upgrades and SSE
/// streams) per client IP address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectRateConfig {
    /// Attempts per window from one address; 0 means unlimited. Beyond it
    /// the request gets HTTP 429 `rate_limited`.
    pub per_ip: u32,
    /// The window `per_ip` refers to.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Networks the per-IP limit does not apply to: a reverse proxy in front
    /// of the hub, or loopback (local tools and benchmarks).
    pub exempt: Vec<IpNet>,
}

impl Default for ConnectRateConfig {
    fn default() -> Self {
        ConnectRateConfig {
            per_ip: 200,
            window: Duration::from_secs(10),
            exempt: ["127.0.0.0/8", "::1/128"]
                .iter()
                .map(|net| net.parse().expect("a valid network"))
                .collect(),
        }
    }
}

/// `count` cells per `window`, all of them available at once; `None` for 0.
fn quota(count: u32, window: Duration) -> Option<Quota> {
    let burst = NonZeroU32::new(count)?;
    let period = (window / count).max(Duration::from_nanos(1));
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// What to do with one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the budget.
    Allow,
    /// Over it: refuse this frame with `rate_limited`.
    Limited,
    /// Over it `close_after` times in one window: close with 4029.
    Close,
}

/// One connection's frame budget. Unlimited client types carry nothing.
pub(crate) struct MessageRate(Option<Box<Budget>>);

struct Budget {
    limiter: DefaultDirectRateLimiter,
    window: Duration,
    close_after: u32,
    /// Frames refused since `since`.
    refused: u32,
    since: Instant,
}

impl MessageRate {
    /// The budget `config` gives `client_type`.
    pub(crate) fn new(config: &MessageRateConfig, client_type: ClientType) -> MessageRate {
        MessageRate(
            quota(config.count_for(client_type), config.window).map(|q| {
                Box::new(Budget {
                    limiter: RateLimiter::direct(q),
                    window: config.window,
                    close_after: config.close_after,
                    refused: 0,
                    since: Instant::now(),
                })
            }),
        )
    }

    /// Spends one frame.
    pub(crate) fn check(&mut self) -> Verdict {
        let Some(budget) = self.0.as_deref_mut() else {
            return Verdict::Allow;
        };
        if budget.limiter.check().is_ok() {
            return Verdict::Allow;
        }
        if budget.since.elapsed() > budget.window {
            budget.since = Instant::now();
            budget.refused = 0;
        }
        budget.refused += 1;
        if budget.refused >= budget.close_after {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

/// Admission before a connection opens: the per-IP attempt rate and the cap
/// on sockets that have not authenticated yet.
pub(crate) struct Gate {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    exempt: Vec<IpNet>,
    max_unauthenticated: usize,
    unauthenticated: AtomicUsize,
    /// Attempts refused by the per-IP limit since the last sweep (for the log).
    refused_ip: AtomicU64,
    /// Notified when an address may have got a bucket, so a sweeper with
    /// nothing to sweep can sleep until then.
    tracked: Notify,
}

impl Gate {
    pub(crate) fn new(connect: &ConnectRateConfig, max_unauthenticated: usize) -> Arc<Gate> {
        Arc::new(Gate {
            per_ip: quota(connect.per_ip, connect.window).map(RateLimiter::dashmap),
            exempt: connect.exempt.clone(),
            max_unauthenticated,
            unauthenticated: AtomicUsize::new(0),
            refused_ip: AtomicU64::new(0),
            tracked: Notify::new(),
        })
    }

    /// May `ip` open one more connection now?
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.per_ip else {
            return true;
        };
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        let ok = limiter.check_key(&ip).is_ok();
        self.tracked.notify_one();
        if !ok {
            self.refused_ip.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Reserves a place among the unauthenticated sockets, or `None` at
    /// `limits.max_unauthenticated`.
    pub(crate) fn unauthenticated(self: &Arc<Self>) -> Option<Unauthenticated> {
        let prev = self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_unauthenticated {
            self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Unauthenticated(Arc::clone(self)))
    }

    /// Forgets addresses whose buckets are full again (so the table does not
    /// grow with every address ever seen) and returns the attempts refused
    /// since the last sweep.
    pub(crate) fn sweep(&self) -> u64 {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.refused_ip.swap(0, Ordering::Relaxed)
    }

    /// Whether no address has a bucket (nothing for [`sweep`](Self::sweep)
    /// to forget); true without a per-IP limit.
    pub(crate) fn is_empty(&self) -> bool {
        self.per_ip
            .as_ref()
            .is_none_or(|limiter| limiter.is_empty())
    }

    /// Resolves once an address may have got a bucket since the gate was
    /// last seen empty (at once if one may have since the last call).
    pub(crate) async fn until_tracked(&self) {
        self.tracked.notified().await;
    }
}

/// A socket that has not authenticated yet; its place is freed on drop.
pub(crate) struct Unauthenticated(Arc<Gate>);

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_is_empty_until_an_address_is_tracked() {
        use futures::FutureExt;
        let gate = Gate::new(&ConnectRateConfig::default(), 10);
        assert!(gate.is_empty());
        assert!(gate.until_tracked().now_or_never().is_none());
        // Loopback is exempt by default: no bucket.
        assert!(gate.admit("127.0.0.1".parse().expect("ip")));
        assert!(gate.is_empty());
        assert!(gate.admit("192.0.2.1".parse().expect("ip")));
        assert!(!gate.is_empty());
        assert!(gate.until_tracked().now_or_never().is_some());
    }

    #[test]
    fn budget_refuses_then_closes() {
        let config = MessageRateConfig {
            browser: 3,
            window: Duration::from_secs(3600),
            close_after: 2,
            ..MessageRateConfig::default()
        };
        let mut rate = MessageRate::new(&config, ClientType::Browser);
        assert_eq!(
            [rate.check(), rate.check(), rate.check()],
            [Verdict::Allow; 3]
        );
        assert_eq!(rate.check(), Verdict::Limited);
        assert_eq!(rate.check(), Verdict::Close);
        let mut hub = MessageRate::new(&config, ClientType::Hub);
        assert!((0..10_000).all(|_| hub.check() == Verdict::Allow));
    }

    #[test]
    fn gate_limits_addresses_but_not_exempt_ones() {
        let config = ConnectRateConfig {
            per_ip: 2,
            window: Duration::from_secs(3600),
            ..ConnectRateConfig::default()
        };
        let gate = Gate::new(&config, 1);
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(gate.admit(far) && gate.admit(far));
        assert!(!gate.admit(far));
        assert!(gate.admit("192.0.2.8".parse().unwrap()));
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!((0..100).all(|_| gate.admit(local)));
        assert_eq!(gate.sweep(), 1);

        let first = gate.unauthenticated().expect("a place");
        assert!(gate.unauthenticated().is_none());
        drop(first);
        assert!(gate.unauthenticated().is_some());
    }
}
