//! A lean WebSocket client for the subscribers of both brokers: a
//! hand-written upgrade request, masked client frames, and a reader that
//! parses every complete frame in one socket read in place — no per-frame
//! allocation, no UTF-8 validation, no copy.
//!
//! Why: with tungstenite's reader the generator spent most of its core on
//! per-frame work (a message allocation, UTF-8 validation, the stream
//! machinery), and chanhub sends one frame per event where NATS packs a
//! whole flush into one frame, so the generator — not the broker — bounded
//! chanhub's fan-out figure. Both brokers' subscribers now read through
//! this same code.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// A fixed example key: the bench does not check `Sec-WebSocket-Accept`
/// (both servers are local and known), only the `101` status.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Socket reads after the first one per wake-up, while data keeps coming:
/// a busy subscriber drains what the kernel holds without a trip through
/// the scheduler per read, but cannot starve the others.
const EXTRA_READS: usize = 4;

/// An open client WebSocket.
pub(crate) struct RawWs {
    tcp: TcpStream,
    /// Bytes read and not yet parsed, from `start`.
    inbound: Vec<u8>,
    start: usize,
    /// How much to make room for before each read.
    read_size: usize,
    /// Masked frames not yet written.
    outbound: Vec<u8>,
    /// Masking key state (xorshift), one per connection.
    mask_state: u32,
}

impl RawWs {
    /// Connects to `ws://addr{path}` with TCP_NODELAY and completes the
    /// upgrade. `read_size` is the room made for each socket read.
    pub(crate) async fn connect(addr: SocketAddr, path: &str, read_size: usize) -> Result<RawWs> {
        let mut tcp = crate::client::tcp_connect(addr)
            .await
            .with_context(|| format!("connecting to {addr} (is `ulimit -n` high enough?)"))?;
        tcp.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut inbound = Vec::with_capacity(read_size.max(1024));
        let head_end = loop {
            if let Some(i) = inbound.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if tcp.read_buf(&mut inbound).await? == 0 {
                bail!("WebSocket handshake: connection closed before the response");
            }
        };
        if !inbound.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&inbound[..head_end]);
            bail!("WebSocket handshake refused: {}", head.trim());
        }
        let seed = u32::from(addr.port()) ^ (std::process::id() << 8) ^ 0x9E37_79B9;
        Ok(RawWs {
            tcp,
            inbound,
            start: head_end,
            read_size,
            outbound: Vec::new(),
            mask_state: seed | 1,
        })
    }

    /// Queues one masked frame (written by [`flush`](Self::flush)).
    pub(crate) fn queue(&mut self, op: u8, payload: &[u8]) {
        let out = &mut self.outbound;
        out.push(0x80 | op);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: a different key per frame, as RFC 6455 asks.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }

    /// Whether frames are queued and not yet written.
    pub(crate) fn has_queued(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// Writes every queued frame.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if !self.outbound.is_empty() {
            self.tcp.write_all(&self.outbound).await?;
            self.outbound.clear();
        }
        Ok(())
    }

    /// Waits for bytes, then reads whatever else the kernel already holds
    /// (a few reads at most) and calls `on_frame(opcode, payload)` for every
    /// complete data frame (text, binary or continuation). Answers pings
    /// (the pong is queued; call [`flush`](Self::flush) when
    /// [`has_queued`](Self::has_queued)). Returns false once the
    /// connection is closed (close frame or end of stream).
    pub(crate) async fn read<F: FnMut(u8, &[u8])>(&mut self, on_frame: &mut F) -> Result<bool> {
        if self.parse(on_frame)? {
            return Ok(false);
        }
        self.make_room();
        if self.tcp.read_buf(&mut self.inbound).await? == 0 {
            return Ok(false);
        }
        for _ in 0..EXTRA_READS {
            if self.parse(on_frame)? {
                return Ok(false);
            }
            self.make_room();
            match self.tcp.try_read_buf(&mut self.inbound) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(!self.parse(on_frame)?)
    }

    /// Moves unparsed bytes to the front and reserves `read_size`.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.inbound.drain(..self.start);
            self.start = 0;
        }
        self.inbound.reserve(self.read_size);
    }

    /// Handles every complete frame in the buffer; true when a close frame
    /// came.
    fn parse<F: FnMut(u8, &[u8])>(&mut self, on_frame: &mut F) -> Result<bool> {
        loop {
            let buf = &self.inbound[self.start..];
            let Some((op, header, len)) = frame_header(buf)? else {
                return Ok(false);
            };
            if buf.len() < header + len {
                return Ok(false);
            }
            let payload = &buf[header..header + len];
            self.start += header + len;
            match op {
                opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => on_frame(op, payload),
                opcode::PING => {
                    let payload = payload.to_vec();
                    self.queue(opcode::PONG, &payload);
                }
                opcode::PONG => {}
                opcode::CLOSE => return Ok(true),
                other => bail!("unknown WebSocket opcode {other:#x}"),
            }
        }
    }
}

/// Parses a server frame's header: (opcode, header length, payload length),
/// or None when the header is not complete yet.
fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        bail!("a server frame must not be masked");
    }
    let (header, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().context("frame length")?);
                (10, usize::try_from(len).context("frame length")?)
            }
            None => return Ok(None),
        },
        short => (2, usize::from(short)),
    };
    Ok(Some((b0 & 0x0F, header, len)))
}
