//! Keeps `proto-docs/` honest: every JSON example there is parsed with the
//! real protocol types, and `protocol.md` must name every close code,
//! `auth:failed` reason and `error` code the hub can produce.
//!
//! Convention (see `proto-docs/README.md`): a JSON example is a fenced block
//! whose info string is `json <direction>`:
//!
//! | info string                  | checked as                                   |
//! |------------------------------|----------------------------------------------|
//! | `json client`                | `ClientMessage`, plus serialize round trip   |
//! | `json server`                | `ServerMessage`, plus serialize round trip   |
//! | `json http-publish-request`  | `PublishRequest`, plus round trip            |
//! | `json http-publish-response` | `PublishResponse`, plus round trip           |
//! | `json sse`                   | an SSE `data:` payload (connected or event)  |
//! | `json http-error`            | `{"error":{"code","message"}}`, known code   |
//! | `json claims`                | JWT claims the hub's verifier accepts        |
//! | `json http-health`           | a `/healthz` or `/readyz` body               |
//! | `json task-spec`             | `TaskSpec` (`POST /api/tasks` body)          |
//! | `json task-accepted`         | `Accepted` (`POST /api/tasks` response)      |
//! | `json task-view`             | `TaskView` (one task record)                 |
//! | `json task-list`             | `Vec<TaskView>` (`GET /api/tasks`)           |
//! | `json worker-view`           | `WorkerView` (one worker)                    |
//! | `json worker-list`           | `Vec<WorkerView>` (`GET /api/workers`)       |
//! | `json http-presence`         | `PresenceResponse` (`GET /api/presence`)     |
//! | `json http-presence-stats`   | `PresenceStatsResponse`                      |
//! | `json http-stats`            | `chanhub::metrics::Stats` (`GET /api/stats`) |
//! | `json http-token`            | `TokenResponse` (`POST /api/token`)          |
//! | `json hub`                   | `HubMessage` (hub ↔ hub, federation.md)      |
//! | `json federation-view`       | `FederationView` (`GET /api/federation`)     |
//! | `toml config`                | a config file the hub loads and validates    |
//!
//! A block may hold several JSON values one after another (a sequence of
//! frames); each is checked. A `json` block without a direction fails, so no
//! unchecked example can be added; so does a `toml` block not tagged
//! `config`. A `text sse-stream` block is a raw SSE transcript; its `data:`
//! lines are checked like `json sse`.
//!
//! Inputs (`json client`, `json task-spec`) may omit fields that have a
//! default (`payload`, `result`, `retryable`); everything they show must
//! round-trip. Outputs must round-trip exactly. An event on a task channel
//! (`task:<id>`, `task:queued`, …) must carry a `TaskView` that agrees with
//! the channel, and one on `worker:connected` / `worker:disconnected` a
//! `WorkerView`, because that is what the hub publishes there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chanhub::Config;
use chanhub::auth::{ClientType, Permission, Verifier, mint};
use chanhub::channels::{ChannelName, Pattern};
use chanhub::config::NamespaceConfig;
use chanhub::error::{ApiError, AuthError, CloseReason, ErrorCode, RequestError};
use chanhub::protocol::calls::{CallerInfo, Payload};
use chanhub::protocol::federation::{
    FederationView, HubHello, HubMessage, RefusalReason, Table as FedTable,
};
use chanhub::protocol::history::{
    PresenceInfo, PresenceResponse, PresenceStatsResponse, SseCursor, StreamPosition,
};
use chanhub::protocol::tasks::{Accepted, Assignment, TaskSpec, TaskState, TaskView, WorkerView};
use chanhub::protocol::{
    ClientMessage, Event, Position, PublishRequest, PublishResponse, RequestId, ServerMessage,
    now_ms,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// Files that must exist in `proto-docs/`.
const REQUIRED_FILES: [&str; 7] = [
    "README.md",
    "protocol.md",
    "sse.md",
    "http.md",
    "tasks.md",
    "history.md",
    "monitoring.md",
];

/// Tags of which the docs must show at least one example.
const REQUIRED_TAGS: [&str; 10] = [
    "task-spec",
    "task-accepted",
    "task-view",
    "task-list",
    "worker-list",
    "config",
    "http-presence",
    "http-presence-stats",
    "http-stats",
    "http-token",
];

/// The lifecycle channels (`task:<name>`) and the task states their events
/// carry. `task:failed` also announces a task about to die, whose record
/// still reads `assigned` at that moment.
const LIFECYCLE: [(&str, &[&str]); 7] = [
    ("queued", &["queued"]),
    ("assigned", &["assigned"]),
    ("progress", &["assigned"]),
    ("completed", &["completed"]),
    ("failed", &["failed", "dead"]),
    ("dead", &["dead"]),
    ("cancelled", &["cancelled"]),
];

/// Channels of link events.
const FEDERATION_CHANNELS: [&str; 2] = ["hub:connected", "hub:disconnected"];

/// Channels of worker events.
const WORKER_CHANNELS: [&str; 2] = ["worker:connected", "worker:disconnected"];

/// The secret the `claims` check signs and verifies with.
const SECRET: &str = "proto-docs-test-secret";

/// A fenced code block.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string after the fence, trimmed.
    info: String,
    /// The lines between the fences.
    body: String,
}

/// Everything one run found, for the cross-file assertions.
#[derive(Default)]
struct Seen {
    /// `type` of every `json client` value.
    client_types: BTreeSet<String>,
    /// `type` of every `json server` value.
    server_types: BTreeSet<String>,
    /// Publish request shapes seen: "one", "batch".
    publish_shapes: BTreeSet<&'static str>,
    /// SSE payload shapes seen: "connected", "recovery:failed", "event".
    sse_shapes: BTreeSet<&'static str>,
    /// Tags (the word after the language) of the blocks checked.
    tags: BTreeSet<String>,
    /// `type` of every `json hub` value.
    hub_types: BTreeSet<String>,
    /// Number of blocks checked per direction.
    checked: usize,
}

/// Splits markdown into fenced code blocks (backtick or tilde fences, any
/// indentation, closed by a fence of the same character at least as long).
fn code_blocks(text: &str) -> Result<Vec<Block>, String> {
    fn fence(s: &str) -> Option<(char, usize)> {
        let ch = s.chars().next()?;
        if ch != '`' && ch != '~' {
            return None;
        }
        let len = s.chars().take_while(|c| *c == ch).count();
        (len >= 3).then_some((ch, len))
    }
    struct Open {
        ch: char,
        len: usize,
        indent: usize,
        block: Block,
    }
    let mut blocks = Vec::new();
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some((ch, len)) = fence(trimmed) {
                    open = Some(Open {
                        ch,
                        len,
                        indent,
                        block: Block {
                            line: i + 1,
                            info: trimmed[len..].trim().to_string(),
                            body: String::new(),
                        },
                    });
                }
            }
            Some(mut o) => match fence(trimmed) {
                Some((ch, len))
                    if ch == o.ch && len >= o.len && trimmed[len..].trim().is_empty() =>
                {
                    blocks.push(o.block);
                }
                _ => {
                    let strip = indent.min(o.indent);
                    o.block.body.push_str(&line[strip..]);
                    o.block.body.push('\n');
                    open = Some(o);
                }
            },
        }
    }
    match open {
        Some(o) => Err(format!("line {}: code block is never closed", o.block.line)),
        None => Ok(blocks),
    }
}

