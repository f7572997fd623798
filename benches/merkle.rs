//! Throughput of `root_of_leaf_hashes`, 10^3 to 10^6 leaves, on seeded
//! leaf hashes (none checked in). Each iteration gets a fresh copy of the
//! leaves because the function consumes its buffer; the copy is made outside
//! the timed region.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use hxo::hash::sha256;
use hxo::merkle::{leaf_hash, root_of_leaf_hashes};

fn bench_root_of_leaf_hashes(c: &mut Criterion) {
    let mut group = c.benchmark_group("root_of_leaf_hashes");
    group.sample_size(10);
    for leaf_count in [1_000u64, 10_000, 100_000, 1_000_000] {
        let leaves: Vec<_> = (0..leaf_count)
            .map(|i| leaf_hash(&sha256(&i.to_le_bytes())))
            .collect();
        group.throughput(Throughput::Elements(leaf_count));
        group.bench_with_input(
            BenchmarkId::from_parameter(leaf_count),
            &leaves,
            |b, leaves| {
                b.iter_batched(
                    || leaves.clone(),
                    root_of_leaf_hashes,
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_root_of_leaf_hashes);
criterion_main!(benches);
