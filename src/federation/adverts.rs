//! Interest and capacity adverts: what each link should be told, what a
//! peer told, and keeping the event index and the peers' remote workers in
//! line with it. The rules themselves are in `routes`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::HubRef;
use super::link::Link;
use super::routes::{Route, narrow, reduce};
use super::{Adverts, Federation, lock, next_version};
use crate::channels::Pattern;
use crate::protocol::federation::CapabilityLoad;

impl Federation {
    /// Recomputes local interest after changes settle.
    pub(super) async fn debounce_interest(self: Arc<Self>, hub: HubRef) {
        let shutdown = hub.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.local_dirty.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.debounce) => {}
            }
            // Without a link nobody reads the interest: mark it stale
            // (first, so a link coming up meanwhile sees the mark) and skip
            // the walk over every local pattern.
            self.interest_stale.store(true, Ordering::SeqCst);
            if !self.links.is_empty() {
                self.refresh_own_interest();
            }
        }
    }

    /// Brings the interest told to peers in line with the local
    /// subscriptions; marks every link dirty when it changed.
    pub(super) fn refresh_own_interest(&self) {
        self.interest_stale.store(false, Ordering::SeqCst);
        let patterns = reduce(self.channels.local_patterns());
        let changed = {
            let mut tables = lock(&self.tables);
            if tables.own_interest.1 != patterns {
                tables.own_interest = (next_version(tables.own_interest.0), patterns);
                true
            } else {
                false
            }
        };
        if changed {
            self.mark_all_dirty();
        }
    }

    /// Recomputes local capacity after changes settle.
    pub(super) async fn debounce_capacity(self: Arc<Self>, hub: HubRef) {
        let shutdown = hub.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.capacity_dirty.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.debounce) => {}
            }
            let loads = self.tasks.capacity();
            let changed = {
                let mut tables = lock(&self.tables);
                if tables.own_capacity.1 != loads {
                    tables.own_capacity = (next_version(tables.own_capacity.0), loads);
                    true
                } else {
                    false
                }
            };
            if changed {
                self.mark_all_dirty();
            }
        }
    }

    /// Every link recomputes its adverts (after its debounce).
    pub(super) fn mark_all_dirty(&self) {
        for link in self.links.iter() {
            link.dirty.notify_one();
        }
    }

    /// What `link` should be told now.
    pub(crate) fn adverts_for(&self, link: &Link) -> Adverts {
        let peer_id = &link.hello.hub_id;
        let max_hops = self.config.max_hops;
        let tables = lock(&self.tables);
        let texts = |list: Vec<Pattern>| list.iter().map(|p| p.as_str().to_string()).collect();
        let mut interest = BTreeMap::new();
        let (version, own) = &tables.own_interest;
        interest.insert(
            self.hub_id.clone(),
            (*version, 0, texts(narrow(own, &link.peer.import))),
        );
        for (origin, (version, hops, payloads)) in
            tables.interest.others(link.id, peer_id, max_hops)
        {
            let union: Vec<Pattern> = payloads.into_iter().flatten().cloned().collect();
            let narrowed = narrow(&reduce(union), &link.peer.import);
            interest.insert(origin, (version, hops, texts(narrowed)));
        }
        let mut capacity = BTreeMap::new();
        let (version, own) = &tables.own_capacity;
        capacity.insert(self.hub_id.clone(), (*version, 0, own.clone()));
        for (origin, (version, hops, payloads)) in
            tables.capacity.others(link.id, peer_id, max_hops)
        {
            let loads = payloads.first().map(|p| (*p).clone()).unwrap_or_default();
            capacity.insert(origin, (version, hops, loads));
        }
        Adverts { interest, capacity }
    }

    /// `hub:interest` from `link`.
    pub(crate) fn on_interest(
        &self,
        link: &Arc<Link>,
        origin: &str,
        version: u64,
        hops: u32,
        patterns: &[String],
    ) {
        if origin == self.hub_id {
            return;
        }
        let parsed: Vec<Pattern> = patterns
            .iter()
            .filter_map(|p| Pattern::parse(p, &self.limits).ok())
            .collect();
        let payload = narrow(&parsed, &link.peer.export);
        let route = Route {
            version,
            hops,
            payload,
        };
        let changed = lock(&self.tables).interest.hear(link.id, origin, route);
        if changed {
            // A newer version may have outdated entries heard elsewhere.
            self.refresh_all_interest();
            self.mark_all_dirty();
        }
    }

    /// `hub:capacity` from `link`.
    pub(crate) fn on_capacity(
        &self,
        link: &Arc<Link>,
        origin: &str,
        version: u64,
        hops: u32,
        loads: Vec<CapabilityLoad>,
    ) {
        if origin == self.hub_id {
            return;
        }
        let route = Route {
            version,
            hops,
            payload: loads,
        };
        let changed = lock(&self.tables).capacity.hear(link.id, origin, route);
        if changed {
            self.refresh_all_capacity();
            self.mark_all_dirty();
        }
    }

    /// `hub:withdraw` from `link`.
    pub(crate) fn on_withdraw(
        &self,
        link: &Arc<Link>,
        origin: &str,
        table: crate::protocol::federation::Table,
    ) {
        use crate::protocol::federation::Table as Which;
        let changed = {
            let mut tables = lock(&self.tables);
            match table {
                Which::Interest => tables.interest.withdraw(link.id, origin),
                Which::Capacity => tables.capacity.withdraw(link.id, origin),
            }
        };
        if changed {
            match table {
                Which::Interest => self.refresh_interest(link),
                Which::Capacity => self.refresh_capacity(link),
            }
            self.mark_all_dirty();
        }
    }

    fn refresh_all_interest(&self) {
        let links: Vec<Arc<Link>> = self.links.iter().map(|l| Arc::clone(&l)).collect();
        for link in &links {
            self.refresh_interest(link);
        }
    }

    pub(super) fn refresh_all_capacity(&self) {
        let links: Vec<Arc<Link>> = self.links.iter().map(|l| Arc::clone(&l)).collect();
        for link in &links {
            self.refresh_capacity(link);
        }
    }

    /// Brings the event index in line with what `link`'s side wants.
    fn refresh_interest(&self, link: &Arc<Link>) {
        let wanted = {
            let tables = lock(&self.tables);
            let all: Vec<Pattern> = tables
                .interest
                .via(link.id, self.config.max_hops)
                .into_iter()
                .flat_map(|(_, r)| r.payload.iter().cloned())
                .collect();
            reduce(all)
        };
        let mut held = lock(&link.send_patterns);
        if !self.links.contains_key(&link.id) {
            // The link is going down; unregister clears the index.
            return;
        }
        for old in held.iter() {
            if !wanted.contains(old) {
                self.hook.index.remove(old, link.id);
            }
        }
        for new in &wanted {
            if !held.contains(new) {
                self.hook.index.insert(new, link.id, Arc::clone(link));
            }
        }
        *held = wanted;
    }

    /// What the hubs reached over `link` offer, per capability: workers
    /// and free slots added up.
    pub(super) fn capacity_via(&self, link: &Link) -> Vec<CapabilityLoad> {
        let tables = lock(&self.tables);
        let mut sum: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for (_, route) in tables.capacity.via(link.id, self.config.max_hops) {
            for load in &route.payload {
                let entry = sum.entry(load.capability.clone()).or_default();
                entry.0 += load.workers;
                entry.1 += load.free_slots;
            }
        }
        sum.into_iter()
            .map(|(capability, (workers, free_slots))| CapabilityLoad {
                capability,
                workers,
                free_slots,
            })
            .collect()
    }
}
