//! How `chanhub sub` prints events: one JSON object per line when the
//! output is a pipe (for `jq` and scripts), or a readable, coloured block
//! per event on a terminal.

use serde_json::Value;

/// ANSI styles. Written by hand: five escape codes do not need a crate.
struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    fn channel(&self, t: &str) -> String {
        self.paint("1;36", t)
    }
    fn key(&self, t: &str) -> String {
        self.paint("34", t)
    }
    fn string(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn number(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn literal(&self, t: &str) -> String {
        self.paint("35", t)
    }
}

/// One event as a JSON line: `{"channel","data","id","ts"}`.
pub fn json_line(channel: &str, data: &Value, id: &str, ts: u64) -> String {
    serde_json::json!({ "channel": channel, "data": data, "id": id, "ts": ts }).to_string()
}

/// One event for a person: a header line (UTC time, channel, id), then the
/// data, pretty-printed and indented, or on the header line when short.
/// `colour` adds ANSI colours.
pub fn pretty(channel: &str, data: &Value, id: &str, ts: u64, colour: bool) -> String {
    let style = Style { on: colour };
    let header = format!(
        "{}  {}  {}",
        style.dim(&clock(ts)),
        style.channel(channel),
        style.dim(id)
    );
    let compact = data.to_string();
    if !matches!(data, Value::Object(_) | Value::Array(_)) || compact.len() <= 60 {
        let mut inline = String::new();
        write_value(&mut inline, data, &style, None);
        return format!("{header}  {inline}");
    }
    let mut body = String::from("  ");
    write_value(&mut body, data, &style, Some(1));
    format!("{header}\n{body}")
}

/// `HH:MM:SS.mmm` (UTC) of a time in ms since the Unix epoch.
fn clock(ts: u64) -> String {
    let ms = ts % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Writes `value`; `indent` = Some(depth) pretty-prints with two spaces per
/// level, None writes it on one line (with spaces after `:` and `,`).
fn write_value(out: &mut String, value: &Value, style: &Style, indent: Option<usize>) {
    let newline = |out: &mut String, depth: usize| {
        if indent.is_some() {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
    };
    match value {
        Value::Null | Value::Bool(_) => out.push_str(&style.literal(&value.to_string())),
        Value::Number(n) => out.push_str(&style.number(&n.to_string())),
        Value::String(s) => out.push_str(&style.string(&Value::String(s.clone()).to_string())),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            let depth = indent.unwrap_or(0);
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline(out, depth + 1);
                write_value(out, item, style, indent.map(|d| d + 1));
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            let depth = indent.unwrap_or(0);
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline(out, depth + 1);
                out.push_str(&style.key(&Value::String(key.clone()).to_string()));
                out.push_str(": ");
                write_value(out, item, style, indent.map(|d| d + 1));
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_lines_are_plain_json() {
        let line = json_line("a:b", &json!({"x": 1}), "id-1", 7);
        let back: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            back,
            json!({"channel": "a:b", "data": {"x": 1}, "id": "id-1", "ts": 7})
        );
    }

    #[test]
    fn short_data_stays_on_the_header_line() {
        let text = pretty("session:42", &json!({"n": 1}), "e-1", 3_723_004, false);
        assert_eq!(text, r#"01:02:03.004  session:42  e-1  {"n": 1}"#);
        let text = pretty("s", &json!("hi"), "e", 0, false);
        assert_eq!(text, r#"00:00:00.000  s  e  "hi""#);
    }

    #[test]
    fn long_data_is_indented_below() {
        // Keys in sorted order, so the test holds with or without
        // serde_json's preserve_order.
        let data = json!({"owner": {"name": "a rather long name here"}, "pages": [1, 2], "status": "rendering"});
        let text = pretty("s", &data, "e", 0, false);
        assert_eq!(
            text,
            "00:00:00.000  s  e\n  {\n    \"owner\": {\n      \"name\": \"a rather long name here\"\n    },\n    \"pages\": [\n      1,\n      2\n    ],\n    \"status\": \"rendering\"\n  }"
        );
    }

    #[test]
    fn colour_wraps_parts_in_escape_codes() {
        let text = pretty("s", &json!({"k": true}), "e", 0, true);
        assert!(text.contains("\x1b[1;36ms\x1b[0m"), "{text:?}");
        assert!(text.contains("\x1b[34m\"k\"\x1b[0m"), "{text:?}");
        assert!(text.contains("\x1b[35mtrue\x1b[0m"), "{text:?}");
        assert!(!pretty("s", &json!(1), "e", 0, false).contains('\x1b'));
    }
}
