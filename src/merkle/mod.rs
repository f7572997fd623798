//! RFC 6962 / RFC 9162 §2.1 Merkle tree hashing, inclusion proofs and the
//! range arithmetic behind hot-shard splitting. Pure: no I/O, no serde.
//!
//! # What this module owns
//!
//! - The tree hash that certifies a run: the empty tree hashes to
//!   [`EMPTY_ROOT`] (SHA-256 of nothing), a leaf to SHA-256(0x00 || data)
//!   ([`leaf_hash`], [`shard_leaf_hash`]), an interior node to
//!   SHA-256(0x01 || left || right) ([`node_hash`]). A run's leaf data is
//!   `cas_id || output_digest`; a unit-made shard's leaf data is one 32-byte
//!   unit digest ([`root_of_leaf_data`]).
//! - Audit paths ([`MerkleTree::inclusion_proof`]) and their verification
//!   ([`verify_inclusion`]), which follows the RFC 9162 §2.1.3.2 algorithm
//!   step by step and shares no code with tree construction except the two
//!   domain-separated hash functions, so a bug in one cannot hide a bug in
//!   the other.
//! - [`BlockTree`] (`blocks.rs`): the same tree hashed one aligned block of
//!   leaves at a time, in any order, for certification while the log is
//!   still being read; [`LatestLeaves`] feeds it leaf outcomes in log order
//!   (the latest wins), holding only the leaves of blocks not yet complete
//!   and handing out complete ones to be hashed on any thread.
//! - [`split_ranges`] and [`combine_ranges`]: cutting a shard's units into
//!   pieces that are whole subtrees, and recombining their subtree roots into
//!   exactly the digest the unsplit shard would have produced.
//!
//! # Bottom-up pairing is the RFC's tree
//!
//! RFC 6962 defines the tree top-down: MTH(D\[0:n\]) splits at k, the largest
//! power of two smaller than n, and hashes MTH(D\[0:k\]) with MTH(D\[k:n\]).
//! This module builds it bottom-up instead: each level pairs nodes 2i and
//! 2i+1 into node i of the next level, and a lone last node is promoted to
//! the next level unchanged (never duplicated, never hashed with itself).
//! The two agree, node for node:
//!
//! *Claim.* Node i of level j covers leaves
//! `[i * 2^j, min((i + 1) * 2^j, n))` and its hash is MTH of those leaves.
//!
//! *Proof, by induction on j.* Level 0 is the leaf hashes. For node i of level
//! j+1: if child 2i+1 exists, then child 2i is a full block of 2^j leaves and
//! child 2i+1 holds the remaining m - 2^j leaves of the node's m, where
//! 2^j < m <= 2^(j+1); the largest power of two smaller than m is 2^j, so
//! the RFC splits this range exactly between the two children, and the node
//! is node_hash(MTH(left), MTH(right)) as the RFC says. If child 2i+1 does not
//! exist, the node covers the same leaves as child 2i, so promoting the hash
//! unchanged is correct. The top level is one node covering `[0, n)`.
//!
//! So every range the RFC recursion visits is a node of the bottom-up tree,
//! and each RFC split is a node with two children. PATH(m, D\[n\]) lists,
//! leaf upward, the sibling at each split on the way to leaf m; promotions
//! are not splits and add nothing. That is exactly the audit path read off
//! the stored levels. The unit tests check both claims against a literal
//! recursive transcription of RFC 6962 §2.1 for every size up to 300 and a
//! few large ones, and `tests/it/merkle.rs` checks them byte for byte
//! against the `ct-merkle` crate.
//!
//! # Why level-parallel
//!
//! A run certifies up to millions of leaves. Every node of one level depends
//! only on the level below, so a level is an embarrassingly parallel map,
//! while a top-down recursion would give rayon unbalanced, deep splits.
//! Levels with at least [`PARALLEL_LEVEL_MIN_NODES`] nodes are hashed in
//! chunks on rayon's pool; smaller levels (and so every level of a small
//! tree, and the top ~12 levels of any tree) run sequentially, where task
//! overhead would outweigh one SHA-256 of 65 bytes per node.
//! [`root_of_leaf_hashes`] reuses its input buffer for every level, so
//! computing a root allocates nothing beyond the caller's leaf vector.
//!
//! # Invariants
//!
//! - Pure functions of their inputs: the same leaves in the same order give
//!   the same root regardless of thread count or scheduling.
//! - Leaf indices and tree sizes are `u64` at the API (they are persisted and
//!   sent over the wire); `usize` exists only for indexing memory.
//! - A [`MerkleTree`] is immutable once built; its levels always satisfy the
//!   pairing rule above (see the `INVARIANT` on its field).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::hash::Hash;

mod blocks;
pub use blocks::{hash_block_leaves, BlockHash, BlockTree, FullBlock, HashedBlock, LatestLeaves};

/// Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Domain separator of leaf hashes; keeps a leaf from posing as a node.
const LEAF_PREFIX: [u8; 1] = [0x00];
/// Domain separator of interior node hashes.
const NODE_PREFIX: [u8; 1] = [0x01];

/// Levels with fewer nodes than this are hashed on the calling thread. At
/// roughly 0.3 µs per node hash, 4096 nodes is about a millisecond of work,
/// comfortably above rayon's per-task overhead.
pub const PARALLEL_LEVEL_MIN_NODES: usize = 4096;

/// Nodes of a level handed to one rayon task. Must be even so that no pair
/// straddles two chunks.
const PARALLEL_CHUNK_NODES: usize = 2048;
const _: () = assert!(PARALLEL_CHUNK_NODES % 2 == 0 && PARALLEL_CHUNK_NODES >= 2);

