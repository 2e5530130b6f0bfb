//! The machine-readable contract: `proto-docs/schemas/*.json` are JSON
//! Schemas (draft-07) generated from the protocol types with `schemars`,
//! and `proto-docs/asyncapi.yaml` (AsyncAPI 3) refers to them.
//!
//! - The schemas are regenerated in memory and must equal the committed
//!   files. After changing a protocol type, rewrite them with
//!   `CHANHUB_WRITE_SCHEMAS=1 cargo test --test schemas`.
//! - Every JSON example in `proto-docs/*.md` whose tag has a schema
//!   (`json client`, `json server`, …; see [`TAGS`]) is validated against
//!   it with an independent validator, Python's `jsonschema`; SSE payloads
//!   against the schemas written in `asyncapi.yaml` (read with PyYAML).
//!   When `jsonschema` is not installed (`python3 -m pip install jsonschema
//!   pyyaml`), the validation is skipped with a printed reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chanhub::protocol::federation::{FederationView, HubMessage};
use chanhub::protocol::history::{PresenceResponse, PresenceStatsResponse};
use chanhub::protocol::tasks::{Accepted, TaskSpec, TaskView, WorkerView};
use chanhub::protocol::{
    ClientMessage, PublishRequest, PublishResponse, ServerMessage, TokenResponse,
};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

/// Set to `1` to write the generated schemas instead of comparing.
const WRITE_ENV: &str = "CHANHUB_WRITE_SCHEMAS";

/// The SSE `data:` payloads have no Rust type; their schemas are written
/// in `asyncapi.yaml` (`components.schemas.Sse*`), read from there with
/// PyYAML when it is installed.
const SSE: &str = "asyncapi.yaml#Sse";

/// Markdown example tags and the schema file their values must satisfy.
/// A `list` tag holds an array whose items must satisfy it.
const TAGS: [(&str, &str, bool); 15] = [
    ("client", "client-message.json", false),
    ("sse", SSE, false),
    ("server", "server-message.json", false),
    ("hub", "hub-message.json", false),
    ("http-publish-request", "publish-request.json", false),
    ("http-publish-response", "publish-response.json", false),
    ("task-spec", "task-spec.json", false),
    ("task-accepted", "task-accepted.json", false),
    ("task-view", "task-view.json", false),
    ("task-list", "task-view.json", true),
    ("worker-view", "worker-view.json", false),
    ("worker-list", "worker-view.json", true),
    ("http-presence", "presence-response.json", false),
    ("http-presence-stats", "presence-stats-response.json", false),
    ("http-token", "token-response.json", false),
];

/// The schema of what the hub reads: fields with a default are optional,
/// unknown fields refused where the type refuses them.
fn input<T: JsonSchema>() -> Value {
    let schema = SchemaSettings::draft07()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).expect("a schema serializes")
}

/// The schema of what the hub writes: every field it always writes is
/// required.
fn output<T: JsonSchema>() -> Value {
    let schema = SchemaSettings::draft07()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).expect("a schema serializes")
}

/// Every schema file, by name, as generated from the types.
fn generated() -> BTreeMap<&'static str, String> {
    let schemas = [
        ("client-message.json", input::<ClientMessage>()),
        ("server-message.json", output::<ServerMessage>()),
        ("hub-message.json", input::<HubMessage>()),
        ("publish-request.json", input::<PublishRequest>()),
        ("publish-response.json", output::<PublishResponse>()),
        ("task-spec.json", input::<TaskSpec>()),
        ("task-accepted.json", output::<Accepted>()),
        ("task-view.json", output::<TaskView>()),
        ("worker-view.json", output::<WorkerView>()),
        ("presence-response.json", output::<PresenceResponse>()),
        (
            "presence-stats-response.json",
            output::<PresenceStatsResponse>(),
        ),
        ("token-response.json", output::<TokenResponse>()),
        ("federation-view.json", output::<FederationView>()),
    ];
    schemas
        .into_iter()
        .map(|(name, value)| {
            let mut text = serde_json::to_string_pretty(&value).expect("serializes");
            text.push('\n');
            (name, text)
        })
        .collect()
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs")
}

fn schemas_dir() -> PathBuf {
    docs_dir().join("schemas")
}

