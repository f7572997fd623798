//! TEMPORARY: replaced by the merkle module.
use crate::hash::Hash;
use sha2::{Digest, Sha256};
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}
pub fn shard_leaf_hash(cas: &Hash, out: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(cas);
    h.update(out);
    h.finalize().into()
}
pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}
pub fn root_of_leaf_hashes(mut v: Vec<Hash>) -> Hash {
    if v.is_empty() {
        return Sha256::digest([]).into();
    }
    while v.len() > 1 {
        v = v
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node_hash(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
    }
    v[0]
}
pub fn root_of_leaf_data(items: &[Hash]) -> Hash {
    root_of_leaf_hashes(items.iter().map(|i| leaf_hash(i)).collect())
}
