//! SHA-256 digests and their hex form: the one hash type every layer shares.
//!
//! A [`Hash`](type@Hash) is a plain 32-byte array so that arrays of them are contiguous
//! (the Merkle code hashes levels of `Vec<Hash>` in place) and so that they
//! cost nothing to copy into log records.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: cas_ids, output digests and tree hashes.
pub type Hash = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// 64 lowercase hex characters.
pub fn to_hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

/// Parses 64 hex characters (either case); `None` for anything else.
pub fn from_hex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        out[index] = (high * 16 + low) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let digest = sha256(b"abc");
        let text = to_hex(&digest);
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&text), Some(digest));
        assert_eq!(from_hex(&text.to_uppercase()), Some(digest));
        assert_eq!(from_hex(&text[1..]), None);
        assert_eq!(from_hex(&format!("{}g", &text[1..])), None);
    }
}
