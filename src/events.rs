//! The event bus ("Genesis"): the guide's topics, published in-process with
//! sequence numbers.
//!
//! Every event goes into a bounded ring of recent events and to live
//! subscribers (each behind a bounded queue: a subscriber that falls
//! `SUBSCRIBER_QUEUE_MAX` events behind is dropped, not waited for, so a
//! slow reader never stalls the engine). Plan-level and audit events are
//! also handed to a durable sink (the checkpoint log), so `hxo events` and
//! a restarted server still see them. Per-shard events are memory-only, and
//! built only when someone can read them: a live subscriber, or the HTTP
//! service (see [`Bus::retain_shard_events`]).
//!
//! With `GENESIS_MODE=disabled` nothing is published at all.

use crate::limits::{EVENT_RING_MAX, SUBSCRIBER_QUEUE_MAX};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

pub const PLAN: &str = "hxo.plan";
pub const SHARD_CREATED: &str = "hxo.shard.created";
pub const SHARD_CLAIMED: &str = "hxo.shard.claimed";
pub const SHARD_DONE: &str = "hxo.shard.done";
pub const SHARD_FAILED: &str = "hxo.shard.failed";
pub const AGGREGATE_READY: &str = "hxo.aggregate.ready";
pub const AGGREGATE_CERTIFY: &str = "hxo.aggregate.certify";
pub const AGGREGATE_FINALIZED: &str = "hxo.aggregate.finalized";
pub const AUTOTUNE_SIGNAL: &str = "hxo.autotune.signal";
pub const ALERT: &str = "hxo.alert";
pub const AUDIT: &str = "hxo.audit";

pub const TOPICS: [&str; 11] = [
    PLAN,
    SHARD_CREATED,
    SHARD_CLAIMED,
    SHARD_DONE,
    SHARD_FAILED,
    AGGREGATE_READY,
    AGGREGATE_CERTIFY,
    AGGREGATE_FINALIZED,
    AUTOTUNE_SIGNAL,
    ALERT,
    AUDIT,
];

/// Per-shard topics live only in the ring; the rest are durable.
pub fn is_durable(topic: &str) -> bool {
    !topic.starts_with("hxo.shard.")
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// One of [`TOPICS`].
    pub topic: &'static str,
    pub data: EventData,
}

/// An event's fields. Per-shard events are kept compact (they are
/// published a million times a run) and rendered to JSON only when read.
#[derive(Clone, Debug, PartialEq)]
pub enum EventData {
    Json(Value),
    Shard(ShardEvent),
}

/// A per-shard event, kept without heap allocations but for a failure's
/// error text.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardEvent {
    pub plan_id: [u8; 16],
    pub leaf_index: u64,
    pub cas_id: crate::hash::Hash,
    pub output_digest: Option<crate::hash::Hash>,
    pub attempts: u32,
    pub duration_us: u64,
    pub error: Option<Box<str>>,
}

impl ShardEvent {
    pub fn plan_id_text(&self) -> String {
        uuid::Uuid::from_bytes(self.plan_id).to_string()
    }
}

impl Event {
    /// Whether the event concerns plan `plan_id` (text form).
    pub fn is_for_plan(&self, plan_id: &str) -> bool {
        match &self.data {
            EventData::Json(value) => value.get("plan_id").and_then(Value::as_str) == Some(plan_id),
            EventData::Shard(shard) => {
                uuid::Uuid::parse_str(plan_id).is_ok_and(|id| *id.as_bytes() == shard.plan_id)
            }
        }
    }