/// Every JSON value in `body`, in order (a block may show several frames).
fn json_values(body: &str) -> Result<Vec<Value>, String> {
    let values = serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not JSON: {e}"))?;
    if values.is_empty() {
        return Err("empty JSON block".into());
    }
    Ok(values)
}

/// Parses `value` as `T` and checks that serializing it gives `value` back,
/// so an example cannot show a field the type does not have (or omit one it
/// always writes).
fn round_trip<T: Serialize + DeserializeOwned>(value: &Value, what: &str) -> Result<T, String> {
    let parsed: T = serde_json::from_value(value.clone())
        .map_err(|e| format!("does not parse as {what}: {e}"))?;
    let back = serde_json::to_value(&parsed).map_err(|e| format!("re-serializing: {e}"))?;
    if &back != value {
        return Err(format!(
            "{what} does not round-trip:\n  docs: {value}\n  code: {back}"
        ));
    }
    Ok(parsed)
}

/// Like [`round_trip`] for what clients send: a field the example leaves
/// out may come back with its default (`null`, `false`), at any depth.
fn round_trip_input<T: Serialize + DeserializeOwned>(
    value: &Value,
    what: &str,
) -> Result<T, String> {
    fn drop_defaults(back: &mut Value, docs: &Value) {
        if let (Value::Object(back), Value::Object(docs)) = (back, docs) {
            back.retain(|k, v| docs.contains_key(k) || !(v.is_null() || v == &json!(false)));
            for (k, v) in back.iter_mut() {
                if let Some(d) = docs.get(k) {
                    drop_defaults(v, d);
                }
            }
        }
    }
    let parsed: T = serde_json::from_value(value.clone())
        .map_err(|e| format!("does not parse as {what}: {e}"))?;
    let mut back = serde_json::to_value(&parsed).map_err(|e| format!("re-serializing: {e}"))?;
    drop_defaults(&mut back, value);
    if &back != value {
        return Err(format!(
            "{what} does not round-trip:\n  docs: {value}\n  code: {back}"
        ));
    }
    Ok(parsed)
}

/// The data of an event on a channel the hub publishes task or worker
/// events on must be what the hub puts there.
fn check_event_data(channel: &str, data: &Value) -> Result<(), String> {
    if FEDERATION_CHANNELS.contains(&channel) {
        // Built in federation/mod.rs: {peer, peerId, direction, region?, reason?}.
        let obj = data.as_object().ok_or("hub:connected data is an object")?;
        let allowed = BTreeSet::from(["peer", "peerId", "direction", "region", "reason"]);
        if !keys(obj).is_subset(&allowed)
            || !["peer", "peerId", "direction"]
                .iter()
                .all(|k| obj.get(*k).is_some_and(Value::is_string))
        {
            return Err(format!(
                "{channel} data is {{peer, peerId, direction, region?, reason?}}: {data}"
            ));
        }
        return Ok(());
    }
    if WORKER_CHANNELS.contains(&channel) {
        let worker = round_trip::<WorkerView>(data, &format!("WorkerView (data on {channel})"))?;
        if channel == "worker:connected" && !worker.running.is_empty() {
            return Err("worker:connected is published before the worker runs anything".into());
        }
        return Ok(());
    }
    let mut segments = channel.split(':');
    let (Some("task"), Some(second), None) = (segments.next(), segments.next(), segments.next())
    else {
        return Ok(());
    };
    let task = round_trip::<TaskView>(data, &format!("TaskView (data on {channel})"))?;
    let state = task.state.as_str();
    match LIFECYCLE.iter().find(|(name, _)| *name == second) {
        Some((_, states)) if !states.contains(&state) => Err(format!(
            "an event on {channel} carries a task in state {state:?}, expected one of {states:?}"
        )),
        Some(_) => Ok(()),
        None if task.id != second => Err(format!(
            "an event on {channel} carries task {:?}; task:<id> carries its own task",
            task.id
        )),
        None => Ok(()),
    }
}

fn type_of(value: &Value) -> String {
    value["type"].as_str().unwrap_or_default().to_string()
}

fn keys(obj: &Map<String, Value>) -> BTreeSet<&str> {
    obj.keys().map(String::as_str).collect()
}

fn check_client(value: &Value, seen: &mut Seen) -> Result<(), String> {
    round_trip_input::<ClientMessage>(value, "ClientMessage")?;
    seen.client_types.insert(type_of(value));
    Ok(())
}

fn check_server(value: &Value, seen: &mut Seen) -> Result<(), String> {
    let msg = round_trip::<ServerMessage>(value, "ServerMessage")?;
    if let ServerMessage::Event {
        channel,
        data,
        id,
        ts,
        offset,
        epoch,
    } = msg
    {
        // The hub writes events from its own struct, not ServerMessage:
        // compare with the frame it really sends.
        let name = parse_channel(&channel)?;
        check_event_data(&channel, &data)?;
        let event = match (offset, epoch) {
            (None, None) => Event::new(name, data, id, ts),
            (Some(offset), Some(epoch)) if offset > 0 => {
                let position = Position {
                    offset,
                    epoch: epoch.into(),
                };
                Event::with_position(name, data, id, ts, position)
            }
            _ => return Err("an event has both offset (from 1) and epoch, or neither".into()),
        };
        let frame = event.ws_frame();
        let sent: Value = serde_json::from_str(frame.as_str()).map_err(|e| e.to_string())?;
        if &sent != value {
            return Err(format!(
                "the hub writes this event differently:\n  docs: {value}\n  hub:  {sent}"
            ));
        }
    }
    seen.server_types.insert(type_of(value));
    Ok(())
}

fn parse_channel(name: &str) -> Result<ChannelName, String> {
    ChannelName::parse(name, &Config::default().name_limits())
        .map_err(|e| format!("channel {name:?} is not valid: {e}"))
}

fn parse_pattern(pattern: &str) -> Result<Pattern, String> {
    Pattern::parse(pattern, &Config::default().name_limits())
        .map_err(|e| format!("pattern {pattern:?} is not valid: {e}"))
}

