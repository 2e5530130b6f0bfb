//! One dialer per peer with a `url`: dial, run the link while it lasts,
//! and after a failure wait a random delay in `[0, min(max, initial *
//! 2^attempt)]` (exponential backoff with full jitter, the client's
//! [`Backoff`]) so hubs that lost each other do not all redial at once.
//! While a link to the peer is up — including one the peer dialed — the
//! dialer waits for it to go down instead of dialing a second one.

use std::sync::Arc;

use super::HubRef;
use super::{Federation, Peer};
use crate::client::Backoff;
use crate::protocol::federation::LinkState;

pub(crate) async fn run(fed: Arc<Federation>, hub: HubRef, peer: Arc<Peer>) {
    let shutdown = hub.shutdown_token().clone();
    let backoff = Backoff {
        base: fed.config().reconnect_initial,
        cap: fed.config().reconnect_max,
    };
    let name = peer.config.name.clone();
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // A link the peer dialed counts: wait until it is gone.
        if let (Some(_), Some(down)) = fed.peer_link(&name) {
            let notified = down.notified();
            if fed.peer_link(&name).0.is_some() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = notified => {}
                }
            }
            failures = 0;
        } else {
            fed.set_dial_state(&name, LinkState::Connecting, None);
            let dialed = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = super::handshake::dial(&fed, &hub, &peer) => result,
            };
            match dialed {
                Ok(()) => failures = 0,
                Err(reason) => {
                    tracing::warn!(peer = %name, attempt = failures + 1, "federation dial failed: {reason}");
                    fed.set_dial_state(&name, LinkState::Backoff, Some(reason));
                    failures = failures.saturating_add(1);
                }
            }
        }
        let delay = backoff.delay(failures);
        fed.set_dial_state(&name, LinkState::Backoff, None);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
