//! The Server-Sent Events stream (`GET /api/genesis/stream`).
//!
//! Each stream has a thread of its own (at most `SSE_STREAMS_MAX` at once),
//! outside the request workers. It subscribes to the bus first, then sends
//! the backlog (events with `seq` greater than the `Last-Event-ID` header,
//! or the `since` query parameter: durable events from the log and recent
//! ones from the ring), then live events, skipping any it already sent.
//! Each event goes out as `id: SEQ`, `event: TOPIC`, `data: JSON`; what is
//! ready at once is written as one chunk and flushed. A comment line every
//! `KEEPALIVE` keeps proxies from closing an idle stream.
//!
//! A subscriber that falls too far behind is dropped by the bus (it never
//! slows the engine); the stream then ends and the client reconnects with
//! `Last-Event-ID`, getting what the ring still holds.
//!
//! With `progress=1`, the stream also sends an unnumbered `hxo.progress`
//! event every second with the status of the plans running here (what the
//! dashboard draws its progress bars from, without a flood of per-shard
//! events).

use super::server::Chunked;
use super::App;
use crate::events::Event;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KEEPALIVE: Duration = Duration::from_secs(15);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

/// What a client asked to receive.
pub struct Filter {
    /// Topics wanted (empty: all).
    pub topics: Vec<&'static str>,
    pub plan_id: Option<String>,
    /// Send events with `seq` greater than this first.
    pub since: Option<u64>,
    pub progress: bool,
}

impl Filter {
    fn wants(&self, event: &Event) -> bool {
        (self.topics.is_empty() || self.topics.contains(&event.topic))
            && self.plan_id.as_deref().is_none_or(|p| event.is_for_plan(p))
    }
}

/// Events with `seq > since` that `filter` wants, oldest first: durable
/// ones from the store and recent ones from the ring, without duplicates.
pub fn backlog(app: &App, since: u64, filter: &Filter, limit: usize) -> Vec<Event> {
    let mut merged: BTreeMap<u64, Event> = BTreeMap::new();
    for event in app.engine.durable_events() {
        if event.seq > since && filter.wants(&event) {
            merged.insert(event.seq, event);
        }
    }
    let topic = match filter.topics.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    for event in app
        .engine
        .bus
        .recent(since, topic, filter.plan_id.as_deref(), usize::MAX)
    {
        if filter.wants(&event) {
            merged.entry(event.seq).or_insert(event);
        }
    }
    merged.into_values().take(limit).collect()
}

fn frame(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(
        format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            event.seq,
            event.topic,
            event.to_json()
        )
        .as_bytes(),
    );
}

/// Runs one stream until the client goes away, the bus drops it or the
/// server stops. `stream` has had its headers sent.
pub fn run(app: Arc<App>, mut stream: Chunked, filter: Filter) {
    let topic = match filter.topics.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let receiver = app.engine.bus.subscribe(topic);
    let mut last_sent = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(b"retry: 2000\n: hxo event stream\n\n");
    if let Some(since) = filter.since {
        for event in backlog(&app, since, &filter, usize::MAX) {
            last_sent = last_sent.max(event.seq);
            frame(&mut out, &event);
            if out.len() >= 256 * 1024 {
                if stream.send(&out).is_err() {
                    return;
                }
                out.clear();
            }
        }
    }
    if stream.send(&out).is_err() {
        return;
    }
    out.clear();
    let mut last_write = Instant::now();
    let mut last_progress = Instant::now() - PROGRESS_INTERVAL;
    loop {
        if app.stopping.load(Ordering::SeqCst) {
            break;
        }
        match receiver.recv_timeout(POLL) {
            Ok(event) => {
                let mut next = Some(event);
                // Everything ready now goes out as one chunk.
                while let Some(event) = next {
                    if event.seq > last_sent && filter.wants(&event) {
                        last_sent = event.seq;
                        frame(&mut out, &event);
                    }
                    next = if out.len() < 256 * 1024 {
                        receiver.try_recv().ok()
                    } else {
                        None
                    };
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            // The bus dropped us as too slow: end, the client resumes.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        if filter.progress && last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            let plans: Vec<serde_json::Value> = app
                .engine
                .running_plans()
                .iter()
                .filter_map(|id| app.engine.status(id).ok())
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect();
            if !plans.is_empty() {
                out.extend_from_slice(
                    format!(
                        "event: hxo.progress\ndata: {}\n\n",
                        serde_json::json!({ "plans": plans })
                    )
                    .as_bytes(),
                );
            }
        }
        if out.is_empty() && last_write.elapsed() >= KEEPALIVE {
            out.extend_from_slice(b": keepalive\n\n");
        }
        if !out.is_empty() {
            if stream.send(&out).is_err() {
                return;
            }
            out.clear();
            last_write = Instant::now();
        }
    }
    let _ = stream.finish();
}