    /// The event's fields as a JSON object.
    pub fn data_json(&self) -> Value {
        match &self.data {
            EventData::Json(value) => value.clone(),
            EventData::Shard(shard) => {
                let mut value = serde_json::json!({
                    "plan_id": shard.plan_id_text(),
                    "leaf_index": shard.leaf_index,
                    "cas_id": crate::hash::to_hex(&shard.cas_id),
                    "attempts": shard.attempts,
                    "duration_ms": shard.duration_us as f64 / 1000.0,
                });
                if let Some(digest) = &shard.output_digest {
                    value["output_digest"] = Value::String(crate::hash::to_hex(digest));
                }
                if let Some(error) = &shard.error {
                    value["error"] = Value::String(error.to_string());
                }
                value
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let mut value = self.data_json();
        if let Value::Object(map) = &mut value {
            map.insert("seq".into(), self.seq.into());
            map.insert("at_ms".into(), self.at_ms.into());
            map.insert("topic".into(), self.topic.into());
        }
        value
    }
}

/// The static topic name for `name`, if it is one of the guide's.
pub fn topic(name: &str) -> Option<&'static str> {
    TOPICS.iter().copied().find(|t| *t == name)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type DurableSink = Box<dyn Fn(&Event) + Send + Sync>;

struct Subscriber {
    topic: Option<String>,
    sender: Sender<Event>,
}

pub struct Bus {
    enabled: bool,
    next_seq: AtomicU64,
    ring: Mutex<VecDeque<Event>>,
    subscribers: Mutex<Vec<Subscriber>>,
    subscriber_count: AtomicUsize,
    durable: RwLock<Option<DurableSink>>,
    dropped_subscribers: AtomicU64,
    closed: AtomicBool,
    retain_shard_events: AtomicBool,
}

impl Bus {
    /// A bus whose sequence numbers continue after `last_seq` (the highest
    /// durable sequence number found in the log).
    pub fn new(enabled: bool, last_seq: u64) -> Bus {
        Bus {
            enabled,
            next_seq: AtomicU64::new(last_seq + 1),
            ring: Mutex::new(VecDeque::with_capacity(1024)),
            subscribers: Mutex::new(Vec::new()),
            subscriber_count: AtomicUsize::new(0),
            durable: RwLock::new(None),
            dropped_subscribers: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            retain_shard_events: AtomicBool::new(false),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Sets where durable events go (the checkpoint log's writer).
    pub fn set_durable_sink(&self, sink: DurableSink) {
        *self.durable.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Whether anyone listens live: per-shard claim events are only built
    /// when someone does.
    pub fn has_subscribers(&self) -> bool {
        self.subscriber_count.load(Ordering::Relaxed) > 0
    }

    /// Keeps per-shard events in the ring for readers that come later (the
    /// HTTP service's event pages and SSE replay). Without it and with no
    /// live subscriber, per-shard events are not built at all: nobody could
    /// ever read them (a CLI run).
    pub fn retain_shard_events(&self) {
        self.retain_shard_events.store(true, Ordering::Relaxed);
    }

    /// Whether per-shard events have a reader, now or later.
    pub fn wants_shard_events(&self) -> bool {
        self.enabled && (self.retain_shard_events.load(Ordering::Relaxed) || self.has_subscribers())
    }

    /// Publishes an event and returns its sequence number (0 when disabled).
    pub fn publish(&self, topic: &'static str, data: Value) -> u64 {
        self.publish_data(topic, EventData::Json(data))
    }

    /// Publishes per-shard events (memory-only) under one lock and one
    /// clock read: they come a batch at a time from the log writer.
    pub fn publish_shards(&self, events: Vec<(&'static str, ShardEvent)>) {
        if !self.wants_shard_events() || self.closed.load(Ordering::Relaxed) || events.is_empty() {
            return;
        }
        let at_ms = now_ms();
        let first = self
            .next_seq
            .fetch_add(events.len() as u64, Ordering::SeqCst);
        let events: Vec<Event> = events
            .into_iter()
            .enumerate()
            .map(|(i, (topic, shard))| Event {
                seq: first + i as u64,
                at_ms,
                topic,
                data: EventData::Shard(shard),
            })
            .collect();
        self.deliver_all(events);
    }

    fn publish_data(&self, topic: &'static str, data: EventData) -> u64 {
        if !self.enabled || self.closed.load(Ordering::Relaxed) {
            return 0;
        }
        let event = Event {
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            at_ms: now_ms(),
            topic,
            data,
        };
        if is_durable(topic) {
            if let Some(sink) = self
                .durable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                sink(&event);
            }
        }
        self.deliver(event)
    }

    fn deliver(&self, event: Event) -> u64 {
        let seq = event.seq;
        self.deliver_all(vec![event]);
        seq
    }

    fn deliver_all(&self, events: Vec<Event>) {
        if self.has_subscribers() {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            for event in &events {
                subscribers.retain(|s| {
                    if s.topic.as_deref().is_some_and(|t| t != event.topic) {
                        return true;
                    }
                    match s.sender.try_send(event.clone()) {
                        Ok(()) => true,
                        Err(TrySendError::Full(_)) => {
                            self.dropped_subscribers.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        Err(TrySendError::Disconnected(_)) => false,
                    }
                });
            }
            self.subscriber_count
                .store(subscribers.len(), Ordering::Relaxed);
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // Only the newest EVENT_RING_MAX of a large batch can stay.
        let skip = events.len().saturating_sub(EVENT_RING_MAX);
        for event in events.into_iter().skip(skip) {
            if ring.len() == EVENT_RING_MAX {
                ring.pop_front();
            }
            ring.push_back(event);
        }
    }

    /// Adds an event recovered from the log to the ring without re-logging.
    pub fn restore(&self, event: Event) {
        self.next_seq.fetch_max(event.seq + 1, Ordering::SeqCst);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == EVENT_RING_MAX {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Live events from now on, optionally of one topic.
    pub fn subscribe(&self, topic: Option<&str>) -> Receiver<Event> {
        let (sender, receiver) = crossbeam_channel::bounded(SUBSCRIBER_QUEUE_MAX);
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.push(Subscriber {
            topic: topic.map(str::to_string),
            sender,
        });
        self.subscriber_count
            .store(subscribers.len(), Ordering::Relaxed);
        receiver
    }

    /// Events in the ring with `seq > since`, filtered, oldest first, at
    /// most `limit`.
    pub fn recent(
        &self,
        since: u64,
        topic: Option<&str>,
        plan_id: Option<&str>,
        limit: usize,
    ) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .filter(|e| e.seq > since)
            .filter(|e| topic.is_none_or(|t| e.topic == t))
            .filter(|e| plan_id.is_none_or(|p| e.is_for_plan(p)))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst) - 1
    }

    pub fn dropped_subscribers(&self) -> u64 {
        self.dropped_subscribers.load(Ordering::Relaxed)
    }

    /// Stops publishing (used when the store shuts down).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn sequence_numbers_ring_and_filters() {
        let bus = Bus::new(true, 41);
        let first = bus.publish(SHARD_DONE, json!({"plan_id": "a", "cas_id": "x"}));
        let second = bus.publish(PLAN, json!({"plan_id": "b"}));
        assert_eq!((first, second), (42, 43));
        assert_eq!(bus.recent(0, None, None, 10).len(), 2);
        assert_eq!(bus.recent(42, None, None, 10)[0].seq, 43);
        assert_eq!(bus.recent(0, Some(PLAN), None, 10).len(), 1);
        assert_eq!(bus.recent(0, None, Some("a"), 10)[0].topic, SHARD_DONE);
    }

    #[test]
    fn ring_is_bounded_and_durable_topics_reach_the_sink() {
        let bus = Bus::new(true, 0);
        let durable = Arc::new(AtomicU64::new(0));
        let counter = durable.clone();
        bus.set_durable_sink(Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        for _ in 0..EVENT_RING_MAX + 10 {
            bus.publish(SHARD_DONE, json!({}));
        }
        bus.publish(AUDIT, json!({"actor": "admiral"}));
        assert_eq!(bus.recent(0, None, None, usize::MAX).len(), EVENT_RING_MAX);
        assert_eq!(durable.load(Ordering::SeqCst), 1);
    }

    fn shard_event(leaf_index: u64) -> (&'static str, ShardEvent) {
        (
            SHARD_DONE,
            ShardEvent {
                plan_id: [1; 16],
                leaf_index,
                cas_id: [2; 32],
                output_digest: Some([3; 32]),
                attempts: 1,
                duration_us: 5,
                error: None,
            },
        )
    }

    #[test]
    fn shard_events_are_built_only_for_readers() {
        let bus = Bus::new(true, 0);
        assert!(!bus.wants_shard_events());
        bus.publish_shards(vec![shard_event(0)]);
        assert!(bus.recent(0, None, None, 10).is_empty());
        // A live subscriber gets them (and the ring keeps them).
        let live = bus.subscribe(None);
        assert!(bus.wants_shard_events());
        bus.publish_shards(vec![shard_event(1)]);
        assert_eq!(live.try_recv().unwrap().data_json()["leaf_index"], 1);
        drop(live);
        // Dropped subscribers are noticed at the next delivery.
        bus.publish_shards(vec![shard_event(2)]);
        assert!(!bus.wants_shard_events());
        bus.retain_shard_events();
        bus.publish_shards(vec![shard_event(3)]);
        let kept: Vec<_> = bus
            .recent(0, None, None, 10)
            .iter()
            .map(|e| e.data_json()["leaf_index"].clone())
            .collect();
        assert_eq!(kept, vec![json!(1), json!(2), json!(3)]);
        // Disabled means nothing, whatever was asked.
        let disabled = Bus::new(false, 0);
        disabled.retain_shard_events();
        assert!(!disabled.wants_shard_events());
    }

    #[test]
    fn subscribers_get_their_topic_and_slow_ones_are_dropped() {
        let bus = Bus::new(true, 0);
        let done = bus.subscribe(Some(SHARD_DONE));
        let _slow = bus.subscribe(None);
        bus.publish(SHARD_DONE, json!({"cas_id": "c"}));
        bus.publish(PLAN, json!({}));
        assert_eq!(done.try_recv().unwrap().data_json()["cas_id"], "c");
        assert!(done.try_recv().is_err());
        for _ in 0..SUBSCRIBER_QUEUE_MAX + 1 {
            bus.publish(PLAN, json!({}));
        }
        assert_eq!(bus.dropped_subscribers(), 1);
    }

    #[test]
    fn disabled_bus_publishes_nothing() {
        let bus = Bus::new(false, 0);
        assert_eq!(bus.publish(PLAN, json!({})), 0);
        assert!(bus.recent(0, None, None, 10).is_empty());
    }
}
