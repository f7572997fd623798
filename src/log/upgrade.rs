//! Reading version-1 lifecycle events as the typed records of version 2.
//!
//! A version-1 writer logged a plan's lifecycle (held as created,
//! submitted, run started or resumed, certified) only as `Event` records
//! with a JSON payload. This module is the only place that knows those
//! events: every record-level read of a version-1 segment (the owner's
//! recovery and [`Log::for_each_record`](super::Log::for_each_record),
//! which compaction reads through, and
//! [`read_only_scan`](super::read_only_scan)) hands on each `Event` as it
//! is and then, right after it, the typed record it stands for. Readers
//! above the log therefore see one lifecycle model whatever version wrote
//! the store, and compaction, which rewrites in version 2, keeps both.
//!
//! Version-2 segments are never upgraded: their writers log the typed
//! records themselves, and their events are for subscribers only.
//! Frame-level scans (certification reading `ShardDone` frames in place)
//! skip the upgrade: no lifecycle record is a frame they look at.
//!
//! The mapping, from the event's topic and payload:
//!
//! | topic                   | payload                  | record                                  |
//! |-------------------------|--------------------------|-----------------------------------------|
//! | `hxo.plan`              | `"status": "created"`    | `PlanHeld`                              |
//! | `hxo.plan`              | `"status": "submitted"`  | `PlanSubmitted`, actor `submitted_by`   |
//! | `hxo.plan`              | `"status": "running"`    | `PlanRunStarted`, cause `Start`         |
//! | `hxo.plan`              | `"status": "rehydrated"` | `PlanRunStarted`, cause `Resume`        |
//! | `hxo.aggregate.certify` | any                      | `PlanCertified`                         |
//!
//! Every record takes `plan_id` (a UUID string) from the payload and
//! `at_ms` from the event. `PlanCertified` takes `tree_size` (required),
//! `root` (64 hex digits, required), `truth_certified` (certified only when
//! it is `true`) and `proofs_checked` (0 when absent). A `submitted_by`
//! that is not a string is an empty actor; one over `ACTOR_LEN_MAX` bytes
//! is cut to it at a character boundary, so the upgraded record is always
//! one a version-2 writer could log. Anything else (a payload that is not
//! a JSON object, a missing or invalid `plan_id`, a bad root, another
//! status or topic) stands for no record: the event is still handed on,
//! and reading never fails because of its payload.

use serde_json::Value;

use super::format::{PlanId, Record, RunCause};
use super::limits::ACTOR_LEN_MAX;

/// The version whose lifecycle events are upgraded.
const UPGRADED_VERSION: u32 = 1;
/// Topic of a version-1 writer's plan status events (persisted: never
/// follow a rename of the live topic).
const PLAN_TOPIC: &str = "hxo.plan";
/// Topic of a version-1 writer's certification events.
const CERTIFY_TOPIC: &str = "hxo.aggregate.certify";

/// The typed record that `record`, read from a segment of format
/// `version`, stands for, to be handed on right after it: `None` unless
/// the segment is version 1 and the record a lifecycle `Event`.
pub fn upgrade(version: u32, record: &Record) -> Option<Record> {
    if version != UPGRADED_VERSION {
        return None;
    }
    let Record::Event {
        at_ms,
        topic,
        payload_json,
        ..
    } = record
    else {
        return None;
    };
    from_v1_event(*at_ms, topic, payload_json)
}

/// Hands `record`, read from a segment of format `version`, to
/// `on_record`, then the typed record it stands for, if any: the order
/// every record-level read keeps. Returns how many records it added (0 or
/// 1), for the read's record count.
pub(crate) fn hand_on(version: u32, record: Record, on_record: &mut dyn FnMut(Record)) -> u64 {
    let typed = upgrade(version, &record);
    on_record(record);
    match typed {
        Some(typed) => {
            on_record(typed);
            1
        }
        None => 0,
    }
}

