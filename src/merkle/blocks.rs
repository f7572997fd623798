//! Building a tree block by block, in whatever order its leaves arrive.
//!
//! Certification reads leaves back from the log in completion order, not
//! leaf order. [`BlockTree`] cuts the leaves into aligned blocks of
//! `2^block_log2` leaves; each block's subtree is hashed as soon as the
//! block is complete, while the rest are still being read, and the tree is
//! finished from the block roots. Inclusion proofs for a sample of leaves
//! chosen up front are collected on the way.
//!
//! # Why the block roots are nodes of the tree
//!
//! In the bottom-up view of the module docs, node i of level j covers leaves
//! `[i * 2^j, min((i + 1) * 2^j, n))`. With j = `block_log2`, that is block
//! i exactly (the last one possibly partial), and the levels above j pair
//! these nodes the same way whether the levels below were hashed all at
//! once or one block at a time. So the root over the block roots, pairing
//! bottom-up, is the tree's root, and an audit path is the path inside the
//! block followed by the block's path among the block roots.

use super::{root_with_proofs, Hash, InclusionProof};
use std::collections::HashMap;
use std::ops::Range;

/// A tree of `tree_size` leaves, hashed one aligned block at a time.
#[derive(Debug)]
pub struct BlockTree {
    tree_size: u64,
    block_log2: u32,
    /// Leaves whose proofs are wanted, ascending and distinct.
    sample: Vec<u64>,
    block_roots: Vec<Option<Hash>>,
    /// Audit paths inside their blocks, of the sampled leaves whose block
    /// is hashed.
    block_paths: HashMap<u64, Vec<Hash>>,
}

impl BlockTree {
    /// A tree of `tree_size` leaves in blocks of `2^block_log2`, collecting
    /// proofs for the leaves in `sample` (each below `tree_size`).
    pub fn new(tree_size: u64, block_log2: u32, sample: &[u64]) -> BlockTree {
        assert!(block_log2 < 32, "blocks of at most 2^31 leaves");
        let mut sample = sample.to_vec();
        sample.sort_unstable();
        sample.dedup();
        assert!(
            sample.last().is_none_or(|&leaf| leaf < tree_size),
            "sampled leaf outside a tree of {tree_size}"
        );
        let block_count = tree_size.div_ceil(1 << block_log2);
        BlockTree {
            tree_size,
            block_log2,
            sample,
            block_roots: vec![None; block_count as usize],
            block_paths: HashMap::new(),
        }
    }

    pub fn block_count(&self) -> usize {
        self.block_roots.len()
    }

    /// The block holding `leaf`.
    pub fn block_of(&self, leaf: u64) -> usize {
        (leaf >> self.block_log2) as usize
    }

    /// The leaves of block `block` (the last one may be short).
    pub fn block_range(&self, block: usize) -> Range<u64> {
        let start = (block as u64) << self.block_log2;
        start..(start + (1 << self.block_log2)).min(self.tree_size)
    }

    pub fn is_hashed(&self, block: usize) -> bool {
        self.block_roots[block].is_some()
    }

    /// Hashes block `block` from its leaf hashes (exactly its range's).
    pub fn hash_block(&mut self, block: usize, leaf_hashes: &[Hash]) {
        let range = self.block_range(block);
        assert_eq!(
            leaf_hashes.len() as u64,
            range.end - range.start,
            "block {block} holds {range:?}"
        );
        let first = self.sample.partition_point(|&leaf| leaf < range.start);
        let last = self.sample.partition_point(|&leaf| leaf < range.end);
        let sampled = &self.sample[first..last];
        let local: Vec<u64> = sampled.iter().map(|leaf| leaf - range.start).collect();
        let (root, proofs) = root_with_proofs(leaf_hashes.to_vec(), &local);
        for (leaf, proof) in sampled.iter().zip(proofs) {
            self.block_paths.insert(*leaf, proof.audit_path);
        }
        self.block_roots[block] = Some(root);
    }

    /// Forgets block `block`'s hash (a leaf in it changed after it was
    /// hashed); it must be hashed again before [`BlockTree::finish`].
    pub fn forget_block(&mut self, block: usize) {
        self.block_roots[block] = None;
    }

    /// The root and the sampled leaves' proofs (in ascending leaf order).
    /// `None` while a block is not hashed.
    pub fn finish(self) -> Option<(Hash, Vec<InclusionProof>)> {
        let roots: Vec<Hash> = self.block_roots.into_iter().collect::<Option<_>>()?;
        let blocks: Vec<u64> = self
            .sample
            .iter()
            .map(|leaf| leaf >> self.block_log2)
            .collect();
        let (root, top) = root_with_proofs(roots, &blocks);
        let mut block_paths = self.block_paths;
        let proofs = self
            .sample
            .iter()
            .zip(top)
            .map(|(&leaf, top)| {
                let mut audit_path = block_paths
                    .remove(&leaf)
                    .expect("every hashed block recorded its sampled paths");
                audit_path.extend(top.audit_path);
                InclusionProof {
                    leaf_index: leaf,
                    tree_size: self.tree_size,
                    audit_path,
                }
            })
            .collect();
        Some((root, proofs))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{leaf_hash, root_of_leaf_hashes};
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    fn blocked(leaves: &[Hash], block_log2: u32, sample: &[u64], reverse: bool) -> BlockTree {
        let mut tree = BlockTree::new(leaves.len() as u64, block_log2, sample);
        let mut order: Vec<usize> = (0..tree.block_count()).collect();
        if reverse {
            order.reverse();
        }
        for block in order {
            let range = tree.block_range(block);
            tree.hash_block(block, &leaves[range.start as usize..range.end as usize]);
        }
        tree
    }

    #[test]
    fn matches_the_whole_tree_at_every_size_block_and_order() {
        for n in 1..=70u64 {
            let all = leaves(n);
            let sample: Vec<u64> = [0, n / 3, n / 2, n - 1].into_iter().collect();
            let (want_root, want_proofs) = root_with_proofs(all.clone(), &{
                let mut s = sample.clone();
                s.sort_unstable();
                s.dedup();
                s
            });
            assert_eq!(want_root, root_of_leaf_hashes(all.clone()));
            for block_log2 in 0..=7 {
                for reverse in [false, true] {
                    let (root, proofs) = blocked(&all, block_log2, &sample, reverse)
                        .finish()
                        .expect("every block hashed");
                    assert_eq!(root, want_root, "n {n} blocks 2^{block_log2}");
                    assert_eq!(proofs, want_proofs, "n {n} blocks 2^{block_log2}");
                }
            }
        }
    }

    #[test]
    fn an_unhashed_or_forgotten_block_leaves_no_root() {
        let all = leaves(10);
        let mut tree = BlockTree::new(10, 2, &[9]);
        assert_eq!(tree.block_count(), 3);
        assert_eq!(tree.block_range(2), 8..10);
        tree.hash_block(0, &all[0..4]);
        tree.hash_block(2, &all[8..10]);
        assert!(!tree.is_hashed(1));
        let mut complete = blocked(&all, 2, &[9], false);
        complete.forget_block(1);
        assert!(complete.finish().is_none());
        tree.hash_block(1, &all[4..8]);
        let (root, proofs) = tree.finish().unwrap();
        assert_eq!(root, root_of_leaf_hashes(all));
        assert_eq!(proofs[0].leaf_index, 9);
    }

    #[test]
    fn an_empty_tree_has_no_blocks() {
        let (root, proofs) = BlockTree::new(0, 4, &[]).finish().unwrap();
        assert_eq!(root, super::super::EMPTY_ROOT);
        assert!(proofs.is_empty());
    }
}
