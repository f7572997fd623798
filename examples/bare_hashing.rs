//! The baseline for `scripts/bench.sh`: a bare rayon loop doing only the
//! hashing a no-op HXO run must do per shard (its cas_id, its output
//! digest, its leaf hash) and the RFC 6962 tree over the leaves. No plan,
//! no scheduler, no log. `hxo run` of the same number of no-op shards is
//! measured against this.
//!
//! Usage: `bare_hashing [SHARDS]` (default 1,000,000); prints the wall time
//! and the root.

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::time::Instant;

// The allocator `hxo` runs with, so that it is no advantage of hxo's.
#[global_allocator]
static ALLOCATOR: hxo::alloc::HugePageHintAlloc = hxo::alloc::HugePageHintAlloc;

fn main() {
    let shards: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let started = Instant::now();
    let mut prefix = Sha256::new();
    prefix.update(b"hxo.cas.v1\0stage\0synthetic\0synthetic\0{\"shards\":1000000}");
    let leaves: Vec<[u8; 32]> = (0..shards)
        .into_par_iter()
        .map(|i| {
            let mut hasher = prefix.clone();
            hasher.update(i.to_le_bytes());
            hasher.update((i + 1).to_le_bytes());
            let cas_id: [u8; 32] = hasher.finalize().into();
            let mut unit = [0u8; 32];
            unit[16..24].copy_from_slice(&i.to_le_bytes());
            let output = hxo::merkle::leaf_hash(&unit);
            hxo::merkle::shard_leaf_hash(&cas_id, &output)
        })
        .collect();
    let root = hxo::merkle::root_of_leaf_hashes(leaves);
    let elapsed = started.elapsed();
    println!(
        "bare_hashing shards={shards} wall_ms={:.1} shards_per_s={:.0} root={}",
        elapsed.as_secs_f64() * 1e3,
        shards as f64 / elapsed.as_secs_f64(),
        hxo::hash::to_hex(&root)
    );
}
