//! Federation: links between separately run hubs. A hub dials each
//! configured peer as a `hub` client, both sides exchange `hub:hello`, and
//! from then on the link is symmetric: each side tells the other which
//! channel patterns its subscribers want and which task capabilities its
//! workers offer, and only wanted, exported, imported events cross.
//!
//! - [`config`] — `[federation]` and `[[federation.peers]]`.
//! - `identity` — the stable hub id in the data directory.
//! - `routes` — interest and capacity tables (versions, split horizon,
//!   hop limit) and pattern narrowing: the pure logic.
//! - `adverts` — what each link is told and what it told: interest and
//!   capacity entries, the event index, the peers' remote workers.
//! - `events` — the publish hook and receiving events from links.
//! - `dedup` — the bounded duplicate filter for events.
//! - `link` — one link's task: keepalive, adverts, events, task messages.
//! - `handshake` — accepting a link on `/ws`, dialing a peer.
//! - `dial` — one dialer per peer with a `url`: reconnect with backoff.
//! - `tasks` — handing tasks to peers and running peers' tasks.
//!
//! Events: a publish on this hub reaches [`Federation::forward`] through
//! the [`Forwarder`] hook of the channel manager; it looks the channel up
//! in an index of what each link's peer wants (a [`SubscriptionIndex`], so
//! the cost does not grow with patterns that do not match), checks the
//! export list, serializes one `hub:event` frame and queues it on each
//! link. A received event is checked (origin, hop limit, import list,
//! duplicate filter) and published locally with the normal fan-out, which
//! hands it on to the other links.

mod adverts;
mod calls;
pub(crate) mod config;
mod dedup;
mod dial;
mod events;
mod handshake;
mod identity;
mod link;
mod routes;
mod tasks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::config::{FederationConfig, PeerConfig};
use crate::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
use crate::error::ConfigError;
use crate::protocol::federation::{
    CapabilityLoad, FederationView, HubHello, LinkState, LinkView, RefusalReason,
};
use crate::protocol::now_ms;
use crate::router::manager::{ChannelManager, Subscriber};
use crate::tasks::TaskService;

use dedup::Dedup;
use events::Hook;
pub(crate) use handshake::accept;
use link::{Direction, Link};
use routes::Table;

pub(crate) use crate::router::upstream::{Forwarder, Origin};

/// A configured peer with its lists parsed.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The entry as configured.
    pub(crate) config: PeerConfig,
    /// Patterns of events that may go to the peer.
    pub(crate) export: Vec<Pattern>,
    /// Patterns of events accepted from the peer.
    pub(crate) import: Vec<Pattern>,
    /// Methods the peer may call on this hub's servers.
    pub(crate) call_export: Vec<Pattern>,
    /// Methods this hub may call on the peer's servers.
    pub(crate) call_import: Vec<Pattern>,
}

impl Peer {
    fn exports(&self, channel: &ChannelName) -> bool {
        self.export.iter().any(|p| p.matches(channel))
    }

    fn imports(&self, channel: &ChannelName) -> bool {
        self.import.iter().any(|p| p.matches(channel))
    }
}

/// Where a configured peer stands, for the dialer and the API.
struct PeerStatus {
    /// Connecting, up, backoff or idle.
    state: LinkState,
    /// When `state` last changed.
    since: u64,
    /// Failed dial attempts since the link was last up.
    attempts: u32,
    /// Why the last attempt failed or the link went down.
    last_error: Option<String>,
    /// The link, while up.
    link: Option<Arc<Link>>,
    /// Wakes this peer's dialer when the link goes down.
    down: Arc<Notify>,
}

/// The advertised tables, behind one short std lock.
struct Tables {
    /// Patterns each hub wants, per link heard on.
    interest: Table<Vec<Pattern>>,
    /// Capacity of each hub, per link heard on.
    capacity: Table<Vec<CapabilityLoad>>,
    /// This hub's interest: (version, patterns of local subscribers).
    own_interest: (u64, Vec<Pattern>),
    /// This hub's capacity: (version, per capability pattern).
    own_capacity: (u64, Vec<CapabilityLoad>),
}

/// What a link should be told: per origin (version, hops, payload).
pub(crate) struct Adverts {
    pub(crate) interest: BTreeMap<String, (u64, u32, Vec<String>)>,
    pub(crate) capacity: BTreeMap<String, (u64, u32, Vec<CapabilityLoad>)>,
}

