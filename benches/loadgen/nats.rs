//! The NATS client protocol over WebSocket, as much of it as the scenarios
//! need: `CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`.
//!
//! The server's WebSocket frames carry the same byte stream as a TCP
//! connection and may split or join protocol messages anywhere, so inbound
//! frames are appended to a buffer and parsed as a stream.

use anyhow::{Context, Result, bail};

use crate::rawws::{RawWs, opcode};

/// Largest outbound frame the publisher builds before handing it to the
/// socket: `PUB`s due at the same moment share a frame, as they do in
/// NATS's own WebSocket clients.
const MAX_OUT_FRAME: usize = 32 * 1024;

/// One message delivered by the server.
pub(crate) struct Delivery<'a> {
    /// The `reply-to` subject, for requests.
    pub(crate) reply: Option<&'a [u8]>,
    /// The message body.
    pub(crate) payload: &'a [u8],
}

/// A NATS connection over WebSocket.
pub(crate) struct NatsConn {
    ws: RawWs,
    /// Inbound bytes not parsed yet.
    inbound: Vec<u8>,
    /// Outbound protocol bytes not yet in a frame.
    outbound: Vec<u8>,
    /// `PONG`s received; `flush_ping` waits for one.
    pongs: u64,
}

impl NatsConn {
    /// Connects and sends `CONNECT` with the token (auth is on for both
    /// brokers), then `extra` protocol lines (e.g. `SUB`), then `PING`, and
    /// waits for the `PONG`: everything before it has been processed.
    pub(crate) async fn connect(
        addr: std::net::SocketAddr,
        token: &str,
        extra: &str,
        read_buffer: usize,
    ) -> Result<NatsConn> {
        let ws = RawWs::connect(addr, "/", read_buffer).await?;
        let mut conn = NatsConn {
            ws,
            inbound: Vec::with_capacity(1024),
            outbound: Vec::new(),
            pongs: 0,
        };
        let connect = serde_json::json!({
            "verbose": false, "pedantic": false, "tls_required": false,
            "auth_token": token, "name": "loadgen", "lang": "rust", "version": "0",
            "protocol": 1, "echo": false, "headers": false, "no_responders": false,
        });
        conn.outbound
            .extend_from_slice(format!("CONNECT {connect}\r\n{extra}").as_bytes());
        conn.flush_ping().await.context("NATS connect")?;
        Ok(conn)
    }

    /// Queues a `PUB` (optionally with a reply subject).
    pub(crate) async fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<()> {
        let out = &mut self.outbound;
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(subject.as_bytes());
        if let Some(reply) = reply {
            out.push(b' ');
            out.extend_from_slice(reply.as_bytes());
        }
        out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        if out.len() >= MAX_OUT_FRAME {
            self.feed_outbound().await?;
        }
        Ok(())
    }

    async fn feed_outbound(&mut self) -> Result<()> {
        if !self.outbound.is_empty() {
            self.ws.queue(opcode::BINARY, &self.outbound);
            self.outbound.clear();
        }
        Ok(())
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.feed_outbound().await?;
        self.ws.flush().await?;
        Ok(())
    }

    /// Sends `PING` after everything queued and waits for the `PONG`.
    pub(crate) async fn flush_ping(&mut self) -> Result<()> {
        self.outbound.extend_from_slice(b"PING\r\n");
        self.flush().await?;
        let want = self.pongs + 1;
        while self.pongs < want {
            if !self.recv(&mut |_| {}).await? {
                bail!("connection closed before PONG");
            }
        }
        Ok(())
    }

    /// Waits for the next frame, then handles it and every frame already
    /// buffered, calling `on_msg` for each `MSG`. Answers `PING`s. Returns
    /// false once the connection is closed.
    pub(crate) async fn recv(
        &mut self,
        on_msg: &mut (dyn FnMut(Delivery<'_>) + Send),
    ) -> Result<bool> {
        let inbound = &mut self.inbound;
        let open = self
            .ws
            .read(&mut |_, bytes| inbound.extend_from_slice(bytes))
            .await?;
        let pings = self.parse(on_msg)?;
        for _ in 0..pings {
            self.outbound.extend_from_slice(b"PONG\r\n");
        }
        if pings > 0 || self.ws.has_queued() {
            self.flush().await?;
        }
        Ok(open)
    }

    /// Parses complete protocol messages; returns how many `PING`s came.
    fn parse(&mut self, on_msg: &mut (dyn FnMut(Delivery<'_>) + Send)) -> Result<usize> {
        let buf = &self.inbound;
        let mut pos = 0;
        let mut pings = 0;
        while let Some(eol) = find_crlf(&buf[pos..]) {
            let line = &buf[pos..pos + eol];
            let after_line = pos + eol + 2;
            if let Some(args) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let mut fields: [&[u8]; 4] = [&[]; 4];
                let mut n = 0;
                for field in args.split(|&b| b == b' ').filter(|f| !f.is_empty()) {
                    *fields.get_mut(n).context("bad MSG line")? = field;
                    n += 1;
                }
                let size = n
                    .checked_sub(1)
                    .and_then(|last| std::str::from_utf8(fields[last]).ok())
                    .and_then(|f| f.parse::<usize>().ok())
                    .context("bad MSG line")?;
                let end = after_line + size;
                if end + 2 > buf.len() {
                    break;
                }
                let reply = (n == 4).then_some(fields[2]);
                on_msg(Delivery {
                    reply,
                    payload: &buf[after_line..end],
                });
                pos = end + 2;
                continue;
            }
            match line {
                b"PING" => pings += 1,
                b"PONG" => self.pongs += 1,
                _ if line.starts_with(b"-ERR") => {
                    bail!("NATS error: {}", String::from_utf8_lossy(line))
                }
                // INFO, +OK
                _ => {}
            }
            pos = after_line;
        }
        self.inbound.drain(..pos);
        Ok(pings)
    }

    /// Waits for the next inbound frame and ignores its messages (a
    /// publisher's socket only carries `PING`s and errors).
    pub(crate) async fn discard_next(&mut self) -> Result<bool> {
        self.recv(&mut |_| {}).await
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
