//! A `curl -N`-style SSE subscriber: one raw HTTP/1.1 request over a
//! `TcpStream`, a chunked-body decoder, and a line splitter that reports
//! the `data:` line of every event frame (one preceded by an `id:` line;
//! the `connected` frame has none).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the chunked-transfer decoder is.
enum Chunk {
    /// Expecting a `<hex size>\r\n` line.
    Size,
    /// This many body bytes left in the current chunk.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    End,
    /// The zero-size chunk came: the stream is over.
    Done,
}

/// An open event stream.
pub(crate) struct SseConn {
    tcp: TcpStream,
    /// Raw bytes read, not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes, not yet split into lines.
    body: Vec<u8>,
    chunk: Chunk,
    /// The previous line was `id: …`, so the next `data:` line is an event.
    saw_id: bool,
}

impl SseConn {
    /// Opens `GET /api/stream?channels=<pattern>&token=<token>` and waits
    /// for the `connected` frame (the subscriptions exist before it is sent).
    pub(crate) async fn connect(addr: SocketAddr, pattern: &str, token: &str) -> Result<SseConn> {
        let mut tcp = TcpStream::connect(addr).await.context("SSE connect")?;
        tcp.set_nodelay(true)?;
        let request = format!(
            "GET /api/stream?channels={pattern}&token={token} HTTP/1.1\r\n\
             Host: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if tcp.read_buf(&mut raw).await? == 0 {
                bail!("SSE: connection closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("SSE: {}", String::from_utf8_lossy(&raw).trim());
        }
        if !head.contains("transfer-encoding: chunked") {
            bail!("SSE: expected a chunked body");
        }
        raw.drain(..head_end);
        let mut conn = SseConn {
            tcp,
            raw,
            body: Vec::with_capacity(4096),
            chunk: Chunk::Size,
            saw_id: false,
        };
        let mut connected = false;
        while !connected {
            connected = conn.lines(&mut |_| {}, true);
            if !connected && !conn.read_more().await? {
                bail!("SSE: stream ended before the connected frame");
            }
        }
        Ok(conn)
    }

    async fn read_more(&mut self) -> Result<bool> {
        self.raw.reserve(16 * 1024);
        Ok(self.tcp.read_buf(&mut self.raw).await? > 0)
    }

    /// Waits for more bytes and calls `on_event` with the `data:` line of
    /// every complete event frame. Returns false once the stream is over.
    pub(crate) async fn recv(&mut self, on_event: &mut (dyn FnMut(&[u8]) + Send)) -> Result<bool> {
        if !self.read_more().await? {
            return Ok(false);
        }
        self.lines(on_event, false);
        Ok(!matches!(self.chunk, Chunk::Done))
    }

    /// Decodes what has been read and hands out complete lines. Returns
    /// true if a `data:` line without `id:` (the connected frame) was seen.
    fn lines(&mut self, on_event: &mut (dyn FnMut(&[u8]) + Send), want_connected: bool) -> bool {
        self.dechunk();
        let mut connected = false;
        let mut start = 0;
        while let Some(nl) = self.body[start..].iter().position(|&b| b == b'\n') {
            let line = &self.body[start..start + nl];
            if line.starts_with(b"id: ") {
                self.saw_id = true;
            } else if line.starts_with(b"data: ") {
                if self.saw_id {
                    on_event(line);
                } else if want_connected {
                    connected = true;
                }
                self.saw_id = false;
            }
            start += nl + 1;
        }
        self.body.drain(..start);
        connected
    }

    /// Moves chunk data from `raw` into `body`.
    fn dechunk(&mut self) {
        let mut pos = 0;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(eol) = self.raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&self.raw[pos..pos + eol]);
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                    pos += eol + 2;
                    self.chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let take = left.min(self.raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    self.body.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    self.chunk = if take == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::End => {
                    if self.raw.len() - pos < 2 {
                        break;
                    }
                    pos += 2;
                    self.chunk = Chunk::Size;
                }
                Chunk::Done => break,
            }
        }
        self.raw.drain(..pos);
    }
}
