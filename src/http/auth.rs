//! Roles and tokens.
//!
//! A request carries `Authorization: Bearer TOKEN`. The token is compared
//! in constant time (SHA-256 of both sides, then `subtle`) with
//! `HXO_ADMIRAL_TOKEN` and `HXO_CAPTAIN_TOKEN`. The admiral may do
//! everything; the captain may only look, and only while
//! `HXO_ALLOW_CAPTAIN_VIEW` is true. The guide's bare `Authorization:
//! Admiral` names a role but proves nothing, so it is refused (401) like
//! any other missing credential.
//!
//! When neither token is set, the server uses the admiral token in
//! `STATE_DIR/admiral.token` (mode 0600), making one (32 random bytes from
//! `/dev/urandom`, hex) if the file does not exist, and says where it is.

use crate::hash::{sha256, Hash};
use crate::settings::Settings;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admiral,
    Captain,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admiral => "admiral",
            Role::Captain => "captain",
        }
    }
}

/// What a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health check, the dashboard page itself).
    Public,
    /// Looking: the admiral, or the captain when captains may view.
    View,
    /// Changing anything: the admiral only.
    Admiral,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: no credential, or one that matches no token.
    Unauthenticated(&'static str),
    /// 403: a valid credential for a role that may not do this.
    Forbidden(String),
}

/// The configured tokens, kept only as digests.
pub struct Tokens {
    admiral: Option<Hash>,
    captain: Option<Hash>,
    allow_captain_view: bool,
}

impl Tokens {
    pub fn new(admiral: Option<&str>, captain: Option<&str>, allow_captain_view: bool) -> Tokens {
        Tokens {
            admiral: admiral.map(|t| sha256(t.as_bytes())),
            captain: captain.map(|t| sha256(t.as_bytes())),
            allow_captain_view,
        }
    }

    /// The role a presented token proves, if any. Both digests are always
    /// compared, so the time taken says nothing about which one matched.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let digest = sha256(presented.as_bytes());
        let matches = |expected: &Option<Hash>| -> bool {
            match expected {
                Some(expected) => bool::from(digest.ct_eq(expected)),
                None => false,
            }
        };
        let admiral = matches(&self.admiral);
        let captain = matches(&self.captain);
        if admiral {
            Some(Role::Admiral)
        } else if captain {
            Some(Role::Captain)
        } else {
            None
        }
    }

    /// Checks a request: `authorization` is its `Authorization` header and
    /// `query_token` a `token` query parameter (accepted only where the
    /// caller allows it: the event stream, which browsers open without
    /// headers). Returns the role, `None` for public routes.
    pub fn authorize(
        &self,
        access: Access,
        authorization: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Option<Role>, Denied> {
        if access == Access::Public {
            return Ok(None);
        }
        let presented = match (authorization, query_token) {
            (Some(header), _) => bearer(header)?,
            (None, Some(token)) => token,
            (None, None) => {
                return Err(Denied::Unauthenticated(
                    "missing credentials: send Authorization: Bearer TOKEN",
                ))
            }
        };
        let role = self
            .role_of(presented)
            .ok_or(Denied::Unauthenticated("invalid token"))?;
        match (access, role) {
            (_, Role::Admiral) => Ok(Some(role)),
            (Access::View, Role::Captain) if self.allow_captain_view => Ok(Some(role)),
            (Access::View, Role::Captain) => Err(Denied::Forbidden(
                "captains may not view (HXO_ALLOW_CAPTAIN_VIEW is false)".into(),
            )),
            (_, Role::Captain) => Err(Denied::Forbidden(
                "only an admiral may do this; captains may only view".into(),
            )),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(header: &str) -> Result<&str, Denied> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Unauthenticated(
            "expected Authorization: Bearer TOKEN (a role name alone is not a credential)",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Denied::Unauthenticated("empty bearer token"));
    }
    Ok(token)
}

/// Where the generated admiral token lives.
pub fn token_path(settings: &Settings) -> PathBuf {
    settings.state_dir().join("admiral.token")
}

/// The tokens for `settings`; when neither is set, the admiral token of
/// `STATE_DIR/admiral.token`, made if missing. Returns the file's path
/// when it was used.
pub fn load(settings: &Settings) -> std::io::Result<(Tokens, Option<PathBuf>)> {
    if settings.admiral_token.is_some() || settings.captain_token.is_some() {
        let tokens = Tokens::new(
            settings.admiral_token.as_deref(),
            settings.captain_token.as_deref(),
            settings.allow_captain_view,
        );
        return Ok((tokens, None));
    }
    let path = token_path(settings);
    let token = read_or_make_token(&path)?;
    Ok((
        Tokens::new(Some(&token), None, settings.allow_captain_view),
        Some(path),
    ))
}

fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_or_make_token(path: &Path) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if is_token(text) {
            // Keep it private even if someone loosened it.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(text.to_string());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token = crate::hash::to_hex(&bytes);
    // Written to a private temporary file, then renamed: the token is never
    // readable by others, not even for a moment.
    let temporary = path.with_extension(format!("token.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_refusals() {
        let tokens = Tokens::new(Some("a-token"), Some("c-token"), true);
        let ok = |access, header: &str| tokens.authorize(access, Some(header), None);
        assert_eq!(
            ok(Access::Admiral, "Bearer a-token"),
            Ok(Some(Role::Admiral))
        );
        assert_eq!(
            ok(Access::View, "bearer  c-token "),
            Ok(Some(Role::Captain))
        );
        assert!(matches!(
            ok(Access::Admiral, "Bearer c-token"),
            Err(Denied::Forbidden(_))
        ));
        for bad in ["Admiral", "Bearer", "Bearer wrong", "Basic a-token", ""] {
            assert!(
                matches!(ok(Access::View, bad), Err(Denied::Unauthenticated(_))),
                "{bad}"
            );
        }
        assert_eq!(tokens.authorize(Access::Public, None, None), Ok(None));
        assert!(matches!(
            tokens.authorize(Access::View, None, None),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(
            tokens.authorize(Access::View, None, Some("c-token")),
            Ok(Some(Role::Captain))
        );
        let no_view = Tokens::new(Some("a"), Some("c"), false);
        assert!(matches!(
            no_view.authorize(Access::View, Some("Bearer c"), None),
            Err(Denied::Forbidden(_))
        ));
    }

    #[test]
    fn made_token_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/admiral.token");
        let first = read_or_make_token(&path).unwrap();
        assert!(is_token(&first));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_or_make_token(&path).unwrap(), first);
    }
}
