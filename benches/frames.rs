//! Benchmarks for the per-message work around the fan-out: decoding a
//! client's `publish` frame, building an event with its WebSocket frame
//! (done once per publish), building its SSE frame (once per publish, on
//! the first SSE subscriber), handing the frame to one more subscriber (a
//! refcount), and decoding an event frame as a client does.
//!
//! Payloads are 64 bytes, as in the end-to-end scenarios.

use std::hint::black_box;

use chanhub::channels::{ChannelName, NameLimits};
use chanhub::protocol::{ClientMessage, Event, ServerMessage};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

/// 64 bytes, as the load generator sends.
const PAYLOAD: &str = "lg1:00000000001234567890:.......................................";

fn channel() -> ChannelName {
    ChannelName::parse("bench:ch", &NameLimits::default()).expect("bench channel is valid")
}

fn publish_frame() -> String {
    format!(r#"{{"type":"publish","channel":"bench:ch","data":"{PAYLOAD}"}}"#)
}

fn event() -> Event {
    Event::new(
        channel(),
        Value::String(PAYLOAD.into()),
        "mi7x2k3q-12345".into(),
        1_763_683_200_000,
    )
}

fn frames(c: &mut Criterion) {
    assert_eq!(PAYLOAD.len(), 64);
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));

    let text = publish_frame();
    group.bench_function("parse_publish", |b| {
        b.iter(|| serde_json::from_str::<ClientMessage>(black_box(&text)).expect("parses"))
    });

    group.bench_function("event_new_ws_frame", |b| {
        b.iter_batched(
            || {
                (
                    channel(),
                    Value::String(PAYLOAD.into()),
                    "mi7x2k3q-12345".to_string(),
                )
            },
            |(ch, data, id)| {
                let event = Event::new(ch, data, id, 1_763_683_200_000);
                let frame = event.ws_frame();
                // Returned, so dropping them is not timed.
                (event, frame)
            },
            BatchSize::SmallInput,
        )
    });

    group.bench_function("sse_frame", |b| {
        b.iter_batched(
            event,
            |event| {
                let frame = event.sse_frame();
                (event, frame)
            },
            BatchSize::SmallInput,
        )
    });

    let shared = event();
    group.bench_function("ws_frame_per_subscriber", |b| {
        b.iter(|| black_box(shared.ws_frame()))
    });

    let frame = shared.ws_frame();
    group.bench_function("parse_event", |b| {
        b.iter(|| serde_json::from_str::<ServerMessage>(black_box(frame.as_str())).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