/// SHA-256(0x00 || data): the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new_with_prefix(LEAF_PREFIX)
        .chain_update(data)
        .finalize()
        .into()
}

/// The leaf hash of one shard: leaf data is the 64 bytes
/// `cas_id || output_digest`, fed to the hasher in two pieces so no buffer
/// is built.
pub fn shard_leaf_hash(cas_id: &Hash, output_digest: &Hash) -> Hash {
    Sha256::new_with_prefix(LEAF_PREFIX)
        .chain_update(cas_id)
        .chain_update(output_digest)
        .finalize()
        .into()
}

/// SHA-256(0x01 || left || right): the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new_with_prefix(NODE_PREFIX)
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The tree hash of `items.len()` leaves where item i is leaf i's data (32
/// bytes each, e.g. unit digests). Empty input gives [`EMPTY_ROOT`].
pub fn root_of_leaf_data(items: &[Hash]) -> Hash {
    let mut leaf_hashes = Vec::with_capacity(items.len());
    if items.len() < PARALLEL_LEVEL_MIN_NODES {
        leaf_hashes.extend(items.iter().map(|item| leaf_hash(item)));
    } else {
        items
            .par_iter()
            .with_min_len(PARALLEL_CHUNK_NODES)
            .map(|item| leaf_hash(item))
            .collect_into_vec(&mut leaf_hashes);
    }
    root_of_leaf_hashes(leaf_hashes)
}

/// The tree hash over already-hashed leaves. Consumes the buffer and hashes
/// level by level in place, so the only allocation is the caller's.
pub fn root_of_leaf_hashes(mut leaf_hashes: Vec<Hash>) -> Hash {
    if leaf_hashes.is_empty() {
        return EMPTY_ROOT;
    }
    // Each pass replaces the level with its parents, in the same buffer.
    while leaf_hashes.len() > 1 {
        hash_level_in_place(&mut leaf_hashes);
    }
    leaf_hashes[0]
}

/// The root over `leaf_hashes` and the inclusion proofs of `leaf_indices`,
/// computed in one pass over a single buffer: each level's siblings of the
/// tracked paths are copied out before the level is hashed in place. Same
/// hashing as [`root_of_leaf_hashes`], no stored levels, so certifying a
/// million-leaf tree costs no more memory than its leaves.
///
/// Panics if an index is not below the leaf count (a caller bug).
pub fn root_with_proofs(mut level: Vec<Hash>, leaf_indices: &[u64]) -> (Hash, Vec<InclusionProof>) {
    let tree_size = level.len() as u64;
    let mut proofs: Vec<InclusionProof> = leaf_indices
        .iter()
        .map(|&leaf_index| {
            assert!(
                leaf_index < tree_size,
                "leaf {leaf_index} of a tree of {tree_size}"
            );
            InclusionProof {
                leaf_index,
                tree_size,
                audit_path: Vec::new(),
            }
        })
        .collect();
    if level.is_empty() {
        return (EMPTY_ROOT, proofs);
    }
    let mut positions: Vec<usize> = leaf_indices.iter().map(|&i| i as usize).collect();
    while level.len() > 1 {
        for (proof, position) in proofs.iter_mut().zip(positions.iter_mut()) {
            // A lone last node has no sibling: it is promoted unchanged and
            // contributes nothing to the path (see the module docs).
            let sibling = *position ^ 1;
            if sibling < level.len() {
                proof.audit_path.push(level[sibling]);
            }
            *position /= 2;
        }
        hash_level_in_place(&mut level);
    }
    (level[0], proofs)
}

/// Replaces `level` (at least 2 nodes) by its parent level.
fn hash_level_in_place(level: &mut Vec<Hash>) {
    let node_count = level.len();
    let parent_count = node_count.div_ceil(2);
    if node_count < PARALLEL_LEVEL_MIN_NODES {
        pair_up_in_place(level);
    } else {
        // Each chunk writes its parents over its own front half; chunks are
        // disjoint, so they can run in parallel without aliasing. Then the
        // per-chunk results are slid down next to each other.
        level
            .par_chunks_mut(PARALLEL_CHUNK_NODES)
            .for_each(pair_up_in_place);
        let parents_per_chunk = PARALLEL_CHUNK_NODES / 2;
        let chunk_count = node_count.div_ceil(PARALLEL_CHUNK_NODES);
        // Moving chunks in increasing order is safe: chunk c's destination
        // [c*P, (c+1)*P) ends at or before its source start 2*c*P (c >= 1),
        // and only already-moved chunks lie below it. Cost: 32 bytes copied
        // per parent, negligible next to a SHA-256 per parent.
        for chunk_index in 1..chunk_count {
            let source_start = chunk_index * PARALLEL_CHUNK_NODES;
            let dest_start = chunk_index * parents_per_chunk;
            let moved = parents_per_chunk.min(parent_count - dest_start);
            level.copy_within(source_start..source_start + moved, dest_start);
        }
    }
    level.truncate(parent_count);
}

/// Writes the parents of `nodes` over its first `nodes.len().div_ceil(2)`
/// slots. Parent i only reads slots 2i and 2i+1, which are >= i, so writing
/// in increasing order never overwrites an unread child.
fn pair_up_in_place(nodes: &mut [Hash]) {
    let pair_count = nodes.len() / 2;
    for i in 0..pair_count {
        nodes[i] = node_hash(&nodes[2 * i], &nodes[2 * i + 1]);
    }
    if nodes.len() % 2 == 1 {
        // The lone last node is promoted unchanged (see module docs).
        nodes[pair_count] = nodes[nodes.len() - 1];
    }
}