/// The typed record a version-1 event of `topic` with `payload_json`,
/// logged at `at_ms`, stands for (the table of the module docs).
pub fn from_v1_event(at_ms: u64, topic: &str, payload_json: &str) -> Option<Record> {
    if topic != PLAN_TOPIC && topic != CERTIFY_TOPIC {
        return None;
    }
    let payload: Value = serde_json::from_str(payload_json).ok()?;
    let payload = payload.as_object()?;
    let plan_id = plan_id(payload.get("plan_id")?)?;
    if topic == CERTIFY_TOPIC {
        return Some(Record::PlanCertified {
            plan_id,
            at_ms,
            tree_size: payload.get("tree_size")?.as_u64()?,
            root: crate::hash::from_hex(payload.get("root")?.as_str()?)?,
            certified: payload.get("truth_certified") == Some(&Value::Bool(true)),
            proofs_checked: payload
                .get("proofs_checked")
                .and_then(Value::as_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        });
    }
    Some(match payload.get("status")?.as_str()? {
        "created" => Record::PlanHeld { plan_id, at_ms },
        "submitted" => Record::PlanSubmitted {
            plan_id,
            at_ms,
            actor: actor(payload.get("submitted_by")),
        },
        "running" => Record::PlanRunStarted {
            plan_id,
            at_ms,
            cause: RunCause::Start,
        },
        "rehydrated" => Record::PlanRunStarted {
            plan_id,
            at_ms,
            cause: RunCause::Resume,
        },
        _ => return None,
    })
}

fn plan_id(value: &Value) -> Option<PlanId> {
    let uuid = uuid::Uuid::parse_str(value.as_str()?).ok()?;
    Some(uuid.into_bytes())
}

/// `submitted_by` as an actor within its bound.
fn actor(value: Option<&Value>) -> String {
    let text = value.and_then(Value::as_str).unwrap_or("");
    let mut end = text.len().min(ACTOR_LEN_MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{sha256, to_hex};

    const PLAN: &str = "6f1c2b7e-0d4a-4c55-9e8b-1a2b3c4d5e6f";

    fn plan() -> PlanId {
        uuid::Uuid::parse_str(PLAN).unwrap().into_bytes()
    }

    fn event(topic: &str, payload_json: &str) -> Record {
        Record::Event {
            seq: 3,
            at_ms: 1234,
            topic: topic.to_owned(),
            payload_json: payload_json.to_owned(),
        }
    }

    fn v1(topic: &str, payload_json: &str) -> Option<Record> {
        upgrade(1, &event(topic, payload_json))
    }

    #[test]
    fn every_plan_status_maps_to_its_record() {
        let status = |status: &str| {
            v1(
                "hxo.plan",
                &format!(
                    r#"{{"plan_id":"{PLAN}","name":"n","status":"{status}","submitted_by":"ops"}}"#
                ),
            )
        };
        let plan_id = plan();
        assert_eq!(
            status("created"),
            Some(Record::PlanHeld {
                plan_id,
                at_ms: 1234
            })
        );
        assert_eq!(
            status("submitted"),
            Some(Record::PlanSubmitted {
                plan_id,
                at_ms: 1234,
                actor: "ops".to_owned()
            })
        );
        assert_eq!(
            status("running"),
            Some(Record::PlanRunStarted {
                plan_id,
                at_ms: 1234,
                cause: RunCause::Start
            })
        );
        assert_eq!(
            status("rehydrated"),
            Some(Record::PlanRunStarted {
                plan_id,
                at_ms: 1234,
                cause: RunCause::Resume
            })
        );
        for other in ["interrupted", "aborted", "finished", "Created", ""] {
            assert_eq!(status(other), None, "{other}");
        }
    }

    #[test]
    fn the_submitter_is_a_bounded_string_or_empty() {
        let submitted = |by: &str| match v1(
            "hxo.plan",
            &format!(r#"{{"plan_id":"{PLAN}","status":"submitted"{by}}}"#),
        ) {
            Some(Record::PlanSubmitted { actor, .. }) => actor,
            other => panic!("{other:?}"),
        };
        assert_eq!(submitted(""), "");
        assert_eq!(submitted(r#","submitted_by":null"#), "");
        assert_eq!(submitted(r#","submitted_by":7"#), "");
        assert_eq!(submitted(r#","submitted_by":"«é»""#), "«é»");
        // Over the bound: cut at the last character boundary within it.
        let long = format!("a{}", "é".repeat(200));
        let cut = submitted(&format!(r#","submitted_by":"{long}""#));
        assert_eq!(cut.len(), ACTOR_LEN_MAX as usize - 1);
        assert!(long.starts_with(&cut));
        let record = Record::PlanSubmitted {
            plan_id: plan(),
            at_ms: 0,
            actor: cut,
        };
        assert!(record.payload_len().is_ok());
    }

    #[test]
    fn a_certification_maps_with_its_fields() {
        let root = sha256(b"root");
        let certify = |rest: &str| {
            v1(
                "hxo.aggregate.certify",
                &format!(
                    r#"{{"plan_id":"{PLAN}","root":"{}","tree_size":12{rest}}}"#,
                    to_hex(&root)
                ),
            )
        };
        let record = |certified, proofs_checked| {
            Some(Record::PlanCertified {
                plan_id: plan(),
                at_ms: 1234,
                tree_size: 12,
                root,
                certified,
                proofs_checked,
            })
        };
        assert_eq!(
            certify(r#","truth_certified":true,"proofs_checked":32"#),
            record(true, 32)
        );
        assert_eq!(
            certify(r#","truth_certified":false,"proofs_checked":5"#),
            record(false, 5)
        );
        // Only a JSON `true` certifies; proofs default to 0.
        assert_eq!(certify(""), record(false, 0));
        assert_eq!(certify(r#","truth_certified":"true""#), record(false, 0));
        assert_eq!(certify(r#","truth_certified":1"#), record(false, 0));
        assert_eq!(certify(r#","proofs_checked":"3""#), record(false, 0));
        assert_eq!(certify(r#","proofs_checked":-1"#), record(false, 0));
        assert_eq!(
            certify(r#","proofs_checked":99999999999"#),
            record(false, u32::MAX)
        );
        // Upper-case hex is hex too.
        let upper = format!(
            r#"{{"plan_id":"{PLAN}","root":"{}","tree_size":12}}"#,
            to_hex(&root).to_uppercase()
        );
        assert_eq!(v1("hxo.aggregate.certify", &upper), record(false, 0));
    }

    #[test]
    fn malformed_events_stand_for_nothing() {
        let root = to_hex(&sha256(b"root"));
        let cases = [
            ("hxo.plan", "not json"),
            ("hxo.plan", ""),
            ("hxo.plan", r#"["created"]"#),
            ("hxo.plan", r#""created""#),
            ("hxo.plan", "null"),
            ("hxo.plan", r#"{"status":"created"}"#),
            ("hxo.plan", r#"{"plan_id":null,"status":"created"}"#),
            ("hxo.plan", r#"{"plan_id":42,"status":"created"}"#),
            ("hxo.plan", r#"{"plan_id":"not-a-uuid","status":"created"}"#),
            (
                "hxo.plan",
                r#"{"plan_id":"6f1c2b7e-0d4a-4c55-9e8b-1a2b3c4d5e","status":"created"}"#,
            ),
            ("hxo.plan", &format!(r#"{{"plan_id":"{PLAN}"}}"#)),
            ("hxo.plan", &format!(r#"{{"plan_id":"{PLAN}","status":1}}"#)),
            (
                "hxo.aggregate.certify",
                &format!(r#"{{"plan_id":"{PLAN}","tree_size":1}}"#),
            ),
            (
                "hxo.aggregate.certify",
                &format!(
                    r#"{{"plan_id":"{PLAN}","tree_size":1,"root":"zz{}"}}"#,
                    &root[2..]
                ),
            ),
            (
                "hxo.aggregate.certify",
                &format!(
                    r#"{{"plan_id":"{PLAN}","tree_size":1,"root":"{}"}}"#,
                    &root[2..]
                ),
            ),
            (
                "hxo.aggregate.certify",
                &format!(r#"{{"plan_id":"{PLAN}","tree_size":1,"root":7}}"#),
            ),
            (
                "hxo.aggregate.certify",
                &format!(r#"{{"plan_id":"{PLAN}","root":"{root}"}}"#),
            ),
            (
                "hxo.aggregate.certify",
                &format!(r#"{{"plan_id":"{PLAN}","tree_size":-1,"root":"{root}"}}"#),
            ),
            (
                "hxo.aggregate.certify",
                &format!(r#"{{"tree_size":1,"root":"{root}"}}"#),
            ),
            // Lifecycle payloads under other topics.
            (
                "hxo.audit",
                &format!(r#"{{"plan_id":"{PLAN}","status":"created"}}"#),
            ),
            (
                "hxo.aggregate.ready",
                &format!(r#"{{"plan_id":"{PLAN}","root":"{root}","tree_size":1}}"#),
            ),
        ];
        for (topic, payload) in cases {
            assert_eq!(v1(topic, payload), None, "{topic} {payload}");
        }
    }

    #[test]
    fn only_version_1_events_are_upgraded() {
        let created = event(
            "hxo.plan",
            &format!(r#"{{"plan_id":"{PLAN}","status":"created"}}"#),
        );
        assert!(upgrade(1, &created).is_some());
        assert_eq!(upgrade(2, &created), None);
        // Handed on: the event first, unchanged, then its typed record.
        for (version, want) in [(1, 1), (2, 0)] {
            let mut seen = Vec::new();
            let added = hand_on(version, created.clone(), &mut |r| seen.push(r));
            assert_eq!(added, want);
            let mut expected = vec![created.clone()];
            expected.extend(upgrade(version, &created));
            assert_eq!(seen, expected);
        }
        // Typed records and other records are never upgraded.
        let held = Record::PlanHeld {
            plan_id: plan(),
            at_ms: 1,
        };
        assert_eq!(upgrade(1, &held), None);
        for record in super::super::format::tests::one_of_each_v1() {
            assert_eq!(upgrade(1, &record), None, "{record:?}");
        }
    }
}