/// The federation state of one hub.
pub(crate) struct Federation {
    /// This hub's stable id.
    hub_id: String,
    /// The name peers know it by.
    name: String,
    /// `[federation]`.
    config: FederationConfig,
    /// Largest frame this hub reads (`limits.max_frame_bytes`), told to peers.
    max_frame: usize,
    /// Channel grammar limits.
    limits: NameLimits,
    /// Where received events are published.
    channels: Arc<ChannelManager>,
    /// Task routing, for forwarded tasks.
    tasks: Arc<TaskService>,
    /// Configured peers by name.
    peers: BTreeMap<String, Arc<Peer>>,
    /// Per peer: state, errors, the link while up.
    status: Mutex<BTreeMap<String, PeerStatus>>,
    /// Links that are up, by link id.
    links: DashMap<u64, Arc<Link>>,
    /// The publish path's view: which links want which patterns.
    hook: Arc<Hook>,
    /// Interest and capacity tables.
    tables: Mutex<Tables>,
    /// Events seen recently, by (origin, message id).
    dedup: Mutex<Dedup>,
    /// Local interest changed; the debouncer recomputes it.
    local_dirty: Arc<Notify>,
    /// The interest in `tables` may be out of date: the debouncer skips the
    /// work while no link is up (it walks every local pattern, which a hub
    /// without peers must not pay for on every subscribe), and the first
    /// link to come up recomputes it before its first advert.
    interest_stale: AtomicBool,
    /// Local worker capacity changed; the debouncer recomputes it.
    capacity_dirty: Notify,
    /// Task forwarding bookkeeping.
    forwarded: tasks::Forwarded,
    /// Calls over links.
    calls: calls::FederatedCalls,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent before it can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the federation needs from the hub it runs in. The hub implements
/// it (it sits above this module), so federation imports nothing of the
/// hub and callbacks point one way.
pub(crate) trait Host: Send + Sync {
    /// Cancelled when the hub starts shutting down.
    fn shutdown_token(&self) -> &CancellationToken;
    /// Tracks the federation's tasks for shutdown.
    fn tracker(&self) -> &TaskTracker;
    /// Whether shutdown has begun.
    fn is_shutting_down(&self) -> bool;
    /// A fresh connection id (a link is one of the hub's connections).
    fn next_client_id(&self) -> u64;
    /// Makes a link's queue reachable for direct messages (task
    /// assignments) until the returned guard is dropped, which also hands
    /// back any task the link held.
    fn register_connection(&self, subscriber: &Arc<Subscriber>) -> Box<dyn Send + Sync>;
    /// The hub's federation.
    fn federation(&self) -> &Arc<Federation>;
}

/// The hub, as the federation holds it.
pub(crate) type HubRef = Arc<dyn Host>;

/// A version stamp that only grows, also across restarts.
fn next_version(previous: u64) -> u64 {
    now_ms().max(previous + 1)
}

impl Federation {
    /// Builds the federation state from `[federation]` (loads or creates
    /// the hub id in `data_dir`); `max_frame` and `match_cache` are
    /// `limits.max_frame_bytes` and `limits.match_cache`.
    pub(crate) fn new(
        fed: &FederationConfig,
        data_dir: &std::path::Path,
        limits: NameLimits,
        (max_frame, match_cache): (usize, usize),
        channels: Arc<ChannelManager>,
        tasks: Arc<TaskService>,
    ) -> Result<Arc<Federation>, ConfigError> {
        let hub_id = identity::load_or_create_hub_id(fed, data_dir)?;
        let parse = |list: &[String]| -> Vec<Pattern> {
            list.iter()
                .filter_map(|p| Pattern::parse(p, &limits).ok())
                .collect()
        };
        let peers: BTreeMap<String, Arc<Peer>> = fed
            .peers
            .iter()
            .map(|p| {
                let peer = Peer {
                    config: p.clone(),
                    export: parse(&p.export),
                    import: parse(&p.import),
                    call_export: parse(&p.call_export),
                    call_import: parse(&p.call_import),
                };
                (p.name.clone(), Arc::new(peer))
            })
            .collect();
        let status = peers
            .iter()
            .map(|(name, peer)| {
                let state = if peer.config.url.is_some() {
                    LinkState::Connecting
                } else {
                    LinkState::Idle
                };
                let status = PeerStatus {
                    state,
                    since: now_ms(),
                    attempts: 0,
                    last_error: None,
                    link: None,
                    down: Arc::new(Notify::new()),
                };
                (name.clone(), status)
            })
            .collect();
        let local_dirty = Arc::new(Notify::new());
        let hook_id = hub_id.clone();
        Ok(Arc::new(Federation {
            name: fed.name.clone().unwrap_or_else(|| hub_id.clone()),
            hub_id,
            config: fed.clone(),
            max_frame,
            limits,
            channels,
            tasks,
            peers,
            status: Mutex::new(status),
            links: DashMap::new(),
            hook: Arc::new(Hook {
                hub_id: hook_id,
                max_hops: fed.max_hops,
                index: SubscriptionIndex::new(match_cache),
                links_up: AtomicUsize::new(0),
                local_dirty: Arc::clone(&local_dirty),
            }),
            tables: Mutex::new(Tables {
                interest: Table::new(),
                capacity: Table::new(),
                own_interest: (0, Vec::new()),
                own_capacity: (0, Vec::new()),
            }),
            dedup: Mutex::new(Dedup::new(fed.dedup_window)),
            local_dirty,
            interest_stale: AtomicBool::new(true),
            capacity_dirty: Notify::new(),
            forwarded: tasks::Forwarded::default(),
            calls: calls::FederatedCalls::default(),
        }))
    }

