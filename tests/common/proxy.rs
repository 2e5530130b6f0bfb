//! A TCP proxy in front of a hub, so a test can drop a client's
//! connection (a network failure) while the hub keeps running, then let
//! the client reconnect.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of the hub, to drop the client's connection while
/// the hub keeps running.
pub struct Proxy {
    addr: SocketAddr,
    /// Whether new connections are forwarded (else closed at once).
    open: watch::Sender<bool>,
    /// Bumped to cut every forwarded connection.
    cuts: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(hub: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, open_rx) = watch::channel(true);
        let (cuts, cuts_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*open_rx.borrow() {
                    continue; // dropped: the client's attempt fails
                }
                let mut cut = cuts_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(hub).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cuts }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Refuses new connections and cuts the current ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn reopen(&self) {
        self.open.send_replace(true);
    }
}
