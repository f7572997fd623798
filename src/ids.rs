//! Plan ids: the 16 bytes of a UUID (v4), and their text form.
//!
//! The log stores the bytes; people and URLs see the hyphenated lowercase
//! text. A plan may also be named by a unique prefix of at least
//! [`PLAN_ID_PREFIX_LEN_MIN`] characters of that text (resolved by the
//! store, which knows every plan).

/// A plan's id: the bytes of its UUID.
pub type PlanId = [u8; 16];

/// Shortest prefix of a plan id's text that names the plan.
pub const PLAN_ID_PREFIX_LEN_MIN: usize = 4;

/// A fresh, random plan id.
pub fn new_plan_id() -> PlanId {
    *uuid::Uuid::new_v4().as_bytes()
}

/// The text form: `8-4-4-4-12` lowercase hex digits.
pub fn plan_id_text(plan_id: &PlanId) -> String {
    uuid::Uuid::from_bytes(*plan_id).to_string()
}

/// A full plan id from its text form (any case, with or without hyphens).
pub fn parse_plan_id(text: &str) -> Option<PlanId> {
    uuid::Uuid::parse_str(text).ok().map(|u| *u.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let id = new_plan_id();
        let text = plan_id_text(&id);
        assert_eq!(text.len(), 36);
        assert_eq!(parse_plan_id(&text), Some(id));
        assert_eq!(parse_plan_id(&text.to_uppercase()), Some(id));
        assert_eq!(parse_plan_id("not-a-uuid"), None);
    }
}