    /// This hub's id.
    pub(crate) fn hub_id(&self) -> &str {
        &self.hub_id
    }

    /// This hub's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What the channel manager calls on every publish.
    pub(crate) fn hook(&self) -> Arc<dyn Forwarder> {
        self.hook.clone()
    }

    /// `[federation]`.
    pub(crate) fn config(&self) -> &FederationConfig {
        &self.config
    }

    /// What this hub says in `hub:hello`.
    pub(crate) fn hello(&self) -> HubHello {
        HubHello {
            hub_id: self.hub_id.clone(),
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            region: self.config.region.clone(),
            labels: self.config.labels.clone(),
            max_frame_bytes: self.max_frame,
            id: None,
        }
    }

    /// Publishes a federation event (`hub:connected`, ...) on this hub.
    fn announce(&self, channel: &str, data: Value) {
        if let Ok(channel) = ChannelName::parse(channel, &self.limits) {
            self.channels.publish_data(channel, data);
        }
    }

    /// Starts the background work: the debouncers and one dialer per peer
    /// with a `url`. Everything stops with the hub's shutdown token.
    pub(crate) fn start(self: &Arc<Self>, hub: &HubRef) {
        let tracker = hub.tracker();
        tracker.spawn(Arc::clone(self).debounce_interest(hub.clone()));
        tracker.spawn(Arc::clone(self).debounce_capacity(hub.clone()));
        for peer in self.peers.values() {
            if peer.config.url.is_some() {
                tracker.spawn(dial::run(Arc::clone(self), hub.clone(), Arc::clone(peer)));
            }
        }
        // Adverts start from the current state.
        self.local_dirty.notify_one();
        self.capacity_dirty.notify_one();
    }

    /// The configured peer named `name`.
    pub(crate) fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers.get(name).cloned()
    }

    /// Records a dial attempt's progress or failure.
    pub(crate) fn set_dial_state(&self, peer: &str, state: LinkState, error: Option<String>) {
        let mut status = lock(&self.status);
        if let Some(s) = status.get_mut(peer) {
            if s.link.is_some() {
                return;
            }
            if error.is_some() {
                s.attempts = s.attempts.saturating_add(1);
                s.last_error = error;
            }
            if s.state != state {
                s.state = state;
                s.since = now_ms();
            }
        }
    }

    /// The link to `peer` while up, and the notifier of its going down.
    pub(crate) fn peer_link(&self, peer: &str) -> (Option<Arc<Link>>, Option<Arc<Notify>>) {
        let status = lock(&self.status);
        match status.get(peer) {
            Some(s) => (s.link.clone(), Some(Arc::clone(&s.down))),
            None => (None, None),
        }
    }

