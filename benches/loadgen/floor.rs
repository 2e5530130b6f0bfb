//! The loopback floor for one-at-a-time calls: what a round trip costs on
//! this machine with no broker logic at all. `floor echo` is a TCP echo
//! server (tokio, current-thread, like the generator); `floor ping` sends
//! one byte and waits for it back, `--round-trips` times per measured
//! operation, one operation at a time. A call through any broker is two
//! round trips (caller → broker → server and back), so `--round-trips 2`
//! against an echo pinned where the broker runs is the least a call can
//! take here.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats;

/// Echoes every byte back on every connection, until killed.
pub(crate) async fn echo(listen: std::net::SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// `ops` operations of `round_trips` one-byte round trips each, after
/// 1,000 warm-up round trips; prints p50 / p99 / p99.9 of an operation.
pub(crate) async fn ping(addr: std::net::SocketAddr, round_trips: u32, ops: usize) -> Result<()> {
    let mut socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    socket.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    for _ in 0..1_000 {
        socket.write_all(&byte).await?;
        socket.read_exact(&mut byte).await?;
    }
    let mut took: Vec<Duration> = Vec::with_capacity(ops);
    let deadline = Instant::now() + Duration::from_secs(30);
    while took.len() < ops && Instant::now() < deadline {
        let start = Instant::now();
        for _ in 0..round_trips {
            socket.write_all(&byte).await?;
            socket.read_exact(&mut byte).await?;
        }
        took.push(start.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "loopback floor: {} × {round_trips} round trip(s): p50 {}, p99 {}, p99.9 {}",
        took.len(),
        stats::fmt_us(at(0.5).as_micros() as u64),
        stats::fmt_us(at(0.99).as_micros() as u64),
        stats::fmt_us(at(0.999).as_micros() as u64),
    );
    Ok(())
}