#[test]
fn committed_schemas_match_the_types() {
    let dir = schemas_dir();
    let generated = generated();
    if std::env::var(WRITE_ENV).is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).expect("create proto-docs/schemas");
        for (name, text) in &generated {
            std::fs::write(dir.join(name), text).expect("write a schema");
        }
        eprintln!("wrote {} schemas to {}", generated.len(), dir.display());
    }
    let mut problems = Vec::new();
    for (name, text) in &generated {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(committed) if &committed == text => {}
            Ok(_) => problems.push(format!("{name} differs from the generated schema")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            let name = entry.expect("dir entry").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") && !generated.contains_key(name.as_ref()) {
                problems.push(format!("{name} is not generated from any type; delete it"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "proto-docs/schemas/ is out of date:\n  {}\n\
         Regenerate with: {WRITE_ENV}=1 cargo test --test schemas",
        problems.join("\n  ")
    );
}

/// The AsyncAPI document names only schema files that exist.
#[test]
fn asyncapi_refers_to_existing_schemas() {
    let text = std::fs::read_to_string(docs_dir().join("asyncapi.yaml")).expect("asyncapi.yaml");
    assert!(
        text.starts_with("asyncapi: 3."),
        "not an AsyncAPI 3 document"
    );
    let generated = generated();
    let mut referred = 0;
    for part in text.split("./schemas/").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .collect();
        assert!(
            generated.contains_key(name.as_str()),
            "asyncapi.yaml refers to ./schemas/{name}, which is not generated"
        );
        referred += 1;
    }
    for name in ["client-message.json", "server-message.json"] {
        assert!(
            text.contains(name),
            "asyncapi.yaml does not refer to {name}"
        );
    }
    assert!(referred > 0);
}

// --- examples ---

/// A fenced code block (the same convention as `tests/proto_docs.rs`).
struct Block {
    line: usize,
    info: String,
    body: String,
}

/// Splits markdown into fenced code blocks (backtick or tilde fences, any
/// indentation, closed by a fence of the same character at least as long).
fn code_blocks(text: &str) -> Vec<Block> {
    fn fence(s: &str) -> Option<(char, usize)> {
        let ch = s.chars().next()?;
        if ch != '`' && ch != '~' {
            return None;
        }
        let len = s.chars().take_while(|c| *c == ch).count();
        (len >= 3).then_some((ch, len))
    }
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize, usize, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some((ch, len)) = fence(trimmed) {
                    let block = Block {
                        line: i + 1,
                        info: trimmed[len..].trim().to_string(),
                        body: String::new(),
                    };
                    open = Some((ch, len, indent, block));
                }
            }
            Some((ch, len, open_indent, mut block)) => match fence(trimmed) {
                Some((c, l)) if c == ch && l >= len && trimmed[l..].trim().is_empty() => {
                    blocks.push(block);
                }
                _ => {
                    let strip = indent.min(open_indent);
                    block.body.push_str(&line[strip..]);
                    block.body.push('\n');
                    open = Some((ch, len, open_indent, block));
                }
            },
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    blocks
}

/// One value to validate: `{"where", "schema", "value", "valid"}`.
fn case(place: String, schema: &str, value: Value, valid: bool) -> Value {
    json!({ "where": place, "schema": schema, "value": value, "valid": valid })
}

/// Every value of a tagged example in `proto-docs/*.md`.
fn examples() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(docs_dir())
        .expect("proto-docs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let name = path.file_name().expect("a name").to_string_lossy();
        let text = std::fs::read_to_string(&path).expect("readable");
        for block in code_blocks(&text) {
            if block.info == "text sse-stream" {
                for (i, line) in block.body.lines().enumerate() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        let value: Value = serde_json::from_str(data)
                            .unwrap_or_else(|e| panic!("{name}:{}: not JSON: {e}", block.line));
                        let place =
                            format!("{name}:{} (```text sse-stream, line {})", block.line, i + 1);
                        cases.push(case(place, SSE, value, true));
                    }
                }
                continue;
            }
            let Some(tag) = block.info.strip_prefix("json ") else {
                continue;
            };
            let Some((_, schema, list)) = TAGS.iter().find(|(t, _, _)| *t == tag.trim()) else {
                continue;
            };
            let values = serde_json::Deserializer::from_str(&block.body)
                .into_iter::<Value>()
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{name}:{}: not JSON: {e}", block.line));
            for (i, value) in values.into_iter().enumerate() {
                let place = format!("{name}:{} (```json {tag}, value {})", block.line, i + 1);
                if *list {
                    let items = value.as_array().cloned().unwrap_or_else(|| {
                        panic!("{place}: a list example is an array");
                    });
                    for (j, item) in items.into_iter().enumerate() {
                        cases.push(case(format!("{place}[{j}]"), schema, item, true));
                    }
                } else {
                    cases.push(case(place, schema, value, true));
                }
            }
        }
    }
    cases
}

