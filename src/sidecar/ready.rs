//! The ready signal: one JSON line on stdout, and optionally the same JSON
//! in a file written atomically (write a temporary file beside it, then
//! rename), once the hub accepts connections and `/readyz` would say 200.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

/// `{"event":"ready","pid":...,"listen":...,"ws":...,"http":...,...}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    event: &'static str,
    /// The hub's process id.
    pub pid: u32,
    /// The bound address, e.g. `127.0.0.1:43121` (the real port when
    /// `--listen` asked for port 0).
    pub listen: String,
    /// WebSocket URL: `ws://<listen>/ws`.
    pub ws: String,
    /// HTTP base URL: `http://<listen>`.
    pub http: String,
    /// The hub's version.
    pub version: &'static str,
    /// The hub's stable id (federation).
    pub hub_id: String,
    /// The data directory in use.
    pub data_dir: String,
}

impl Ready {
    /// The ready message of a hub bound to `addr`.
    pub fn new(addr: SocketAddr, hub_id: &str, data_dir: &Path) -> Ready {
        Ready {
            event: "ready",
            pid: std::process::id(),
            listen: addr.to_string(),
            ws: format!("ws://{addr}/ws"),
            http: format!("http://{addr}"),
            version: env!("CARGO_PKG_VERSION"),
            hub_id: hub_id.to_string(),
            data_dir: data_dir.display().to_string(),
        }
    }
}

/// Prints `value` as one JSON line on stdout and flushes it.
pub fn print_line(value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()
}

/// Writes `value` as JSON to `path` atomically: a reader sees no file or
/// the whole of it.
pub fn write_file(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut tmp, value).map_err(std::io::Error::other)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