/// The parent level of `children` (at least 2 nodes), in a new vector.
fn parent_level(children: &[Hash]) -> Vec<Hash> {
    fn parent(pair: &[Hash]) -> Hash {
        match pair {
            [left, right] => node_hash(left, right),
            // `chunks(2)` never yields an empty slice; a single node is the
            // lone last one, promoted.
            _ => pair[0],
        }
    }
    if children.len() < PARALLEL_LEVEL_MIN_NODES {
        children.chunks(2).map(parent).collect()
    } else {
        let mut parents = Vec::with_capacity(children.len().div_ceil(2));
        children
            .par_chunks(2)
            .with_min_len(PARALLEL_CHUNK_NODES / 2)
            .map(parent)
            .collect_into_vec(&mut parents);
        parents
    }
}

/// A whole tree kept in memory, for serving inclusion proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    // INVARIANT: `levels[0]` holds the leaf hashes and is never absent; each
    // `levels[j + 1]` is `parent_level(&levels[j])` (pairs hashed, a lone last
    // node promoted); the last level has exactly one node unless the tree is
    // empty, in which case `levels == [[]]`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds every level above the given leaf hashes; big levels are hashed
    /// in parallel. Memory: about twice the leaf vector.
    pub fn from_leaf_hashes(leaf_hashes: Vec<Hash>) -> Self {
        let mut levels = vec![leaf_hashes];
        loop {
            let top = &levels[levels.len() - 1];
            if top.len() <= 1 {
                break;
            }
            let parents = parent_level(top);
            levels.push(parents);
        }
        MerkleTree { levels }
    }

    /// The tree hash; [`EMPTY_ROOT`] for an empty tree.
    pub fn root(&self) -> Hash {
        match self.levels[self.levels.len() - 1].as_slice() {
            [root] => *root,
            _ => EMPTY_ROOT,
        }
    }

    /// Number of leaves.
    pub fn tree_size(&self) -> u64 {
        // A Vec never holds more than isize::MAX elements, so this is lossless.
        self.levels[0].len() as u64
    }

    /// The hash of leaf `leaf_index`, or `None` past the end.
    pub fn leaf_hash(&self, leaf_index: u64) -> Option<&Hash> {
        self.levels[0].get(usize::try_from(leaf_index).ok()?)
    }

    /// The audit path of leaf `leaf_index` (RFC 6962 §2.1.1 PATH), leaf
    /// upward; `None` past the end. O(log n): one lookup per level.
    pub fn inclusion_proof(&self, leaf_index: u64) -> Option<InclusionProof> {
        let mut index = usize::try_from(leaf_index).ok()?;
        if index >= self.levels[0].len() {
            return None;
        }
        let below_root = &self.levels[..self.levels.len() - 1];
        let mut audit_path = Vec::with_capacity(below_root.len());
        for level in below_root {
            // The sibling of an odd node is its left neighbour, which always
            // exists; an even node with no right neighbour is promoted and
            // contributes nothing to the path.
            if let Some(sibling) = level.get(index ^ 1) {
                audit_path.push(*sibling);
            }
            index /= 2;
        }
        Some(InclusionProof {
            leaf_index,
            tree_size: self.tree_size(),
            audit_path,
        })
    }
}

/// An RFC 6962 audit path for one leaf of a tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf's level upward, as in RFC 6962 PATH.
    pub audit_path: Vec<Hash>,
}