/// Values the schemas must refuse, so a validator that accepts everything
/// cannot pass.
fn counter_examples() -> Vec<Value> {
    [
        ("client-message.json", json!({"type": "subscribe"})),
        ("client-message.json", json!({"type": "nope"})),
        (
            "client-message.json",
            json!({"type": "publish", "channel": 1, "data": 1}),
        ),
        (
            "server-message.json",
            json!({"type": "auth:failed", "reason": "not_a_reason", "message": ""}),
        ),
        ("task-spec.json", json!({"type": "x", "bogus": 1})),
        (
            SSE,
            json!({"type": "connected", "data": {}, "timestamp": 1}),
        ),
        (SSE, json!({"type": "a", "channel": "a", "data": 1})),
        (
            "publish-request.json",
            json!({"channel": "a", "data": 1, "extra": true}),
        ),
    ]
    .into_iter()
    .map(|(schema, value)| case(format!("counter-example {value}"), schema, value, false))
    .collect()
}

/// Validates every case with Python's `jsonschema`; prints the failures.
const VALIDATOR: &str = r#"
import json, sys
from pathlib import Path
import jsonschema

schemas_dir = Path(sys.argv[1])
cases = json.loads(Path(sys.argv[2]).read_text())
validators = {}
for path in sorted(schemas_dir.glob("*.json")):
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validators[path.name] = cls(schema, format_checker=cls.FORMAT_CHECKER)
try:
    import yaml
    asyncapi = yaml.safe_load(Path(sys.argv[3]).read_text())
    defs = asyncapi["components"]["schemas"]
    sse = {"oneOf": [defs[n] for n in ("SseConnected", "SseRecoveryFailed", "SseEvent")]}
    jsonschema.Draft7Validator.check_schema(sse)
    validators["asyncapi.yaml#Sse"] = jsonschema.Draft7Validator(sse)
except ImportError:
    print("PyYAML is not installed: SSE examples not checked against asyncapi.yaml")
    cases = [c for c in cases if c["schema"] != "asyncapi.yaml#Sse"]
failures = 0
for case in cases:
    errors = list(validators[case["schema"]].iter_errors(case["value"]))
    if case["valid"] and errors:
        failures += 1
        best = jsonschema.exceptions.best_match(errors)
        print(f"{case['where']}: not valid against {case['schema']}: {best.message} "
              f"(at {list(best.absolute_path)})\n  value: {json.dumps(case['value'])}")
    elif not case["valid"] and not errors:
        failures += 1
        print(f"{case['where']}: {case['schema']} accepts a value it must refuse")
print(f"checked {len(cases)} values against {len(validators)} schemas")
sys.exit(1 if failures else 0)
"#;

fn python_has_jsonschema() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .map_err(|e| format!("python3 cannot be run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import jsonschema ({}); install it with `python3 -m pip install jsonschema`",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn docs_examples_satisfy_the_schemas() {
    let cases = examples();
    let tags: std::collections::BTreeSet<_> = cases
        .iter()
        .map(|c| c["schema"].as_str().unwrap_or_default().to_string())
        .collect();
    for schema in ["client-message.json", "server-message.json"] {
        assert!(
            tags.contains(schema),
            "no examples checked against {schema}"
        );
    }
    if let Err(reason) = python_has_jsonschema() {
        eprintln!("SKIPPED docs_examples_satisfy_the_schemas: {reason}");
        return;
    }
    let mut all = cases;
    all.extend(counter_examples());
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&all).expect("serializes")).expect("write");
    // Validate against the generated schemas, so a stale committed file
    // fails the drift test above rather than this one.
    let schema_dir = dir.path().join("schemas");
    std::fs::create_dir(&schema_dir).expect("mkdir");
    for (name, text) in generated() {
        std::fs::write(schema_dir.join(name), text).expect("write a schema");
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATOR)
        .arg(&schema_dir)
        .arg(&cases_path)
        .arg(docs_dir().join("asyncapi.yaml"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "JSON examples in proto-docs/ do not satisfy the schemas:\n{stdout}{stderr}"
    );
}
