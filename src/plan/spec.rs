//! The plan file's wire types: exactly what a user writes, nothing more.
//!
//! Every struct rejects unknown fields, so a typo (`"dependecies"`) is an
//! error that names its JSON path rather than a silently ignored field.
//! Fields other than `name`, `stages[].id` and `stages[].kind` are optional
//! here; their defaults come from the kind's blueprint during validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub name: String,
    pub stages: Vec<StageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<ConstraintsSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub id: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConstraintsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shards: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timebox_ms: Option<i64>,
}

impl PlanSpec {
    /// Parses plan JSON; an error names the JSON path where parsing failed.
    pub fn from_json(text: &str) -> Result<Self, super::PlanError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let spec: PlanSpec = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            super::PlanError {
                path: if path == "." { "$".into() } else { path },
                message: strip_position(&inner),
            }
        })?;
        deserializer.end().map_err(|e| super::PlanError {
            path: "$".into(),
            message: strip_position(&e),
        })?;
        Ok(spec)
    }
}

/// serde_json's message without its " at line L column C" suffix, which we
/// add back in a friendlier form.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let base = match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    if error.line() > 0 {
        format!("{base} (line {}, column {})", error.line(), error.column())
    } else {
        base
    }
}