/// An SSE `data:` payload: the `connected` frame or an event.
fn check_sse(value: &Value, seen: &mut Seen) -> Result<(), String> {
    let obj = value.as_object().ok_or("an SSE payload is an object")?;
    if !obj.contains_key("channel") && obj.get("type") == Some(&json!("connected")) {
        // Built inline in transport/sse.rs: {"type","data":{"clientId"},"timestamp"}.
        if keys(obj) != BTreeSet::from(["type", "data", "timestamp"]) {
            return Err(format!(
                "connected frame has keys {:?}, expected type, data, timestamp",
                keys(obj)
            ));
        }
        let data = obj["data"]
            .as_object()
            .ok_or("connected: data is an object")?;
        if keys(data) != BTreeSet::from(["clientId"]) || !data["clientId"].is_string() {
            return Err("connected: data is {\"clientId\": string}".into());
        }
        if !obj["timestamp"].is_u64() {
            return Err("connected: timestamp is ms since the epoch".into());
        }
        seen.sse_shapes.insert("connected");
        return Ok(());
    }
    if !obj.contains_key("channel") && obj.get("type") == Some(&json!("recovery:failed")) {
        // Built inline in transport/sse.rs.
        if keys(obj) != BTreeSet::from(["type", "data", "timestamp"]) || !obj["timestamp"].is_u64()
        {
            return Err("recovery:failed has exactly type, data, timestamp (ms)".into());
        }
        let data = obj["data"]
            .as_object()
            .ok_or("recovery:failed: data is an object")?;
        let channels = data
            .get("channels")
            .and_then(Value::as_array)
            .ok_or("recovery:failed: data.channels is an array")?;
        for channel in channels {
            parse_channel(channel.as_str().ok_or("channels holds strings")?)?;
        }
        let extra: Vec<_> = keys(data)
            .into_iter()
            .filter(|k| *k != "channels")
            .collect();
        if !(extra.is_empty() || (extra == ["incomplete"] && data["incomplete"] == json!(true))) {
            return Err(format!(
                "recovery:failed: data has channels and, only when true, incomplete; got {extra:?}"
            ));
        }
        seen.sse_shapes.insert("recovery:failed");
        return Ok(());
    }
    if keys(obj) != BTreeSet::from(["type", "channel", "data", "timestamp"]) {
        return Err(format!(
            "SSE event has keys {:?}, expected type, channel, data, timestamp",
            keys(obj)
        ));
    }
    let channel = obj["channel"].as_str().ok_or("channel is a string")?;
    let ts = obj["timestamp"]
        .as_u64()
        .ok_or("timestamp is ms since the epoch")?;
    check_event_data(channel, &obj["data"])?;
    // Compare with the frame the hub really builds.
    let event = Event::new(parse_channel(channel)?, obj["data"].clone(), "x".into(), ts);
    let frame = event.sse_frame();
    let text = std::str::from_utf8(&frame).map_err(|e| e.to_string())?;
    let data_line = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .ok_or("the hub's SSE frame has no data line")?;
    let sent: Value = serde_json::from_str(data_line).map_err(|e| e.to_string())?;
    if &sent != value {
        return Err(format!(
            "the hub writes this SSE event differently:\n  docs: {value}\n  hub:  {sent}"
        ));
    }
    seen.sse_shapes.insert("event");
    Ok(())
}

/// A raw SSE transcript: frames separated by blank lines, each made of
/// `:comment`, `id: <id>`, `event: <type>` and `data: <json>` lines.
fn check_sse_stream(body: &str, seen: &mut Seen) -> Result<(), String> {
    let mut frames = 0;
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        frames += 1;
        let mut id = None;
        let mut event = None;
        let mut data = None;
        for line in frame.lines() {
            if line.starts_with(':') {
                continue;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v);
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v);
            } else if let Some(v) = line.strip_prefix("data: ") {
                let value: Value =
                    serde_json::from_str(v).map_err(|e| format!("data line not JSON: {e}"))?;
                check_sse(&value, seen)?;
                data = Some(value);
            } else {
                return Err(format!("unexpected SSE line {line:?}"));
            }
        }
        let Some(value) = data else {
            continue;
        };
        let channel = value.get("channel").and_then(Value::as_str);
        let failed = channel.is_none() && value["type"] == "recovery:failed";
        if event.is_some() != failed || event.is_some_and(|e| e != "recovery:failed") {
            return Err(format!(
                "only the recovery:failed frame has an event: line, `event: recovery:failed`: {frame:?}"
            ));
        }
        let cursor = match id {
            Some(id) => SseCursor::decode(id)
                .map_err(|e| format!("{e}: {id}"))?
                .map(|c| (id, c)),
            None => None,
        };
        match (channel, id, &cursor) {
            (Some(_), None, _) => return Err(format!("an event frame has an id: line: {frame:?}")),
            (None, Some(_), None) => {
                return Err(format!(
                    "connected and recovery:failed carry no id, or a resume cursor: {frame:?}"
                ));
            }
            (Some(channel), _, Some((_, cursor))) if cursor.get(channel).is_none() => {
                // A channel without history keeps the cursor as the id; one
                // with history is always in it. The docs show history
                // channels only, so require it.
                return Err(format!(
                    "the cursor of an event on {channel} does not hold it"
                ));
            }
            _ => {}
        }
    }
    if frames == 0 {
        return Err("empty sse-stream block".into());
    }
    Ok(())
}

/// `/healthz` and `/readyz` bodies (built inline in transport/api.rs).
fn check_http_health(value: &Value) -> Result<(), String> {
    let obj = value.as_object().ok_or("a health body is an object")?;
    let status = obj.get("status").and_then(Value::as_str);
    if keys(obj) != BTreeSet::from(["status"])
        || !matches!(
            status,
            Some("ok" | "ready" | "shutting_down" | "engine_unavailable" | "keys_unavailable")
        )
    {
        return Err(format!(
            "expected {{\"status\": \"ok\"|\"ready\"|\"shutting_down\"|\"engine_unavailable\"|\"keys_unavailable\"}}, got {value}"
        ));
    }
    Ok(())
}

fn check_http_error(value: &Value) -> Result<(), String> {
    let shape = || {
        format!(
            "expected {{\"error\":{{\"code\":string,\"message\":string}}}} (plus `detail` for call_failed), got {value}"
        )
    };
    let obj = value.as_object().ok_or_else(shape)?;
    if keys(obj) != BTreeSet::from(["error"]) {
        return Err(shape());
    }
    let err = obj["error"].as_object().ok_or_else(shape)?;
    let plain = keys(err) == BTreeSet::from(["code", "message"]);
    // A call_failed carries the server's error object under `detail`.
    let with_detail = keys(err) == BTreeSet::from(["code", "message", "detail"])
        && err["code"] == "call_failed"
        && err["detail"]["code"].is_string()
        && err["detail"]["message"].is_string();
    if !(plain || with_detail) || !err["message"].is_string() {
        return Err(shape());
    }
    let code = err["code"].clone();
    let known = serde_json::from_value::<ErrorCode>(code.clone()).is_ok()
        || serde_json::from_value::<AuthError>(code.clone()).is_ok();
    if !known {
        return Err(format!("{code} is neither an ErrorCode nor an AuthError"));
    }
    Ok(())
}