    /// Makes a link official once hellos are exchanged, or says why not.
    /// Two links to one peer (both hubs dialed at once) resolve the same
    /// way on both sides: the one dialed by the hub with the smaller id
    /// stays; a newer link from the same dialer replaces an older one (the
    /// peer restarted before the old one timed out).
    pub(crate) fn register(
        self: &Arc<Self>,
        hub: &HubRef,
        peer: &Arc<Peer>,
        hello: HubHello,
        direction: Direction,
        expires_at: Option<u64>,
    ) -> Result<link::Parts, RefusalReason> {
        if hub.is_shutting_down() {
            return Err(RefusalReason::ShuttingDown);
        }
        if hello.hub_id == self.hub_id {
            return Err(RefusalReason::SameHubId);
        }
        let dialer = |direction: Direction, peer_id: &str| match direction {
            Direction::Dialed => self.hub_id.clone(),
            Direction::Accepted => peer_id.to_string(),
        };
        let mut status = lock(&self.status);
        let Some(entry) = status.get_mut(&peer.config.name) else {
            return Err(RefusalReason::UnknownPeer);
        };
        if let Some(existing) = &entry.link {
            let old = dialer(existing.direction, &existing.hello.hub_id);
            let new = dialer(direction, &hello.hub_id);
            if old != new && old < new {
                return Err(RefusalReason::AlreadyLinked);
            }
            existing.kick("replaced by a newer link to the same peer".into());
        }
        let parts = Link::open(
            hub,
            Arc::clone(peer),
            hello,
            direction,
            self.config.link_queue,
            expires_at,
        );
        entry.link = Some(Arc::clone(&parts.link));
        entry.state = LinkState::Up;
        entry.since = now_ms();
        entry.attempts = 0;
        entry.last_error = None;
        drop(status);
        let link = &parts.link;
        self.links.insert(link.id, Arc::clone(link));
        self.hook.links_up.fetch_add(1, Ordering::Relaxed);
        if self.interest_stale.swap(false, Ordering::SeqCst) {
            self.refresh_own_interest();
        }
        tracing::info!(
            peer = %peer.config.name,
            peer_id = %link.hello.hub_id,
            direction = direction.as_str(),
            "federation link up"
        );
        self.announce("hub:connected", self.link_event(link, None));
        self.tasks_link_up(link);
        self.calls_link_up(link);
        self.mark_all_dirty();
        Ok(parts)
    }

    /// Tears down what a link left behind.
    pub(crate) fn unregister(&self, link: &Arc<Link>, reason: &str) {
        {
            let mut status = lock(&self.status);
            if let Some(entry) = status.get_mut(&link.peer.config.name) {
                if entry.link.as_ref().is_some_and(|l| l.id == link.id) {
                    entry.link = None;
                    entry.state = if link.peer.config.url.is_some() {
                        LinkState::Backoff
                    } else {
                        LinkState::Idle
                    };
                    entry.since = now_ms();
                    entry.last_error = Some(reason.to_string());
                    entry.down.notify_one();
                }
            }
        }
        if self.links.remove(&link.id).is_some() {
            self.hook.links_up.fetch_sub(1, Ordering::Relaxed);
        }
        for pattern in std::mem::take(&mut *lock(&link.send_patterns)) {
            self.hook.index.remove(&pattern, link.id);
        }
        {
            let mut tables = lock(&self.tables);
            tables.interest.drop_link(link.id);
            tables.capacity.drop_link(link.id);
        }
        self.tasks_link_down(link);
        self.calls_link_down(link);
        tracing::info!(peer = %link.peer.config.name, reason, "federation link down");
        self.announce("hub:disconnected", self.link_event(link, Some(reason)));
        self.mark_all_dirty();
    }

    fn link_event(&self, link: &Link, reason: Option<&str>) -> Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct LinkEvent<'a> {
            peer: &'a str,
            peer_id: &'a str,
            direction: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            region: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
        }
        serde_json::to_value(LinkEvent {
            peer: &link.peer.config.name,
            peer_id: &link.hello.hub_id,
            direction: link.direction.as_str(),
            region: link.hello.region.as_deref(),
            reason,
        })
        .unwrap_or(Value::Null)
    }

    // ---- the API ----

    /// `GET /api/federation`.
    pub(crate) fn view(&self) -> FederationView {
        let status = lock(&self.status);
        let links = status
            .iter()
            .map(|(name, s)| match &s.link {
                Some(link) => LinkView {
                    capacity: self.capacity_via(link),
                    ..link.view()
                },
                None => LinkView {
                    peer: name.clone(),
                    peer_id: None,
                    state: s.state,
                    direction: None,
                    since: s.since,
                    rtt_ms: None,
                    attempts: s.attempts,
                    last_error: s.last_error.clone(),
                    interest_in: 0,
                    interest_out: 0,
                    capacity: Vec::new(),
                    counters: Default::default(),
                },
            })
            .collect();
        FederationView {
            hub_id: self.hub_id.clone(),
            name: self.name.clone(),
            region: self.config.region.clone(),
            links,
        }
    }

    /// Closes the link to `peer` (it is redialed with backoff, or the peer
    /// redials). For operators and tests; false when no link is up.
    pub(crate) fn disconnect(&self, peer: &str) -> bool {
        match self.peer_link(peer).0 {
            Some(link) => {
                link.kick("disconnected by an operator".into());
                true
            }
            None => false,
        }
    }
}