/// Checks that `leaf_hash` sits at `proof.leaf_index` of a tree of
/// `proof.tree_size` leaves whose root is `root`, by the RFC 9162 §2.1.3.2
/// algorithm.
///
/// Note what this does and does not bind: a wrong index, a wrong leaf, a
/// tampered, truncated or padded path are all rejected, but a wrong
/// `tree_size` is only rejected when it changes the path's shape (its length
/// or left/right pattern). That is inherent to RFC 6962; the tree size is
/// bound by the certificate that carries the root.
pub fn verify_inclusion(leaf_hash: &Hash, proof: &InclusionProof, root: &Hash) -> bool {
    // Step 1.
    if proof.leaf_index >= proof.tree_size {
        return false;
    }
    // Steps 2 and 3: fnode walks the leaf's position up, snode the position
    // of the tree's last node at the same level.
    let mut fnode = proof.leaf_index;
    let mut snode = proof.tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in &proof.audit_path {
        // 4a: a path longer than the tree is tall.
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            // 4b: p is a left sibling.
            r = node_hash(p, &r);
            // A last node that is a left child was promoted: climb until it
            // becomes a right child (or reaches the left edge).
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        // 4c.
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5: the path must have reached the root level exactly.
    snode == 0 && r == *root
}

/// The largest power of two strictly smaller than `len` (`len >= 2`): where
/// RFC 6962 splits a range of `len` leaves.
fn split_point(len: u64) -> u64 {
    assert!(len >= 2, "a range of {len} leaves has no split");
    1 << (63 - (len - 1).leading_zeros())
}

/// Hot-shard splitting support: splits `unit_count` units into at most
/// `pieces` contiguous ranges, each exactly one node (subtree) of the RFC 6962
/// tree over `unit_count` leaves, by repeatedly splitting the largest node
/// (the leftmost among equals) at its own largest-power-of-two boundary.
///
/// Returns ranges sorted by start, covering `0..unit_count` exactly. Never
/// returns an empty range, except the single `0..0` for `unit_count == 0`
/// (one empty shard is still one piece of work). `unit_count` 1 gives one
/// range; there are fewer than `pieces` ranges only when `pieces >
/// unit_count`. `pieces == 0` is treated as 1. Allocates
/// O(min(pieces, unit_count)); callers bound `pieces`.
pub fn split_ranges(unit_count: u64, pieces: u64) -> Vec<Range<u64>> {
    let piece_count = pieces.clamp(1, unit_count.max(1));
    // Max-heap on (length, leftmost start first) so the choice of node to
    // split, and so the result, is deterministic.
    let mut heap: BinaryHeap<(u64, Reverse<u64>)> = BinaryHeap::new();
    heap.push((unit_count, Reverse(0)));
    while (heap.len() as u64) < piece_count {
        // piece_count <= unit_count guarantees a node of length >= 2 remains
        // while fewer than unit_count pieces exist.
        let Some((len, Reverse(start))) = heap.pop() else {
            break;
        };
        assert!(len >= 2, "split_ranges ran out of splittable nodes");
        let left_len = split_point(len);
        heap.push((left_len, Reverse(start)));
        heap.push((len - left_len, Reverse(start + left_len)));
    }
    let mut ranges: Vec<Range<u64>> = heap
        .into_iter()
        .map(|(len, Reverse(start))| start..start + len)
        .collect();
    ranges.sort_unstable_by_key(|range| range.start);
    ranges
}

/// Recombines the subtree roots of ranges produced by [`split_ranges`] (in
/// any order) into the root of the whole: equal to [`root_of_leaf_data`] over
/// all units when each part's hash is `root_of_leaf_data` over its units.
///
/// `None` if the ranges are not an exact cover of `0..unit_count` made of
/// tree nodes (gaps, overlaps, duplicates, empty or reversed ranges, ranges
/// past the end, ranges that straddle a split point). For `unit_count == 0`
/// the only covers are no parts (giving [`EMPTY_ROOT`]) and the single part
/// `0..0` (giving its hash).
pub fn combine_ranges(unit_count: u64, parts: &[(Range<u64>, Hash)]) -> Option<Hash> {
    if unit_count == 0 {
        return match parts {
            [] => Some(EMPTY_ROOT),
            [(range, hash)] if *range == (0..0) => Some(*hash),
            _ => None,
        };
    }
    let mut sorted: Vec<&(Range<u64>, Hash)> = parts.iter().collect();
    sorted.sort_unstable_by_key(|(range, _)| (range.start, range.end));
    let mut cursor = 0;
    let root = combine_node(0..unit_count, &sorted, &mut cursor)?;
    // Every part must have been used: leftovers lie past the end or overlap.
    (cursor == sorted.len()).then_some(root)
}

/// The hash of tree node `node`, assembled from `parts[*cursor..]`, which
/// must start exactly at `node.start`. Visits nodes left to right, so parts
/// are consumed in order. Recursion depth is at most 64.
fn combine_node(
    node: Range<u64>,
    parts: &[&(Range<u64>, Hash)],
    cursor: &mut usize,
) -> Option<Hash> {
    let (range, hash) = parts.get(*cursor)?;
    if range.start != node.start {
        // A gap before this node, or an overlap with the previous part.
        return None;
    }
    if range.end == node.end {
        *cursor += 1;
        return Some(*hash);
    }
    let len = node.end - node.start;
    if range.end > node.end || len == 1 {
        // The part starts here but is neither this node nor inside it: it
        // straddles a split point (or is empty or reversed). The first test
        // is only an early exit; descending would fail at the leaf anyway.
        return None;
    }
    let split = node.start + split_point(len);
    let left = combine_node(node.start..split, parts, cursor)?;
    let right = combine_node(split..node.end, parts, cursor)?;
    Some(node_hash(&left, &right))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{from_hex, sha256, to_hex};

    // ---- test-only reference: a literal transcription of RFC 6962 §2.1 ----

    /// k: the largest power of two smaller than n, found by counting up
    /// (independent of `split_point`).
    fn reference_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// MTH over leaf hashes.
    fn reference_mth(leaf_hashes: &[Hash]) -> Hash {
        match leaf_hashes.len() {
            0 => sha256(b""),
            1 => leaf_hashes[0],
            n => {
                let k = reference_k(n);
                node_hash(
                    &reference_mth(&leaf_hashes[..k]),
                    &reference_mth(&leaf_hashes[k..]),
                )
            }
        }
    }

    /// PATH(m, D[n]) over leaf hashes.
    fn reference_path(m: usize, leaf_hashes: &[Hash]) -> Vec<Hash> {
        let n = leaf_hashes.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = reference_k(n);
        if m < k {
            let mut path = reference_path(m, &leaf_hashes[..k]);
            path.push(reference_mth(&leaf_hashes[k..]));
            path
        } else {
            let mut path = reference_path(m - k, &leaf_hashes[k..]);
            path.push(reference_mth(&leaf_hashes[..k]));
            path
        }
    }

    /// MTH and PATH(m, D[n]) for every m at once, by the same recursion as
    /// `reference_mth` and `reference_path` (PATH(m, D[n]) is PATH(m, D[0:k])
    /// then MTH(D[k:n]) for m < k, else PATH(m - k, D[k:n]) then
    /// MTH(D[0:k])), but hashing each subtree once: O(n) hashes instead of
    /// O(n) per path, which keeps the exhaustive comparisons fast in debug.
    fn reference_all_paths(leaf_hashes: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
        match leaf_hashes.len() {
            0 => (sha256(b""), Vec::new()),
            1 => (leaf_hashes[0], vec![Vec::new()]),
            n => {
                let k = reference_k(n);
                let (left_root, mut left_paths) = reference_all_paths(&leaf_hashes[..k]);
                let (right_root, mut right_paths) = reference_all_paths(&leaf_hashes[k..]);
                left_paths.iter_mut().for_each(|p| p.push(right_root));
                right_paths.iter_mut().for_each(|p| p.push(left_root));
                left_paths.append(&mut right_paths);
                (node_hash(&left_root, &right_root), left_paths)
            }
        }
    }

    /// The left/right pattern of PATH(m, D[n]), leaf upward: true where the
    /// sibling is on the left.
    fn reference_path_shape(m: usize, n: usize) -> Vec<bool> {
        if n <= 1 {
            return Vec::new();
        }
        let k = reference_k(n);
        let (mut shape, sibling_is_left) = if m < k {
            (reference_path_shape(m, k), false)
        } else {
            (reference_path_shape(m - k, n - k), true)
        };
        shape.push(sibling_is_left);
        shape
    }

    /// Whether `range` is a node of the RFC 6962 tree over `0..n`.
    fn reference_is_node(range: &Range<u64>, node: Range<u64>) -> bool {
        if *range == node {
            return true;
        }
        let len = (node.end - node.start) as usize;
        if len <= 1 {
            return false;
        }
        let split = node.start + reference_k(len) as u64;
        reference_is_node(range, node.start..split) || reference_is_node(range, split..node.end)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Seeded unit digests: item i is SHA-256 of i as 8 LE bytes.
    fn items(n: usize) -> Vec<Hash> {
        (0..n as u64).map(|i| sha256(&i.to_le_bytes())).collect()
    }

    fn leaf_hashes_of(items: &[Hash]) -> Vec<Hash> {
        items.iter().map(|item| leaf_hash(item)).collect()
    }

    // ---- known answers ----

    /// Leaves of the certificate-transparency reference vectors
    /// (transparency-dev/merkle testonly, also ct-merkle tests/known_answer.rs).
    const KAT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// Roots of the first 1..=8 KAT leaves.
    const KAT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (tree_size, leaf_index, audit path) from the same reference.
    const KAT_PROOFS: [(u64, u64, &[&str]); 7] = [
        (1, 0, &[]),
        (
            2,
            0,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            2,
            1,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            3,
            2,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            5,
            1,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            8,
            0,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            8,
            5,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn kat_leaf_hashes() -> Vec<Hash> {
        KAT_LEAVES.iter().map(|l| leaf_hash(&hex(l))).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            to_hex(&EMPTY_ROOT),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(EMPTY_ROOT, sha256(b""));
        assert_eq!(root_of_leaf_hashes(Vec::new()), EMPTY_ROOT);
        assert_eq!(root_of_leaf_data(&[]), EMPTY_ROOT);
        let tree = MerkleTree::from_leaf_hashes(Vec::new());
        assert_eq!(tree.root(), EMPTY_ROOT);
        assert_eq!(tree.tree_size(), 0);
        assert_eq!(tree.leaf_hash(0), None);
        assert_eq!(tree.inclusion_proof(0), None);
    }

    #[test]
    fn roots_match_rfc6962_known_answers_for_sizes_1_to_8() {
        let leaves = kat_leaf_hashes();
        for (size, expected) in (1..=8).zip(KAT_ROOTS) {
            let expected = from_hex(expected).unwrap();
            let prefix = leaves[..size].to_vec();
            assert_eq!(root_of_leaf_hashes(prefix.clone()), expected, "size {size}");
            assert_eq!(
                MerkleTree::from_leaf_hashes(prefix).root(),
                expected,
                "size {size}"
            );
        }
    }

    #[test]
    fn hash_functions_are_domain_separated_as_in_rfc6962() {
        // leaf("") is the size-1 root, and node(leaf(""), leaf(00)) the size-2 root.
        let l0 = leaf_hash(b"");
        let l1 = leaf_hash(&[0x00]);
        assert_eq!(to_hex(&l0), KAT_ROOTS[0]);
        assert_eq!(to_hex(&node_hash(&l0, &l1)), KAT_ROOTS[1]);
        assert_eq!(l0, sha256(&[0x00]));
        let mut node_input = vec![0x01];
        node_input.extend_from_slice(&l0);
        node_input.extend_from_slice(&l1);
        assert_eq!(node_hash(&l0, &l1), sha256(&node_input));
        assert_ne!(node_hash(&l0, &l1), node_hash(&l1, &l0));
    }

    #[test]
    fn shard_leaf_hash_is_leaf_hash_of_cas_id_then_output_digest() {
        let cas_id = sha256(b"cas");
        let output = sha256(b"output");
        let mut data = cas_id.to_vec();
        data.extend_from_slice(&output);
        assert_eq!(shard_leaf_hash(&cas_id, &output), leaf_hash(&data));
        assert_ne!(
            shard_leaf_hash(&cas_id, &output),
            shard_leaf_hash(&output, &cas_id)
        );
    }

    #[test]
    fn inclusion_proofs_match_rfc6962_known_answers() {
        let leaves = kat_leaf_hashes();
        for (size, index, path) in KAT_PROOFS {
            let tree = MerkleTree::from_leaf_hashes(leaves[..size as usize].to_vec());
            let proof = tree.inclusion_proof(index).unwrap();
            let expected: Vec<Hash> = path.iter().map(|h| from_hex(h).unwrap()).collect();
            assert_eq!(proof.audit_path, expected, "size {size} index {index}");
            assert_eq!((proof.leaf_index, proof.tree_size), (index, size));
            let root = from_hex(KAT_ROOTS[size as usize - 1]).unwrap();
            assert!(verify_inclusion(&leaves[index as usize], &proof, &root));
        }
    }

    // ---- level implementation versus the recursive reference ----

    /// Compares roots and every audit path of a tree of `n` seeded leaves
    /// with the reference.
    fn check_against_reference(n: usize) {
        let items = items(n);
        let leaves = leaf_hashes_of(&items);
        let (expected_root, expected_paths) = reference_all_paths(&leaves);
        assert_eq!(reference_mth(&leaves), expected_root, "size {n}");
        assert_eq!(
            root_of_leaf_hashes(leaves.clone()),
            expected_root,
            "size {n}"
        );
        assert_eq!(root_of_leaf_data(&items), expected_root, "size {n}");
        let tree = MerkleTree::from_leaf_hashes(leaves.clone());
        assert_eq!(tree.root(), expected_root, "size {n}");
        assert_eq!(tree.tree_size(), n as u64);
        for (m, expected_path) in expected_paths.iter().enumerate() {
            let proof = tree.inclusion_proof(m as u64).unwrap();
            assert_eq!(&proof.audit_path, expected_path, "size {n} index {m}");
            assert_eq!((proof.leaf_index, proof.tree_size), (m as u64, n as u64));
            assert_eq!(tree.leaf_hash(m as u64), Some(&leaves[m]));
        }
        assert_eq!(tree.inclusion_proof(n as u64), None);
        assert_eq!(tree.leaf_hash(n as u64), None);
    }

    #[test]
    fn reference_all_paths_agrees_with_reference_path() {
        // The batched reference is itself checked against the literal one.
        for n in 0..=40 {
            let leaves = leaf_hashes_of(&items(n));
            let (_, paths) = reference_all_paths(&leaves);
            assert_eq!(paths.len(), n);
            for (m, path) in paths.iter().enumerate() {
                assert_eq!(path, &reference_path(m, &leaves), "size {n} index {m}");
                assert_eq!(path.len(), reference_path_shape(m, n).len());
            }
        }
    }

    #[test]
    fn level_implementation_matches_recursive_reference_for_sizes_0_to_300() {
        for n in 0..=300 {
            check_against_reference(n);
        }
    }

    #[test]
    fn level_implementation_matches_recursive_reference_for_parallel_sizes() {
        // Sizes at and around the parallel threshold and chunk boundaries,
        // with odd levels that make the last chunk odd; 16385 has three
        // parallel levels (16385, 8193, 4097).
        for n in [
            PARALLEL_LEVEL_MIN_NODES - 1,
            PARALLEL_LEVEL_MIN_NODES,
            PARALLEL_LEVEL_MIN_NODES + 1,
            3 * PARALLEL_CHUNK_NODES - 1,
            8193,
            16_385,
        ] {
            check_against_reference(n);
        }
    }

    #[test]
    fn in_place_level_hashing_equals_fresh_level_hashing_above_threshold() {
        // Directly compare one parallel in-place pass with the allocating one.
        for n in [4096, 4097, 6143, 6145, 2 * PARALLEL_CHUNK_NODES * 3 + 7] {
            let level = leaf_hashes_of(&items(n));
            let mut in_place = level.clone();
            hash_level_in_place(&mut in_place);
            let fresh: Vec<Hash> = level
                .chunks(2)
                .map(|p| {
                    if p.len() == 2 {
                        node_hash(&p[0], &p[1])
                    } else {
                        p[0]
                    }
                })
                .collect();
            assert_eq!(in_place, fresh, "size {n}");
            assert_eq!(parent_level(&level), fresh, "size {n}");
        }
    }

    // ---- verification ----

    #[test]
    fn every_proof_verifies_and_tampering_is_rejected_for_sizes_1_to_130() {
        for n in 1..=130usize {
            let leaves = leaf_hashes_of(&items(n));
            let tree = MerkleTree::from_leaf_hashes(leaves.clone());
            let root = tree.root();
            for (m, leaf) in leaves.iter().enumerate() {
                let proof = tree.inclusion_proof(m as u64).unwrap();
                assert!(verify_inclusion(leaf, &proof, &root), "size {n} index {m}");

                // Wrong leaf, wrong root.
                let mut bad_leaf = *leaf;
                bad_leaf[31] ^= 1;
                assert!(!verify_inclusion(&bad_leaf, &proof, &root));
                let mut bad_root = root;
                bad_root[0] ^= 0x80;
                assert!(!verify_inclusion(leaf, &proof, &bad_root));

                // A flipped bit in one path element, a different one (and a
                // different bit) for each index, so every position is hit.
                if !proof.audit_path.is_empty() {
                    let at = m % proof.audit_path.len();
                    let mut bad = proof.clone();
                    bad.audit_path[at][m % 32] ^= 1 << (m % 8);
                    assert!(!verify_inclusion(leaf, &bad, &root), "size {n} index {m}");
                }

                // Wrong indices: the sibling, neighbours, a far one, and
                // out-of-range ones.
                let wrong_indices = [m ^ 1, m + 1, m.wrapping_sub(1), (m + n / 2) % n, n, n + 1];
                for other in wrong_indices.into_iter().filter(|&o| o != m) {
                    let bad = InclusionProof {
                        leaf_index: other as u64,
                        ..proof.clone()
                    };
                    assert!(
                        !verify_inclusion(leaf, &bad, &root),
                        "size {n} index {m}->{other}"
                    );
                }

                // Wrong sizes are rejected exactly when they change the path
                // shape (see `verify_inclusion` docs); the shape comes from
                // the reference recursion, not from the code under test.
                let shape = reference_path_shape(m, n);
                let wrong_sizes = [0, m, m + 1, n - 1, n + 1, n + 2, 2 * n, 2 * reference_k(n)];
                for other in wrong_sizes.into_iter().filter(|&o| o != n) {
                    let bad = InclusionProof {
                        tree_size: other as u64,
                        ..proof.clone()
                    };
                    let same_shape = m < other && reference_path_shape(m, other) == shape;
                    assert_eq!(
                        verify_inclusion(leaf, &bad, &root),
                        same_shape,
                        "size {n}->{other} index {m}"
                    );
                }
                for other in [u64::MAX, u64::MAX / 2 + 1] {
                    let bad = InclusionProof {
                        tree_size: other,
                        ..proof.clone()
                    };
                    assert!(!verify_inclusion(leaf, &bad, &root));
                }

                // Truncated and padded paths.
                if !proof.audit_path.is_empty() {
                    let mut bad = proof.clone();
                    bad.audit_path.pop();
                    assert!(!verify_inclusion(leaf, &bad, &root));
                    let mut bad = proof.clone();
                    bad.audit_path.remove(0);
                    assert!(!verify_inclusion(leaf, &bad, &root));
                }
                let mut bad = proof.clone();
                bad.audit_path.push(root);
                assert!(!verify_inclusion(leaf, &bad, &root));
                let mut bad = proof.clone();
                bad.audit_path.insert(0, *leaf);
                assert!(!verify_inclusion(leaf, &bad, &root));
            }
        }
    }

    #[test]
    fn every_bit_flip_and_every_wrong_index_or_size_is_judged_right_for_sizes_1_to_40() {
        // Exhaustive over small trees: every element of every path, every
        // other index, every other size up to n + 3.
        for n in 1..=40usize {
            let leaves = leaf_hashes_of(&items(n));
            let tree = MerkleTree::from_leaf_hashes(leaves.clone());
            let root = tree.root();
            for (m, leaf) in leaves.iter().enumerate() {
                let proof = tree.inclusion_proof(m as u64).unwrap();
                for i in 0..proof.audit_path.len() {
                    let mut bad = proof.clone();
                    bad.audit_path[i][(i * 7) % 32] ^= 1 << (i % 8);
                    assert!(
                        !verify_inclusion(leaf, &bad, &root),
                        "size {n} index {m} elem {i}"
                    );
                }
                for other in (0..n as u64 + 2).filter(|&o| o != m as u64) {
                    let bad = InclusionProof {
                        leaf_index: other,
                        ..proof.clone()
                    };
                    assert!(
                        !verify_inclusion(leaf, &bad, &root),
                        "size {n} index {m}->{other}"
                    );
                }
                let shape = reference_path_shape(m, n);
                for other in (0..=n + 3).filter(|&o| o != n) {
                    let bad = InclusionProof {
                        tree_size: other as u64,
                        ..proof.clone()
                    };
                    let same_shape = m < other && reference_path_shape(m, other) == shape;
                    assert_eq!(
                        verify_inclusion(leaf, &bad, &root),
                        same_shape,
                        "size {n}->{other} index {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_size_with_the_same_shape_is_the_only_accepted_size_change() {
        // Pins the documented limitation with a concrete case, so a change in
        // behaviour is noticed: leaf 0 of 4 has the path shape of leaf 0 of 3.
        let leaves = leaf_hashes_of(&items(4));
        let tree = MerkleTree::from_leaf_hashes(leaves.clone());
        let proof = tree.inclusion_proof(0).unwrap();
        let resized = InclusionProof {
            tree_size: 3,
            ..proof.clone()
        };
        assert!(verify_inclusion(&leaves[0], &resized, &tree.root()));
        let resized = InclusionProof {
            tree_size: 5,
            ..proof
        };
        assert!(!verify_inclusion(&leaves[0], &resized, &tree.root()));
    }

    #[test]
    fn verification_rejects_degenerate_proofs() {
        let leaf = leaf_hash(b"x");
        let empty = InclusionProof {
            leaf_index: 0,
            tree_size: 0,
            audit_path: vec![],
        };
        assert!(!verify_inclusion(&leaf, &empty, &EMPTY_ROOT));
        assert!(!verify_inclusion(&leaf, &empty, &leaf));
        let single = InclusionProof {
            leaf_index: 0,
            tree_size: 1,
            audit_path: vec![],
        };
        assert!(verify_inclusion(&leaf, &single, &leaf));
        assert!(!verify_inclusion(&leaf, &single, &EMPTY_ROOT));
    }

    // ---- splitting ----

    #[test]
    fn split_ranges_picks_the_largest_leftmost_node() {
        assert_eq!(split_ranges(0, 4), vec![0..0]);
        assert_eq!(split_ranges(1, 4), vec![0..1]);
        assert_eq!(split_ranges(10, 0), vec![0..10]);
        assert_eq!(split_ranges(10, 1), vec![0..10]);
        assert_eq!(split_ranges(10, 2), vec![0..8, 8..10]);
        assert_eq!(split_ranges(10, 3), vec![0..4, 4..8, 8..10]);
        assert_eq!(split_ranges(10, 4), vec![0..2, 2..4, 4..8, 8..10]);
        assert_eq!(split_ranges(10, 5), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        assert_eq!(
            split_ranges(10, 6),
            vec![0..1, 1..2, 2..4, 4..6, 6..8, 8..10]
        );
        assert_eq!(split_ranges(3, 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(
            split_ranges(u64::MAX, 2),
            vec![0..1 << 63, 1 << 63..u64::MAX]
        );
    }

    #[test]
    fn split_then_combine_gives_the_unsplit_root_for_all_small_shapes() {
        for n in 0..=200u64 {
            let items = items(n as usize);
            let whole = root_of_leaf_data(&items);
            for pieces in 1..=9u64 {
                let ranges = split_ranges(n, pieces);
                assert_eq!(
                    ranges.len() as u64,
                    pieces.min(n.max(1)),
                    "n {n} pieces {pieces}"
                );
                // Contiguous exact cover, non-empty pieces (except n == 0).
                let mut next_start = 0;
                for range in &ranges {
                    assert_eq!(range.start, next_start, "n {n} pieces {pieces}");
                    assert!(n == 0 || range.end > range.start, "n {n} pieces {pieces}");
                    assert!(reference_is_node(range, 0..n), "{range:?} of {n}");
                    next_start = range.end;
                }
                assert_eq!(next_start, n);
                let parts: Vec<(Range<u64>, Hash)> = ranges
                    .iter()
                    .map(|r| {
                        (
                            r.clone(),
                            root_of_leaf_data(&items[r.start as usize..r.end as usize]),
                        )
                    })
                    .collect();
                assert_eq!(
                    combine_ranges(n, &parts),
                    Some(whole),
                    "n {n} pieces {pieces}"
                );
                let mut reversed = parts.clone();
                reversed.reverse();
                assert_eq!(combine_ranges(n, &reversed), Some(whole));
                if parts.len() > 1 {
                    // A swapped pair of hashes changes the root.
                    let mut swapped = parts.clone();
                    let (a, b) = (swapped[0].1, swapped[1].1);
                    swapped[0].1 = b;
                    swapped[1].1 = a;
                    assert_ne!(combine_ranges(n, &swapped), Some(whole));
                }
            }
        }
    }

    #[test]
    fn combine_accepts_every_node_cover_and_nothing_else_for_small_sizes() {
        // Enumerate every partition of 0..n into contiguous non-empty ranges
        // (2^(n-1) of them) and check combine_ranges accepts exactly those
        // made of tree nodes, with the right root.
        for n in 1..=12u64 {
            let items = items(n as usize);
            let whole = root_of_leaf_data(&items);
            for cuts in 0..1u64 << (n - 1) {
                let mut ranges = Vec::new();
                let mut start = 0;
                for i in 1..n {
                    if cuts & (1 << (i - 1)) != 0 {
                        ranges.push(start..i);
                        start = i;
                    }
                }
                ranges.push(start..n);
                let all_nodes = ranges.iter().all(|r| reference_is_node(r, 0..n));
                let parts: Vec<(Range<u64>, Hash)> = ranges
                    .iter()
                    .map(|r| {
                        (
                            r.clone(),
                            root_of_leaf_data(&items[r.start as usize..r.end as usize]),
                        )
                    })
                    .collect();
                let expected = all_nodes.then_some(whole);
                assert_eq!(combine_ranges(n, &parts), expected, "n {n} {ranges:?}");
            }
        }
    }

    #[test]
    fn combine_rejects_malformed_covers() {
        let h = sha256(b"part");
        // Built by hand: clippy rightly flags literal reversed ranges and
        // one-range arrays, but here they are the point.
        let r = |start: u64, end: u64| Range { start, end };
        let check_none = |n: u64, ranges: &[Range<u64>]| {
            let parts: Vec<(Range<u64>, Hash)> = ranges.iter().map(|r| (r.clone(), h)).collect();
            assert_eq!(combine_ranges(n, &parts), None, "n {n} {ranges:?}");
        };
        check_none(4, &[]);
        check_none(4, &[r(0, 2)]); // short
        check_none(4, &[r(0, 2), r(2, 4), r(4, 5)]); // past the end
        check_none(4, &[r(0, 2), r(0, 2), r(2, 4)]); // duplicate
        check_none(4, &[r(0, 2), r(1, 2), r(2, 4)]); // overlap
        check_none(4, &[r(0, 1), r(2, 4)]); // gap
        check_none(4, &[r(0, 2), r(2, 2), r(2, 4)]); // empty range
        check_none(4, &[r(0, 2), r(3, 2), r(2, 4)]); // reversed range
        check_none(5, &[r(0, 3), r(3, 5)]); // not nodes
        check_none(5, &[r(0, 4), r(4, 6)]); // past the end
        check_none(5, &[r(0, 5), r(0, 0)]);
        check_none(0, &[r(0, 1)]);
        check_none(0, &[r(0, 0), r(0, 0)]);
        check_none(0, &[r(1, 1)]);
        assert_eq!(combine_ranges(0, &[]), Some(EMPTY_ROOT));
        assert_eq!(combine_ranges(0, &[(0..0, EMPTY_ROOT)]), Some(EMPTY_ROOT));
        assert_eq!(combine_ranges(1, &[(0..1, h)]), Some(h));
    }

    #[test]
    fn root_with_proofs_matches_the_stored_tree() {
        for size in [1usize, 2, 3, 5, 8, 13, 100, 4097, 9000] {
            let leaves: Vec<Hash> = (0..size as u64)
                .map(|i| leaf_hash(&i.to_le_bytes()))
                .collect();
            let tree = MerkleTree::from_leaf_hashes(leaves.clone());
            let indices: Vec<u64> = [0, size as u64 / 2, size as u64 - 1].to_vec();
            let (root, proofs) = root_with_proofs(leaves.clone(), &indices);
            assert_eq!(root, tree.root(), "size {size}");
            for (proof, &index) in proofs.iter().zip(&indices) {
                assert_eq!(
                    Some(proof.clone()),
                    tree.inclusion_proof(index),
                    "size {size} leaf {index}"
                );
                assert!(verify_inclusion(&leaves[index as usize], proof, &root));
            }
        }
        assert_eq!(root_with_proofs(Vec::new(), &[]).0, EMPTY_ROOT);
    }
}