/// JWT claims: the shape the docs promise, and a token with these claims
/// (signed, with `exp`/`nbf` moved to now) must pass the hub's verifier.
fn check_claims(value: &Value) -> Result<(), String> {
    let obj = value.as_object().ok_or("claims are an object")?;
    let sub = obj
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("claims need a non-empty string sub")?;
    obj.get("exp")
        .and_then(Value::as_u64)
        .ok_or("claims need a numeric exp")?;
    let client_type: ClientType = obj
        .get("client_type")
        .cloned()
        .ok_or("claims need client_type")
        .and_then(|v| serde_json::from_value(v).map_err(|_| "client_type is browser|worker|hub"))?;
    for list in ["channels", "publish"] {
        if let Some(v) = obj.get(list) {
            let items = v.as_array().ok_or(format!("{list} is an array"))?;
            for item in items {
                parse_pattern(item.as_str().ok_or(format!("{list} holds strings"))?)?;
            }
        }
    }
    if let Some(v) = obj.get("permissions") {
        serde_json::from_value::<Vec<Permission>>(v.clone())
            .map_err(|e| format!("permissions: {e}"))?;
    }
    let mut config = Config::default();
    config.auth.secret = Some(SECRET.into());
    match obj.get("aud") {
        Some(Value::String(a)) => config.auth.audience = Some(a.clone()),
        Some(Value::Array(a)) => {
            config.auth.audience = a.first().and_then(Value::as_str).map(String::from)
        }
        _ => {}
    }
    config.auth.issuer = obj.get("iss").and_then(Value::as_str).map(String::from);
    let verifier = Verifier::from_config(&config).map_err(|e| e.to_string())?;
    let now = now_ms() / 1000;
    let mut claims = obj.clone();
    claims.insert("exp".into(), json!(now + 3600));
    if claims.contains_key("nbf") {
        claims.insert("nbf".into(), json!(now - 60));
    }
    if claims.contains_key("iat") {
        claims.insert("iat".into(), json!(now));
    }
    let token = mint(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let identity = verifier
        .verify(&token)
        .map_err(|e| format!("the hub refuses these claims: {}", e.code()))?;
    if identity.sub != sub || identity.client_type != client_type {
        return Err("the verified identity differs from the claims".into());
    }
    Ok(())
}

/// Checks one block; `Ok(false)` when it is not a checked block at all.
fn check_block(block: &Block, seen: &mut Seen) -> Result<bool, String> {
    let mut words = block.info.split_whitespace();
    let lang = words.next().unwrap_or_default();
    let direction = words.next();
    let extra = words.next();
    if lang == "text" && direction == Some("sse-stream") {
        check_sse_stream(&block.body, seen)?;
        seen.checked += 1;
        return Ok(true);
    }
    if lang.eq_ignore_ascii_case("toml") {
        if direction != Some("config") || extra.is_some() {
            return Err(
                "tag TOML examples ```toml config (they are loaded as a hub config)".into(),
            );
        }
        Config::from_toml(&block.body).map_err(|e| format!("the hub refuses this config: {e}"))?;
        seen.tags.insert("config".into());
        seen.checked += 1;
        return Ok(true);
    }
    if !lang.to_ascii_lowercase().starts_with("json") {
        return Ok(false);
    }
    if lang != "json" {
        return Err(format!(
            "```{lang} is not checked; tag JSON examples ```json <direction>"
        ));
    }
    let Some(direction) = direction else {
        return Err("```json block without a direction (client, server, sse, \
                    http-publish-request, http-publish-response, http-error, claims, \
                    http-health, task-spec, task-accepted, task-view, task-list, \
                    worker-view, worker-list, http-presence, http-presence-stats, \
                    http-stats, http-token)"
            .into());
    };
    if let Some(extra) = extra {
        return Err(format!("unexpected word {extra:?} in the info string"));
    }
    for value in json_values(&block.body)? {
        match direction {
            "client" => check_client(&value, seen)?,
            "server" => check_server(&value, seen)?,
            "http-publish-request" => {
                let shape = match round_trip::<PublishRequest>(&value, "PublishRequest")? {
                    PublishRequest::One(_) => "one",
                    PublishRequest::Batch { .. } => "batch",
                };
                seen.publish_shapes.insert(shape);
            }
            "http-publish-response" => {
                round_trip::<PublishResponse>(&value, "PublishResponse")?;
            }
            "sse" => check_sse(&value, seen)?,
            "http-error" => check_http_error(&value)?,
            "claims" => check_claims(&value)?,
            "http-health" => check_http_health(&value)?,
            "task-spec" => {
                round_trip_input::<TaskSpec>(&value, "TaskSpec")?;
            }
            "task-accepted" => {
                round_trip::<Accepted>(&value, "Accepted")?;
            }
            "task-view" => {
                round_trip::<TaskView>(&value, "TaskView")?;
            }
            "task-list" => {
                round_trip::<Vec<TaskView>>(&value, "a list of TaskView")?;
            }
            "worker-view" => {
                round_trip::<WorkerView>(&value, "WorkerView")?;
            }
            "worker-list" => {
                round_trip::<Vec<WorkerView>>(&value, "a list of WorkerView")?;
            }
            "hub" => {
                round_trip::<HubMessage>(&value, "HubMessage")?;
                seen.hub_types.insert(type_of(&value));
            }
            "federation-view" => {
                round_trip::<FederationView>(&value, "FederationView")?;
            }
            "http-presence" => {
                round_trip::<PresenceResponse>(&value, "PresenceResponse")?;
            }
            "http-presence-stats" => {
                round_trip::<PresenceStatsResponse>(&value, "PresenceStatsResponse")?;
            }
            "http-stats" => {
                round_trip::<chanhub::metrics::Stats>(&value, "Stats")?;
            }
            "http-token" => {
                round_trip::<chanhub::protocol::TokenResponse>(&value, "TokenResponse")?;
            }
            other => return Err(format!("unknown direction {other:?}")),
        }
    }
    seen.tags.insert(direction.to_string());
    seen.checked += 1;
    Ok(true)
}

/// Checks every block of one markdown text; returns the problems found.
fn check_markdown(name: &str, text: &str, seen: &mut Seen) -> Vec<String> {
    let blocks = match code_blocks(text) {
        Ok(blocks) => blocks,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    blocks
        .iter()
        .filter_map(|b| {
            check_block(b, seen)
                .err()
                .map(|e| format!("{name}:{}: ```{}: {e}", b.line, b.info))
        })
        .collect()
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs")
}

fn read_docs() -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(docs_dir())
        .expect("proto-docs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).expect("readable");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

// --- every variant, listed by exhaustive matches so a new variant fails to
// --- compile here until the docs test knows about it.

fn all_close_reasons() -> Vec<CloseReason> {
    use CloseReason::*;
    let all = vec![
        Normal,
        TooBig,
        ServiceRestart,
        AuthFailed,
        AuthTimeout,
        TokenExpired,
        SlowConsumer,
        TooManyBadFrames,
        PingTimeout,
        RateLimited,
        ProtocolError,
        InvalidPayload,
    ];
    for r in &all {
        match r {
            Normal | TooBig | ServiceRestart | AuthFailed | AuthTimeout | TokenExpired
            | SlowConsumer | TooManyBadFrames | PingTimeout | RateLimited | ProtocolError
            | InvalidPayload => {}
        }
    }
    all
}

fn all_auth_errors() -> Vec<AuthError> {
    use AuthError::*;
    let all = vec![
        MissingToken,
        AuthRequired,
        MalformedToken,
        TokenTooLarge,
        AlgorithmNotAllowed,
        UnknownKey,
        BadSignature,
        Expired,
        NotYetValid,
        InvalidAudience,
        InvalidIssuer,
        MissingClaim,
        MissingClientType,
        UnknownClientType,
        InvalidClaim,
        SubjectMismatch,
    ];
    for e in &all {
        match e {
            MissingToken | AuthRequired | MalformedToken | TokenTooLarge | AlgorithmNotAllowed
            | UnknownKey | BadSignature | Expired | NotYetValid | InvalidAudience
            | InvalidIssuer | MissingClaim | MissingClientType | UnknownClientType
            | InvalidClaim | SubjectMismatch => {}
        }
    }
    all
}

fn all_error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        BadRequest,
        Forbidden,
        InvalidChannel,
        TooManySubscriptions,
        Unauthorized,
        AlreadyAuthenticated,
        Unsupported,
        Unavailable,
        QueueFull,
        NotFound,
        NotAssigned,
        NotRegistered,
        InvalidState,
        EngineUnavailable,
        RateLimited,
        CallFailed,
        NoServer,
        Timeout,
        ServerGone,
        Busy,
    ];
    for c in &all {
        match c {
            BadRequest | Forbidden | InvalidChannel | TooManySubscriptions | Unauthorized
            | AlreadyAuthenticated | Unsupported | Unavailable | QueueFull | NotFound
            | NotAssigned | NotRegistered | InvalidState | EngineUnavailable | RateLimited
            | CallFailed | NoServer | Timeout | ServerGone | Busy => {}
        }
    }
    all
}

/// The `type` of every client message.
fn all_client_types() -> BTreeSet<String> {
    use ClientMessage::*;
    let all = [
        Auth {
            id: None,
            token: String::new(),
        },
        AuthRefresh {
            id: None,
            token: String::new(),
        },
        Subscribe {
            id: None,
            channels: vec![],
            since: Default::default(),
        },
        Unsubscribe {
            id: None,
            channels: vec![],
        },
        Publish {
            id: None,
            channel: String::new(),
            data: Value::Null,
        },
        Ping { id: None },
        History {
            id: None,
            channel: String::new(),
            since: None,
            limit: None,
        },
        Presence {
            id: None,
            channel: String::new(),
        },
        PresenceStats {
            id: None,
            channel: String::new(),
        },
        Register {
            id: None,
            capabilities: vec![],
            slots: None,
            labels: None,
        },
        Drain { id: None },
        TaskSubmit {
            id: None,
            task: TaskSpec {
                kind: String::new(),
                payload: Value::Null,
                priority: None,
                timeout_ms: None,
                max_attempts: None,
                dedup_key: None,
            },
        },
        TaskProgress {
            id: None,
            task_id: String::new(),
            progress: None,
            message: None,
        },
        TaskComplete {
            id: None,
            task_id: String::new(),
            result: Value::Null,
        },
        TaskError {
            id: None,
            task_id: String::new(),
            error: Value::Null,
            retryable: false,
        },
        TaskCancel {
            id: None,
            task_id: String::new(),
        },
        HubHello(sample_hello()),
        Serve {
            id: None,
            methods: vec![],
            concurrency: None,
        },
        Unserve {
            id: None,
            methods: vec![],
        },
        Call {
            id: RequestId::Int(1),
            method: String::new(),
            params: None,
            timeout_ms: None,
        },
        CallReply {
            call_id: String::new(),
            result: None,
            error: None,
        },
        CallCancel {
            id: RequestId::Int(1),
        },
    ];
    for m in &all {
        match m {
            Auth { .. }
            | AuthRefresh { .. }
            | Subscribe { .. }
            | Unsubscribe { .. }
            | Publish { .. }
            | Ping { .. }
            | History { .. }
            | Presence { .. }
            | PresenceStats { .. }
            | Register { .. }
            | Drain { .. }
            | TaskSubmit { .. }
            | TaskProgress { .. }
            | TaskComplete { .. }
            | TaskError { .. }
            | TaskCancel { .. }
            | HubHello(_)
            | Serve { .. }
            | Unserve { .. }
            | Call { .. }
            | CallReply { .. }
            | CallCancel { .. } => {}
        }
    }
    all.iter()
        .map(|m| type_of(&serde_json::to_value(m).expect("serializes")))
        .collect()
}

fn all_task_states() -> Vec<TaskState> {
    use TaskState::*;
    let all = vec![Queued, Assigned, Failed, Completed, Dead, Cancelled];
    for s in &all {
        match s {
            Queued | Assigned | Failed | Completed | Dead | Cancelled => {}
        }
    }
    all
}

/// A task record for building `task:result` in the variant list.
fn sample_task_view() -> TaskView {
    TaskView {
        id: String::new(),
        kind: String::new(),
        payload: Value::Null,
        priority: 5,
        state: TaskState::Completed,
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 30_000,
        dedup_key: None,
        submitted_by: String::new(),
        worker_id: None,
        progress: None,
        message: None,
        result: None,
        error: None,
        hub: None,
        created_at: 0,
        updated_at: 0,
    }
}

/// A presence entry for building `join` / `leave` in the variant list.
fn sample_presence_info() -> PresenceInfo {
    PresenceInfo {
        client_id: String::new(),
        sub: String::new(),
        client_type: ClientType::Browser,
        connected_at: 0,
    }
}

/// The `type` of every server message.
fn all_server_types() -> BTreeSet<String> {
    use ServerMessage::*;
    let id = Some(RequestId::Int(1));
    let all = [
        AuthSuccess {
            id: id.clone(),
            client_id: String::new(),
            client_type: ClientType::Hub,
            sub: String::new(),
            permissions: vec![],
            subscribe_channels: vec![],
            publish_channels: vec![],
            expires_at: 0,
        },
        AuthFailed {
            id: id.clone(),
            reason: AuthError::Expired,
            message: String::new(),
        },
        AuthRefreshed {
            id: id.clone(),
            expires_at: 0,
        },
        Subscribed {
            id: id.clone(),
            channels: vec![],
            recovered: Default::default(),
            positions: Default::default(),
        },
        Unsubscribed {
            id: id.clone(),
            channels: vec![],
        },
        Published {
            id: id.clone(),
            channel: String::new(),
            event_id: String::new(),
            delivered: 0,
        },
        Event {
            channel: String::new(),
            data: Value::Null,
            id: String::new(),
            ts: 0,
            offset: None,
            epoch: None,
        },
        Pong { id: id.clone() },
        History {
            id: id.clone(),
            channel: String::new(),
            epoch: String::new(),
            offset: 0,
            recovered: None,
            events: vec![],
        },
        Presence {
            id: id.clone(),
            channel: String::new(),
            clients: vec![],
        },
        PresenceStats {
            id: id.clone(),
            channel: String::new(),
            clients: 0,
            users: 0,
        },
        Join {
            channel: String::new(),
            info: sample_presence_info(),
        },
        Leave {
            channel: String::new(),
            info: sample_presence_info(),
        },
        Error {
            id: id.clone(),
            code: ErrorCode::BadRequest,
            message: String::new(),
            channel: None,
            detail: None,
        },
        Registered {
            id: id.clone(),
            worker_id: String::new(),
            capabilities: vec![],
            slots: 1,
        },
        Draining {
            id: id.clone(),
            running: 0,
        },
        TaskAccepted {
            id: id.clone(),
            task_id: String::new(),
            deduplicated: false,
        },
        TaskAssign {
            task: Assignment {
                id: String::new(),
                kind: String::new(),
                payload: Value::Null,
                attempt: 1,
                deadline: 0,
            },
        },
        TaskCancel {
            task_id: String::new(),
            reason: String::new(),
        },
        TaskResult {
            task: sample_task_view(),
        },
        TaskAck {
            id: id.clone(),
            task_id: String::new(),
            state: TaskState::Completed,
        },
        Serving {
            id: id.clone(),
            methods: vec![],
        },
        Unserving {
            id: id.clone(),
            methods: vec![],
        },
        Result {
            id: RequestId::Int(1),
            result: Payload::null(),
        },
        CallRequest {
            call_id: String::new(),
            method: String::new(),
            params: Payload::null(),
            caller: CallerInfo {
                client_id: String::new(),
                sub: String::new(),
                client_type: ClientType::Browser,
            },
            deadline: 0,
        },
        CallCancelled {
            call_id: String::new(),
        },
    ];
    for m in &all {
        match m {
            AuthSuccess { .. }
            | AuthFailed { .. }
            | AuthRefreshed { .. }
            | Subscribed { .. }
            | Unsubscribed { .. }
            | Published { .. }
            | Event { .. }
            | Pong { .. }
            | History { .. }
            | Presence { .. }
            | PresenceStats { .. }
            | Join { .. }
            | Leave { .. }
            | Error { .. }
            | Registered { .. }
            | Draining { .. }
            | TaskAccepted { .. }
            | TaskAssign { .. }
            | TaskCancel { .. }
            | TaskResult { .. }
            | TaskAck { .. }
            | Serving { .. }
            | Unserving { .. }
            | Result { .. }
            | CallRequest { .. }
            | CallCancelled { .. } => {}
        }
    }
    all.iter()
        .map(|m| type_of(&serde_json::to_value(m).expect("serializes")))
        .collect()
}

/// Whether `text` names `word` in backticks, as the docs' tables do.
fn mentions(text: &str, word: &str) -> bool {
    text.contains(&format!("`{word}`"))
}

#[test]
fn every_json_example_parses_with_the_protocol_types() {
    let files = read_docs();
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for required in REQUIRED_FILES {
        assert!(names.contains(required), "proto-docs/{required} is missing");
    }
    let mut seen = Seen::default();
    let mut problems = Vec::new();
    for (name, text) in &files {
        problems.extend(check_markdown(name, text, &mut seen));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in proto-docs:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(seen.checked > 0, "no checked example found");

    let missing: Vec<_> = all_client_types()
        .difference(&seen.client_types)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "no ```json client example of {missing:?}"
    );
    let missing: Vec<_> = all_server_types()
        .difference(&seen.server_types)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "no ```json server example of {missing:?}"
    );
    for shape in ["one", "batch"] {
        assert!(
            seen.publish_shapes.contains(shape),
            "no ```json http-publish-request example of the {shape} shape"
        );
    }
    for shape in ["connected", "recovery:failed", "event"] {
        assert!(
            seen.sse_shapes.contains(shape),
            "no SSE example of the {shape} frame"
        );
    }
    for tag in REQUIRED_TAGS {
        assert!(seen.tags.contains(tag), "no example tagged {tag}");
    }
}

