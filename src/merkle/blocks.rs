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

/// A block's subtree: its root and the audit paths (inside the block) of
/// its sampled leaves, by offset.
#[derive(Debug)]
pub struct BlockHash {
    leaf_count: u64,
    root: Hash,
    paths: Vec<(u64, Vec<Hash>)>,
}

/// Hashes one block's subtree from its leaf hashes, with the audit paths of
/// the leaves at `sample` (offsets into the block). Pure: any thread may
/// run it.
pub fn hash_block_leaves(leaf_hashes: Vec<Hash>, sample: &[u64]) -> BlockHash {
    let leaf_count = leaf_hashes.len() as u64;
    let (root, proofs) = root_with_proofs(leaf_hashes, sample);
    let paths = sample
        .iter()
        .zip(proofs)
        .map(|(&offset, proof)| (offset, proof.audit_path))
        .collect();
    BlockHash {
        leaf_count,
        root,
        paths,
    }
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

    /// The sampled leaves of block `block`, as offsets into it.
    pub fn sample_in(&self, block: usize) -> Vec<u64> {
        let range = self.block_range(block);
        let first = self.sample.partition_point(|&leaf| leaf < range.start);
        let last = self.sample.partition_point(|&leaf| leaf < range.end);
        self.sample[first..last]
            .iter()
            .map(|leaf| leaf - range.start)
            .collect()
    }

    /// Records block `block`'s subtree, hashed elsewhere by
    /// [`hash_block_leaves`] with [`BlockTree::sample_in`] as its sample.
    pub fn put_block(&mut self, block: usize, hashed: BlockHash) {
        let range = self.block_range(block);
        assert_eq!(
            hashed.leaf_count,
            range.end - range.start,
            "block {block} holds {range:?}"
        );
        for (offset, path) in hashed.paths {
            self.block_paths.insert(range.start + offset, path);
        }
        self.block_roots[block] = Some(hashed.root);
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

/// A [`BlockTree`] fed with leaf outcomes in the order a log holds them,
/// where a leaf's latest outcome wins: `Some(leaf data)` when it is done,
/// `None` when it is not (a failure after a success).
///
/// Only blocks still waiting for leaves hold their leaves' data. A block
/// whose leaves are all done is handed out at once as a [`FullBlock`], to
/// be hashed on any thread while the log is still being read, and comes
/// back as a [`HashedBlock`] whose buffer is reused. A log written in
/// roughly leaf order so keeps a few blocks open at a time, not a hash per
/// leaf: fresh memory, not hashing, was what a 10^6-leaf tree cost most on
/// a VM.
///
/// A block handed out and then updated again (a replay, a later failure)
/// is not patched: its leaves are gone. [`LatestLeaves::revisits`] names
/// such blocks; the caller reads their leaves' latest outcomes once more
/// and hands them to [`LatestLeaves::rehash`].
#[derive(Debug)]
pub struct LatestLeaves {
    tree: BlockTree,
    /// Per block: its leaves while it is open (some outcome came, not all
    /// are done).
    open: Vec<Option<Box<OpenBlock>>>,
    open_count: usize,
    /// Blocks handed out as full (hashed, or being hashed).
    handed_out: Vec<bool>,
    revisit: Vec<bool>,
    spare: Vec<OpenBlock>,
    /// Leaf hashes of the sampled leaves, kept for their proofs.
    sampled: HashMap<u64, Hash>,
}

/// The leaves of one block not handed out yet.
#[derive(Debug)]
pub struct OpenBlock {
    data: Vec<[u8; 64]>,
    done: Vec<bool>,
    done_count: usize,
}

/// A block whose leaves are all done, to hash with [`FullBlock::hash`].
#[derive(Debug)]
pub struct FullBlock {
    block: usize,
    first_leaf: u64,
    leaf_count: usize,
    sample: Vec<u64>,
    leaves: Box<OpenBlock>,
}

/// A hashed [`FullBlock`], for [`LatestLeaves::add`].
#[derive(Debug)]
pub struct HashedBlock {
    block: usize,
    hash: BlockHash,
    /// The sampled leaves and their leaf hashes.
    sampled: Vec<(u64, Hash)>,
    leaves: Box<OpenBlock>,
}

impl FullBlock {
    /// Hashes the block's leaves and its subtree. Pure: any thread may run
    /// it.
    pub fn hash(self) -> HashedBlock {
        let leaf_hashes: Vec<Hash> = self.leaves.data[..self.leaf_count]
            .iter()
            .map(|data| super::leaf_hash(data))
            .collect();
        let sampled = self
            .sample
            .iter()
            .map(|&offset| (self.first_leaf + offset, leaf_hashes[offset as usize]))
            .collect();
        HashedBlock {
            block: self.block,
            hash: hash_block_leaves(leaf_hashes, &self.sample),
            sampled,
            leaves: self.leaves,
        }
    }
}

impl LatestLeaves {
    /// A tree of `tree_size` leaves in blocks of `2^block_log2`, collecting
    /// proofs for `sample` (as [`BlockTree::new`]).
    pub fn new(tree_size: u64, block_log2: u32, sample: &[u64]) -> LatestLeaves {
        let tree = BlockTree::new(tree_size, block_log2, sample);
        let blocks = tree.block_count();
        LatestLeaves {
            tree,
            open: (0..blocks).map(|_| None).collect(),
            open_count: 0,
            handed_out: vec![false; blocks],
            revisit: vec![false; blocks],
            spare: Vec::new(),
            sampled: HashMap::new(),
        }
    }

    /// Applies one outcome (the next in log order); returns the block it
    /// completed, if it did. Panics on a leaf outside the tree (a caller
    /// bug).
    pub fn update(&mut self, leaf: u64, data: Option<&[u8; 64]>) -> Option<FullBlock> {
        assert!(leaf < self.tree.tree_size, "leaf {leaf} outside the tree");
        let block = self.tree.block_of(leaf);
        if self.handed_out[block] {
            self.revisit[block] = true;
            return None;
        }
        let block_len = 1usize << self.tree.block_log2;
        let open = match &mut self.open[block] {
            Some(open) => open,
            empty => {
                self.open_count += 1;
                empty.insert(Box::new(self.spare.pop().unwrap_or_else(|| OpenBlock {
                    data: vec![[0; 64]; block_len],
                    done: vec![false; block_len],
                    done_count: 0,
                })))
            }
        };
        let offset = (leaf & (block_len as u64 - 1)) as usize;
        if open.done[offset] != data.is_some() {
            open.done[offset] = data.is_some();
            if data.is_some() {
                open.done_count += 1;
            } else {
                open.done_count -= 1;
            }
        }
        if let Some(data) = data {
            open.data[offset] = *data;
        }
        let range = self.tree.block_range(block);
        let leaf_count = (range.end - range.start) as usize;
        if open.done_count < leaf_count {
            return None;
        }
        let leaves = self.open[block].take().expect("open above");
        self.open_count -= 1;
        self.handed_out[block] = true;
        Some(FullBlock {
            block,
            first_leaf: range.start,
            leaf_count,
            sample: self.tree.sample_in(block),
            leaves,
        })
    }

    /// Records a block handed out by [`LatestLeaves::update`], now hashed,
    /// and keeps its buffer for another block.
    pub fn add(&mut self, hashed: HashedBlock) {
        let HashedBlock {
            block,
            hash,
            sampled,
            mut leaves,
        } = hashed;
        self.tree.put_block(block, hash);
        self.sampled.extend(sampled);
        leaves.done.fill(false);
        leaves.done_count = 0;
        self.spare.push(*leaves);
    }

    /// Blocks handed out before an outcome of one of their leaves came:
    /// each needs [`LatestLeaves::rehash`] before [`LatestLeaves::finish`].
    pub fn revisits(&self) -> Vec<usize> {
        (0..self.revisit.len())
            .filter(|&block| self.revisit[block])
            .collect()
    }

    /// The leaves of `block`.
    pub fn block_range(&self, block: usize) -> Range<u64> {
        self.tree.block_range(block)
    }

    /// The block holding `leaf`.
    pub fn block_of(&self, leaf: u64) -> usize {
        self.tree.block_of(leaf)
    }

    pub fn block_count(&self) -> usize {
        self.tree.block_count()
    }

    /// Hashes `block` again from its leaves' latest outcomes (leaf hashes,
    /// in leaf order, exactly its range's). Returns false, leaving it
    /// unhashed, when one of them is not done.
    pub fn rehash(&mut self, block: usize, latest: &[Option<Hash>]) -> bool {
        assert!(
            !self.handed_out[block] || self.tree.is_hashed(block),
            "block {block} rehashed before its first hash was added"
        );
        self.revisit[block] = false;
        self.tree.forget_block(block);
        let Some(leaf_hashes) = latest.iter().copied().collect::<Option<Vec<Hash>>>() else {
            return false;
        };
        let first_leaf = self.tree.block_range(block).start;
        let sample = self.tree.sample_in(block);
        for &offset in &sample {
            self.sampled
                .insert(first_leaf + offset, leaf_hashes[offset as usize]);
        }
        self.tree
            .put_block(block, hash_block_leaves(leaf_hashes, &sample));
        true
    }

    /// The root and the sampled leaves' proofs, each with its leaf hash;
    /// `None` unless every leaf's latest outcome is done. Panics if a
    /// handed-out block was not added or a revisit is still due (caller
    /// bugs).
    pub fn finish(self) -> Option<(Hash, Vec<(InclusionProof, Hash)>)> {
        assert!(
            !self.revisit.iter().any(|r| *r),
            "a block updated after it was handed out was not rehashed"
        );
        if self.open_count > 0 {
            return None;
        }
        assert!(
            (0..self.handed_out.len())
                .all(|block| !self.handed_out[block] || self.tree.is_hashed(block)),
            "a block handed out was not added"
        );
        let (root, proofs) = self.tree.finish()?;
        let sampled = self.sampled;
        let proofs = proofs
            .into_iter()
            .map(|proof| {
                let leaf = sampled[&proof.leaf_index];
                (proof, leaf)
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

    /// Hashes block `block` of `tree` from its leaf hashes (exactly its
    /// range's), as a caller hashing on its own thread would.
    fn hash_block(tree: &mut BlockTree, block: usize, leaf_hashes: &[Hash]) {
        let hashed = hash_block_leaves(leaf_hashes.to_vec(), &tree.sample_in(block));
        tree.put_block(block, hashed);
    }

    fn blocked(leaves: &[Hash], block_log2: u32, sample: &[u64], reverse: bool) -> BlockTree {
        let mut tree = BlockTree::new(leaves.len() as u64, block_log2, sample);
        let mut order: Vec<usize> = (0..tree.block_count()).collect();
        if reverse {
            order.reverse();
        }
        for block in order {
            let range = tree.block_range(block);
            hash_block(
                &mut tree,
                block,
                &leaves[range.start as usize..range.end as usize],
            );
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
        hash_block(&mut tree, 0, &all[0..4]);
        hash_block(&mut tree, 2, &all[8..10]);
        assert!(!tree.is_hashed(1));
        let mut complete = blocked(&all, 2, &[9], false);
        complete.forget_block(1);
        assert!(complete.finish().is_none());
        hash_block(&mut tree, 1, &all[4..8]);
        let (root, proofs) = tree.finish().unwrap();
        assert_eq!(root, root_of_leaf_hashes(all));
        assert_eq!(proofs[0].leaf_index, 9);
    }

    type Outcome = (u64, Option<[u8; 64]>);

    /// The latest outcome per leaf, applied naively: the tree it gives.
    fn naive(
        n: u64,
        outcomes: &[Outcome],
        sample: &[u64],
    ) -> Option<(Hash, Vec<(InclusionProof, Hash)>)> {
        let mut latest = vec![None; n as usize];
        for (leaf, data) in outcomes {
            latest[*leaf as usize] = data.map(|data| leaf_hash(&data));
        }
        let leaves: Vec<Hash> = latest.into_iter().collect::<Option<_>>()?;
        let mut sample = sample.to_vec();
        sample.sort_unstable();
        sample.dedup();
        let (root, proofs) = root_with_proofs(leaves.clone(), &sample);
        let proofs = proofs
            .into_iter()
            .map(|p| {
                let leaf = leaves[p.leaf_index as usize];
                (p, leaf)
            })
            .collect();
        Some((root, proofs))
    }

    /// Feeds `outcomes` one by one; full blocks are hashed and added only
    /// once more than `late` wait, the latest first (as a pool may finish
    /// them); then rehashes revisits from the latest outcomes, as
    /// `Store::reread_tree` does.
    fn streamed(
        n: u64,
        block_log2: u32,
        late: usize,
        outcomes: &[Outcome],
        sample: &[u64],
    ) -> Option<(Hash, Vec<(InclusionProof, Hash)>)> {
        let mut stream = LatestLeaves::new(n, block_log2, sample);
        let mut waiting = Vec::new();
        for (leaf, data) in outcomes {
            waiting.extend(stream.update(*leaf, data.as_ref()));
            while waiting.len() > late {
                let full: FullBlock = waiting.pop().unwrap();
                stream.add(full.hash());
            }
        }
        for full in waiting {
            stream.add(full.hash());
        }
        for block in stream.revisits() {
            let range = stream.block_range(block);
            let mut latest = vec![None; (range.end - range.start) as usize];
            for (leaf, data) in outcomes {
                if range.contains(leaf) {
                    latest[(leaf - range.start) as usize] = data.map(|data| leaf_hash(&data));
                }
            }
            if !stream.rehash(block, &latest) {
                return None;
            }
        }
        stream.finish()
    }

    #[test]
    fn latest_leaves_agree_with_the_naive_latest_outcome_per_leaf() {
        let data = |leaf: u64, round: u64| {
            let mut data = [0u8; 64];
            data[..8].copy_from_slice(&leaf.to_le_bytes());
            data[40..48].copy_from_slice(&round.to_le_bytes());
            data
        };
        for n in [1u64, 2, 7, 16, 33, 100] {
            let sample = [0, n / 2, n - 1];
            // In order, done once.
            let ordered: Vec<Outcome> = (0..n).map(|l| (l, Some(data(l, 0)))).collect();
            // Scrambled, every third fails first, every fifth is done twice,
            // and (when `tail_fails`) one leaf ends failed.
            for tail_fails in [false, true] {
                let mut mixed = Vec::new();
                let order: Vec<u64> = (0..n).map(|i| (i * 7 + 3) % n).collect();
                for &l in &order {
                    mixed.push((l, if l % 3 == 0 { None } else { Some(data(l, 1)) }));
                }
                for &l in &order {
                    if l % 3 == 0 || l % 5 == 0 {
                        mixed.push((l, Some(data(l, 2))));
                    }
                }
                if tail_fails {
                    mixed.push((n / 2, None));
                }
                for block_log2 in [0, 1, 3, 5] {
                    for late in [0, 1, 3, 1000] {
                        for outcomes in [&ordered, &mixed] {
                            let want = naive(n, outcomes, &sample);
                            let got = streamed(n, block_log2, late, outcomes, &sample);
                            assert_eq!(got, want, "n {n} blocks 2^{block_log2} late {late}");
                        }
                    }
                }
            }
            // A leaf with no outcome at all: no tree.
            assert!(streamed(n + 1, 2, 1, &ordered, &sample).is_none());
        }
    }

    #[test]
    fn an_empty_tree_has_no_blocks() {
        let (root, proofs) = BlockTree::new(0, 4, &[]).finish().unwrap();
        assert_eq!(root, super::super::EMPTY_ROOT);
        assert!(proofs.is_empty());
    }
}
