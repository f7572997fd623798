//! Interoperability: our tree hash and audit paths against the independent
//! `ct-merkle` 0.1 crate, byte for byte.
//!
//! `ct-merkle` hashes a leaf as SHA-256(0x00 || bytes) where `bytes` is the
//! leaf's `CanonicalSerialize` output; its blanket impl for `T: AsRef<[u8]>`
//! writes the raw bytes with no length prefix or framing. So a
//! `CtMerkleTree<Sha256, [u8; 64]>` holding `cas_id || output_digest` is
//! exactly our shard tree, and `[u8; 32]` leaves are exactly our unit tree:
//! no adapter is needed. Its `RootHash::as_bytes` is the RFC 6962 MTH and
//! its `InclusionProof::as_bytes` is PATH(m, D[n]) as concatenated 32-byte
//! hashes, leaf upward.

use ct_merkle::{inclusion::InclusionProof as CtProof, CtMerkleTree, RootHash};
use hxo::hash::{sha256, Hash};
use hxo::merkle::{
    root_of_leaf_data, root_of_leaf_hashes, shard_leaf_hash, verify_inclusion, InclusionProof,
    MerkleTree, EMPTY_ROOT,
};
use sha2::Sha256;

/// Seeded shard leaf data: a cas_id and an output digest per index.
fn shard(i: u64) -> (Hash, Hash) {
    (
        sha256(&[b"cas".as_slice(), &i.to_le_bytes()].concat()),
        sha256(&[b"out".as_slice(), &i.to_le_bytes()].concat()),
    )
}

fn leaf_data(cas_id: &Hash, output_digest: &Hash) -> [u8; 64] {
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(cas_id);
    data[32..].copy_from_slice(output_digest);
    data
}

fn path_bytes(proof: &InclusionProof) -> Vec<u8> {
    proof.audit_path.concat()
}

fn proof_from_ct(bytes: &[u8], leaf_index: u64, tree_size: u64) -> InclusionProof {
    assert_eq!(bytes.len() % 32, 0);
    let audit_path = bytes
        .chunks_exact(32)
        .map(|c| <Hash>::try_from(c).unwrap())
        .collect();
    InclusionProof {
        leaf_index,
        tree_size,
        audit_path,
    }
}

/// Compares everything at the current size of `ct`, for the given indices.
fn compare(ct: &CtMerkleTree<Sha256, [u8; 64]>, leaf_hashes: &[Hash], indices: &[u64]) {
    let n = leaf_hashes.len();
    let ct_root = ct.root();
    let ct_root_bytes: &[u8] = ct_root.as_bytes();
    assert_eq!(
        root_of_leaf_hashes(leaf_hashes.to_vec()).as_slice(),
        ct_root_bytes,
        "root, size {n}"
    );
    let tree = MerkleTree::from_leaf_hashes(leaf_hashes.to_vec());
    let root = tree.root();
    assert_eq!(root.as_slice(), ct_root_bytes, "tree root, size {n}");
    for &m in indices {
        let ours = tree.inclusion_proof(m).unwrap();
        let theirs = ct.prove_inclusion(m as usize);
        assert_eq!(
            path_bytes(&ours),
            theirs.as_bytes(),
            "proof, size {n} index {m}"
        );

        // Cross-verify: their verifier accepts our proof, ours accepts theirs.
        let item = ct.get(m as usize).unwrap();
        let our_root_for_ct = RootHash::<Sha256>::new(root.into(), n);
        let ours_as_ct = CtProof::<Sha256>::from_bytes(path_bytes(&ours));
        our_root_for_ct
            .verify_inclusion(item, m as usize, &ours_as_ct)
            .unwrap_or_else(|e| panic!("ct-merkle rejected our proof {n}/{m}: {e:?}"));
        let theirs_as_ours = proof_from_ct(theirs.as_bytes(), m, n as u64);
        assert!(verify_inclusion(
            &leaf_hashes[m as usize],
            &theirs_as_ours,
            &root
        ));
    }
}

#[test]
fn shard_trees_match_ct_merkle_byte_for_byte() {
    // One ct-merkle tree grown leaf by leaf; we compare at many sizes.
    let mut ct = CtMerkleTree::<Sha256, [u8; 64]>::new();
    assert_eq!(ct.root().as_bytes().as_slice(), EMPTY_ROOT.as_slice());
    let mut leaf_hashes = Vec::new();
    let big_sizes = [
        256u64, 511, 512, 513, 1000, 1023, 1024, 1025, 2049, 4095, 4096, 4097, 5000, 8193,
    ];
    let max_size = *big_sizes.last().unwrap();
    for i in 0..max_size {
        let (cas_id, output_digest) = shard(i);
        ct.push(leaf_data(&cas_id, &output_digest));
        leaf_hashes.push(shard_leaf_hash(&cas_id, &output_digest));
        let n = i + 1;
        if n <= 200 {
            let all: Vec<u64> = (0..n).collect();
            compare(&ct, &leaf_hashes, &all);
        } else if big_sizes.contains(&n) {
            let mut sample: Vec<u64> = (0..n).step_by(97).collect();
            sample.extend([n / 2, n - 2, n - 1]);
            compare(&ct, &leaf_hashes, &sample);
        }
    }
}

#[test]
fn unit_trees_match_ct_merkle_byte_for_byte() {
    // A unit-made shard's digest: leaves are 32-byte unit digests.
    let mut ct = CtMerkleTree::<Sha256, [u8; 32]>::new();
    let mut items = Vec::new();
    for i in 0..600u64 {
        let item = sha256(&i.to_be_bytes());
        ct.push(item);
        items.push(item);
        assert_eq!(
            root_of_leaf_data(&items).as_slice(),
            ct.root().as_bytes().as_slice(),
            "size {}",
            i + 1
        );
    }
}

#[test]
fn a_tampered_proof_fails_in_both_verifiers() {
    // Guards the cross-verification above against a verifier that accepts
    // anything.
    let mut ct = CtMerkleTree::<Sha256, [u8; 64]>::new();
    let mut leaf_hashes = Vec::new();
    for i in 0..37 {
        let (cas_id, output_digest) = shard(i);
        ct.push(leaf_data(&cas_id, &output_digest));
        leaf_hashes.push(shard_leaf_hash(&cas_id, &output_digest));
    }
    let tree = MerkleTree::from_leaf_hashes(leaf_hashes.clone());
    let root = tree.root();
    let mut proof = tree.inclusion_proof(20).unwrap();
    proof.audit_path[1][5] ^= 0x10;
    assert!(!verify_inclusion(&leaf_hashes[20], &proof, &root));
    let ct_root = RootHash::<Sha256>::new(root.into(), 37);
    let as_ct = CtProof::<Sha256>::from_bytes(path_bytes(&proof));
    assert!(ct_root
        .verify_inclusion(ct.get(20).unwrap(), 20, &as_ct)
        .is_err());
}