#[test]
fn protocol_md_names_every_code() {
    let text = std::fs::read_to_string(docs_dir().join("protocol.md")).expect("protocol.md");
    let mut missing = Vec::new();
    for reason in all_close_reasons() {
        let code = reason.code().to_string();
        if !mentions(&text, &code) {
            missing.push(format!("close code `{code}` ({})", reason.text()));
        }
    }
    for err in all_auth_errors() {
        if !mentions(&text, err.code()) {
            missing.push(format!("auth:failed reason `{}`", err.code()));
        }
    }
    for code in all_error_codes() {
        let name = serde_json::to_value(code).expect("serializes");
        let name = name.as_str().expect("a string");
        if !mentions(&text, name) {
            missing.push(format!("error code `{name}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "proto-docs/protocol.md does not mention:\n{}",
        missing.join("\n")
    );
}

/// The error-code table of protocol.md gives, for every code, the HTTP
/// status the hub really answers with.
#[test]
fn protocol_md_error_table_gives_the_http_status() {
    let text = std::fs::read_to_string(docs_dir().join("protocol.md")).expect("protocol.md");
    let mut problems = Vec::new();
    for code in all_error_codes() {
        let name = serde_json::to_value(code).expect("serializes");
        let name = name.as_str().expect("a string").to_string();
        let api = ApiError::from(RequestError::new(code, "x"));
        if api.code != name {
            problems.push(format!("HTTP bodies call `{name}` {:?}", api.code));
        }
        let status = api.status.as_u16().to_string();
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")));
        let Some(row) = row else {
            problems.push(format!("no row for `{name}` in the error code table"));
            continue;
        };
        let last = row
            .trim_end()
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or_default()
            .trim();
        if last != status {
            problems.push(format!(
                "`{name}`: the table says HTTP {last:?}, the hub answers {status}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// tasks.md names every task state, lifecycle channel, `task:cancel`
/// reason and `[tasks]` configuration key.
#[test]
fn tasks_md_names_states_channels_and_config_keys() {
    let text = std::fs::read_to_string(docs_dir().join("tasks.md")).expect("tasks.md");
    let mut missing = Vec::new();
    for state in all_task_states() {
        let wire = serde_json::to_value(state).expect("serializes");
        let wire = wire.as_str().expect("a string");
        assert_eq!(
            wire,
            state.as_str(),
            "TaskState wire name and as_str differ"
        );
        if !mentions(&text, wire) {
            missing.push(format!("task state `{wire}`"));
        }
    }
    for (name, _) in LIFECYCLE {
        let channel = format!("task:{name}");
        if !mentions(&text, &channel) {
            missing.push(format!("lifecycle channel `{channel}`"));
        }
    }
    for channel in WORKER_CHANNELS.iter().chain(&["task:<id>"]) {
        if !mentions(&text, channel) {
            missing.push(format!("channel `{channel}`"));
        }
    }
    for reason in ["cancelled", "lease_expired"] {
        if !mentions(&text, reason) {
            missing.push(format!("task:cancel reason `{reason}`"));
        }
    }
    // The keys, read from the config type itself.
    let config = serde_json::to_value(Config::default()).expect("serializes");
    let tasks = config["tasks"].as_object().expect("a [tasks] table");
    for (key, value) in tasks {
        let key = format!("tasks.{key}");
        if !mentions(&text, &key) {
            missing.push(format!("config key `{key}`"));
        }
        if let Some(table) = value.as_object() {
            for sub in table.keys() {
                let sub = format!("{key}.{sub}");
                if !mentions(&text, &sub) {
                    missing.push(format!("config key `{sub}`"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "proto-docs/tasks.md does not mention:\n{}",
        missing.join("\n")
    );
}

/// history.md names every `[[namespaces]]` key, read from the config type.
#[test]
fn history_md_names_every_namespace_key() {
    let text = std::fs::read_to_string(docs_dir().join("history.md")).expect("history.md");
    let sample = NamespaceConfig {
        pattern: "a".into(),
        history_size: 1,
        history_ttl: std::time::Duration::from_secs(1),
        presence: true,
        join_leave: true,
        allow_publish_by: vec![ClientType::Browser],
        max_subscribers: Some(1),
    };
    let keys = serde_json::to_value(&sample).expect("serializes");
    let missing: Vec<String> = keys
        .as_object()
        .expect("a table")
        .keys()
        .map(|k| format!("namespaces[].{k}"))
        .filter(|k| !mentions(&text, k))
        .collect();
    assert!(
        missing.is_empty(),
        "proto-docs/history.md does not mention {missing:?}"
    );
    // The positions the docs show are what the protocol types carry.
    let position: StreamPosition =
        serde_json::from_str(r#"{"offset":12,"epoch":"9f3c2a1b7d4e6f80"}"#).expect("parses");
    assert_eq!(position.offset, 12);
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m))
                if open == m && trimmed.trim_matches(|c| c == '`' || c == '~').is_empty() =>
            {
                fence = None
            }
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The anchors GitHub gives the headings of `text`: lowercased, punctuation
/// (including backticks, `:`, `/`, `{}`) dropped, spaces turned into `-`,
/// repeats numbered `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while found.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        found.insert(candidate);
    }
    found
}

/// Every link between the pages points at an existing page and heading.
#[test]
fn links_between_pages_resolve() {
    let files = read_docs();
    let anchors: std::collections::BTreeMap<&str, BTreeSet<String>> = files
        .iter()
        .map(|(name, text)| (name.as_str(), anchors(text)))
        .collect();
    let mut broken = Vec::new();
    for (name, text) in &files {
        for (line_no, line) in prose_lines(text) {
            let mut rest = line;
            while let Some(start) = rest.find("](") {
                let after = &rest[start + 2..];
                let Some(end) = after.find(')') else { break };
                let target = &after[..end];
                rest = &after[end..];
                if target.contains("://") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target, None),
                };
                let file = if file.is_empty() { name.as_str() } else { file };
                if !file.ends_with(".md") {
                    continue;
                }
                let Some(known) = anchors.get(file) else {
                    broken.push(format!("{name}:{line_no}: no page {file} ({target})"));
                    continue;
                };
                if let Some(anchor) = anchor {
                    if !known.contains(anchor) {
                        broken.push(format!("{name}:{line_no}: no heading #{anchor} in {file}"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

// --- the checker itself must reject bad examples ---

fn problems_in(md: &str) -> Vec<String> {
    check_markdown("inline.md", md, &mut Seen::default())
}

#[test]
fn checker_accepts_good_examples() {
    let md = r#"
```json client
{"type":"subscribe","id":1,"channels":["session:*"]}
```

```json server
{"type":"subscribed","id":1,"channels":["session:*"]}
{"type":"event","channel":"session:42","data":{"n":1},"id":"k-1","ts":1700}
```

```json sse
{"type":"session:42","channel":"session:42","data":{"n":1},"timestamp":1700}
```

```json http-error
{"error":{"code":"bad_signature","message":"the token's signature is invalid"}}
```

```json claims
{"sub":"ui-1","exp":1700000000,"client_type":"browser","channels":["session:**"]}
```

```json client
{"type":"task:submit","id":1,"task":{"type":"embedding:local"}}
{"type":"task:error","taskId":"ab12","error":"boom"}
{"type":"task:complete","taskId":"ab12"}
```

```json task-spec
{"type":"embedding:local","priority":9}
```

```json task-accepted
{"taskId":"ab12","deduplicated":false}
```

```json server
{"type":"event","channel":"task:ab12","data":{"id":"ab12","type":"a","payload":null,"priority":5,"state":"queued","attempt":0,"maxAttempts":3,"timeoutMs":30000,"submittedBy":"x","createdAt":1,"updatedAt":1},"id":"k-2","ts":1700}
{"type":"event","channel":"task:failed","data":{"id":"ab12","type":"a","payload":null,"priority":5,"state":"failed","attempt":1,"maxAttempts":3,"timeoutMs":30000,"submittedBy":"x","error":"boom","createdAt":1,"updatedAt":2},"id":"k-3","ts":1700}
```

```json worker-list
[{"workerId":"7","sub":"w","capabilities":["a:*"],"slots":2,"running":[],"draining":false,"labels":{},"connectedAt":1,"lastSeen":2}]
```

```json server
{"type":"event","channel":"session:42","data":1,"id":"k-4","ts":1700,"offset":3,"epoch":"e1"}
{"type":"join","channel":"room:1","info":{"clientId":"1","sub":"s","clientType":"hub","connectedAt":5}}
```

```json http-presence-stats
{"channel":"room:1","clients":2,"users":1}
```

```toml config
[tasks]
max_queued = 10
```

```text
not checked
```
"#;
    assert_eq!(problems_in(md), Vec::<String>::new());
}

#[test]
fn checker_rejects_bad_examples() {
    let bad = [
        // plain json without a direction
        "```json\n{\"type\":\"ping\"}\n```\n",
        // another json-ish language
        "```jsonc\n{\"type\":\"ping\"}\n```\n",
        // unknown direction
        "```json upstream\n{\"type\":\"ping\"}\n```\n",
        // unknown message type
        "```json client\n{\"type\":\"hello\"}\n```\n",
        // a field the type does not have
        "```json client\n{\"type\":\"ping\",\"id\":1,\"extra\":true}\n```\n",
        // a server message missing a field
        "```json server\n{\"type\":\"published\",\"id\":1,\"channel\":\"a\",\"delivered\":1}\n```\n",
        // snake_case where the wire is camelCase
        "```json server\n{\"type\":\"published\",\"channel\":\"a\",\"event_id\":\"e\",\"delivered\":1}\n```\n",
        // a client message in a server block
        "```json server\n{\"type\":\"subscribe\",\"channels\":[]}\n```\n",
        // not JSON
        "```json client\n{\"type\":\"ping\",}\n```\n",
        // SSE event with the wrong type
        "```json sse\n{\"type\":\"event\",\"channel\":\"a\",\"data\":1,\"timestamp\":1}\n```\n",
        // unknown error code
        "```json http-error\n{\"error\":{\"code\":\"teapot\",\"message\":\"x\"}}\n```\n",
        // claims the hub refuses
        "```json claims\n{\"sub\":\"a\",\"exp\":1,\"client_type\":\"admin\"}\n```\n",
        "```json claims\n{\"sub\":\"a\",\"exp\":1,\"client_type\":\"hub\",\"channels\":[\"a::b\"]}\n```\n",
        // unclosed block
        "```json client\n{\"type\":\"ping\"}\n",
        // a task spec with a field the hub refuses
        "```json task-spec\n{\"type\":\"a\",\"retries\":2}\n```\n",
        // a task spec without its type
        "```json task-spec\n{\"payload\":1}\n```\n",
        // a task record missing a field the hub always writes
        "```json task-view\n{\"id\":\"ab12\",\"type\":\"a\",\"payload\":null,\"priority\":5,\"state\":\"queued\",\"attempt\":0,\"maxAttempts\":3,\"submittedBy\":\"x\",\"createdAt\":1,\"updatedAt\":1}\n```\n",
        // an unknown task state
        "```json task-view\n{\"id\":\"ab12\",\"type\":\"a\",\"payload\":null,\"priority\":5,\"state\":\"running\",\"attempt\":0,\"maxAttempts\":3,\"timeoutMs\":1,\"submittedBy\":\"x\",\"createdAt\":1,\"updatedAt\":1}\n```\n",
        // a list where one record is expected, and the reverse
        "```json worker-list\n{\"workerId\":\"7\",\"sub\":\"w\",\"capabilities\":[],\"slots\":1,\"running\":[],\"draining\":false,\"labels\":{},\"connectedAt\":1,\"lastSeen\":2}\n```\n",
        "```json task-accepted\n[{\"taskId\":\"ab12\",\"deduplicated\":false}]\n```\n",
        // a client message leaving out a required field
        "```json client\n{\"type\":\"task:error\",\"taskId\":\"ab12\"}\n```\n",
        // a defaulted field shown with a non-default value that does not round-trip
        "```json client\n{\"type\":\"task:error\",\"taskId\":\"ab12\",\"error\":1,\"retryable\":\"yes\"}\n```\n",
        // an event on a task channel whose data is not a task record
        "```json server\n{\"type\":\"event\",\"channel\":\"task:ab12\",\"data\":{\"state\":\"queued\"},\"id\":\"k\",\"ts\":1}\n```\n",
        // task:<id> carrying another task
        "```json server\n{\"type\":\"event\",\"channel\":\"task:ffff\",\"data\":{\"id\":\"ab12\",\"type\":\"a\",\"payload\":null,\"priority\":5,\"state\":\"queued\",\"attempt\":0,\"maxAttempts\":3,\"timeoutMs\":1,\"submittedBy\":\"x\",\"createdAt\":1,\"updatedAt\":1},\"id\":\"k\",\"ts\":1}\n```\n",
        // a lifecycle channel with a state it never carries
        "```json sse\n{\"type\":\"task:completed\",\"channel\":\"task:completed\",\"data\":{\"id\":\"ab12\",\"type\":\"a\",\"payload\":null,\"priority\":5,\"state\":\"queued\",\"attempt\":0,\"maxAttempts\":3,\"timeoutMs\":1,\"submittedBy\":\"x\",\"createdAt\":1,\"updatedAt\":1},\"timestamp\":1}\n```\n",
        // a worker event without a worker record
        "```json server\n{\"type\":\"event\",\"channel\":\"worker:connected\",\"data\":{\"workerId\":\"7\"},\"id\":\"k\",\"ts\":1}\n```\n",
        // an event with an offset but no epoch, or offset 0
        "```json server\n{\"type\":\"event\",\"channel\":\"a\",\"data\":1,\"id\":\"k\",\"ts\":1,\"offset\":3}\n```\n",
        "```json server\n{\"type\":\"event\",\"channel\":\"a\",\"data\":1,\"id\":\"k\",\"ts\":1,\"offset\":0,\"epoch\":\"e\"}\n```\n",
        // recovery:failed with a field it does not have
        "```json sse\n{\"type\":\"recovery:failed\",\"data\":{\"channels\":[],\"why\":1},\"timestamp\":1}\n```\n",
        // a connected frame whose id is not a cursor, a cursor that does not decode
        "```text sse-stream\nid: k-1\ndata: {\"type\":\"connected\",\"data\":{\"clientId\":\"3\"},\"timestamp\":1}\n\n```\n",
        "```text sse-stream\nid: r1.!!\ndata: {\"type\":\"a\",\"channel\":\"a\",\"data\":1,\"timestamp\":1}\n\n```\n",
        // an event: line on an event frame
        "```text sse-stream\nid: k-1\nevent: a\ndata: {\"type\":\"a\",\"channel\":\"a\",\"data\":1,\"timestamp\":1}\n\n```\n",
        // a presence response missing a field
        "```json http-presence\n{\"channel\":\"a\",\"clients\":[{\"clientId\":\"1\",\"sub\":\"s\",\"clientType\":\"browser\"}]}\n```\n",
        // a config key the hub does not know, a value it refuses, an untagged TOML block
        "```toml config\n[tasks]\nmax_queue = 10\n```\n",
        "```toml config\n[tasks]\ndefault_max_attempts = 0\n```\n",
        "```toml\n[tasks]\nmax_queued = 10\n```\n",
    ];
    for md in bad {
        assert!(!problems_in(md).is_empty(), "accepted a bad example:\n{md}");
    }
}

// --- federation ---

fn sample_hello() -> HubHello {
    HubHello {
        hub_id: String::new(),
        name: String::new(),
        version: String::new(),
        region: None,
        labels: Default::default(),
        max_frame_bytes: 0,
        id: None,
    }
}

/// The `type` of every hub-to-hub message.
fn all_hub_types() -> BTreeSet<String> {
    use HubMessage::*;
    let task = chanhub::protocol::federation::ForwardedTask {
        id: String::new(),
        kind: String::new(),
        payload: Value::Null,
        priority: 0,
        timeout_ms: 0,
        attempt: 0,
        route: vec![],
        submitted_by: String::new(),
    };
    let all = [
        Hello(sample_hello()),
        Refused {
            reason: RefusalReason::NotPermitted,
            message: String::new(),
        },
        Ping { ts: 0, queued: 0 },
        Pong { ts: 0 },
        Interest {
            hub: String::new(),
            version: 0,
            hops: 0,
            patterns: vec![],
        },
        Capacity {
            hub: String::new(),
            version: 0,
            hops: 0,
            capabilities: vec![],
        },
        Withdraw {
            hub: String::new(),
            table: FedTable::Interest,
        },
        Event {
            origin: String::new(),
            msg_id: String::new(),
            hops: 0,
            channel: String::new(),
            data: Value::Null,
            ts: 0,
        },
        Task { task },
        TaskProgress {
            task_id: String::new(),
            progress: None,
            message: None,
            hub: String::new(),
        },
        TaskComplete {
            task_id: String::new(),
            result: Value::Null,
            hub: String::new(),
        },
        TaskError {
            task_id: String::new(),
            error: Value::Null,
            retryable: false,
            hub: String::new(),
        },
        TaskCancel {
            task_id: String::new(),
            reason: String::new(),
        },
        Serving {
            methods: Vec::new(),
            concurrency: 0,
        },
        Call {
            call_id: String::new(),
            method: String::new(),
            params: Payload::null(),
            caller: chanhub::protocol::calls::CallerInfo {
                client_id: String::new(),
                sub: String::new(),
                client_type: chanhub::auth::ClientType::Hub,
            },
            deadline: 0,
        },
        CallAnswer {
            call_id: String::new(),
            outcome: chanhub::protocol::calls::CallOutcome::Result {
                result: Payload::null(),
            },
        },
        CallCancel {
            call_id: String::new(),
        },
    ];
    for m in &all {
        match m {
            Hello(_)
            | Refused { .. }
            | Ping { .. }
            | Pong { .. }
            | Interest { .. }
            | Capacity { .. }
            | Withdraw { .. }
            | Event { .. }
            | Task { .. }
            | TaskProgress { .. }
            | TaskComplete { .. }
            | TaskError { .. }
            | TaskCancel { .. }
            | Serving { .. }
            | Call { .. }
            | CallAnswer { .. }
            | CallCancel { .. } => {}
        }
    }
    all.iter()
        .map(|m| type_of(&serde_json::to_value(m).expect("serializes")))
        .collect()
}

/// federation.md shows a `json hub` example of every hub-to-hub message and
/// a `federation-view`, and names every refusal reason, both `hub:withdraw`
/// tables, both link event channels and every `[federation]` and
/// `[[federation.peers]]` key (read from the config types).
#[test]
fn federation_md_shows_every_message_and_names_every_key() {
    let text = std::fs::read_to_string(docs_dir().join("federation.md")).expect("federation.md");
    let mut seen = Seen::default();
    let problems = check_markdown("federation.md", &text, &mut seen);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let missing: Vec<_> = all_hub_types()
        .difference(&seen.hub_types)
        .cloned()
        .collect();
    assert!(missing.is_empty(), "no ```json hub example of {missing:?}");
    assert!(
        seen.tags.contains("federation-view"),
        "no federation-view example"
    );
    assert!(
        seen.client_types.contains("hub:hello"),
        "no client hub:hello"
    );
    let mut missing = Vec::new();
    for reason in [
        RefusalReason::NotPermitted,
        RefusalReason::SameHubId,
        RefusalReason::UnknownPeer,
        RefusalReason::AlreadyLinked,
        RefusalReason::ShuttingDown,
    ] {
        match reason {
            RefusalReason::NotPermitted
            | RefusalReason::SameHubId
            | RefusalReason::UnknownPeer
            | RefusalReason::AlreadyLinked
            | RefusalReason::ShuttingDown => {}
        }
        let wire = serde_json::to_value(reason).expect("serializes");
        assert_eq!(
            wire,
            reason.as_str(),
            "RefusalReason wire name and as_str differ"
        );
        if !mentions(&text, reason.as_str()) {
            missing.push(format!("refusal reason `{}`", reason.as_str()));
        }
    }
    for name in [
        "interest",
        "capacity",
        "hub:connected",
        "hub:disconnected",
        "1008",
    ] {
        if !mentions(&text, name) {
            missing.push(format!("`{name}`"));
        }
    }
    let config = serde_json::to_value(Config::default()).expect("serializes");
    for key in config["federation"]
        .as_object()
        .expect("[federation]")
        .keys()
    {
        let key = format!("federation.{key}");
        if !mentions(&text, &key) {
            missing.push(format!("config key `{key}`"));
        }
    }
    let peer =
        chanhub::Config::from_toml("[[federation.peers]]\nname = \"x\"\n").expect("a peer entry");
    let peer = serde_json::to_value(&peer.federation.peers[0]).expect("serializes");
    for key in peer.as_object().expect("a peer").keys() {
        let key = format!("federation.peers[].{key}");
        if !mentions(&text, &key) {
            missing.push(format!("config key `{key}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "proto-docs/federation.md does not mention:\n{}",
        missing.join("\n")
    );
}
