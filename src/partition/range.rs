//! `by_range`: `shards` contiguous ranges over `items` items, as even as
//! possible (sizes differ by at most one; the larger ones come first).
//!
//! This partitioner backs the 10^6-shard benchmarks, so it stores nothing
//! per shard ([`Partitions::EvenRanges`]): each range is computed when
//! asked for.

use super::config::{missing, optional_positive_u64, optional_u64, Config};
use super::error::check_shard_count;
use super::{PartitionError, Partitions};

pub(crate) const CONFIG_KEYS: &[&str] = &["shards", "items"];

pub(crate) fn partition(config: &Config, shards_max: u64) -> Result<Partitions, PartitionError> {
    let shards = optional_positive_u64(config, "shards")?.ok_or_else(|| missing("shards"))?;
    let items = optional_u64(config, "items")?.unwrap_or(shards);
    if items < shards {
        return Err(PartitionError::config(
            "items",
            format!("must be at least shards ({shards}), got {items}"),
        ));
    }
    check_shard_count("shards", shards, shards_max)?;
    Ok(Partitions::EvenRanges {
        items,
        count: shards,
    })
}

/// The half-open item range `(start, end)` of shard `index` when `items`
/// items are cut into `shards` contiguous shards as evenly as possible
/// (the first `items % shards` shards hold one item more). This is what
/// `by_range` stores per shard; it is public so that a caller can compute a
/// shard's range without materializing all of them.
///
/// # Panics
/// When `shards == 0` or `index >= shards`: callers validate both first.
pub fn range_shard_bounds(items: u64, shards: u64, index: u64) -> (u64, u64) {
    assert!(index < shards, "shard {index} out of range 0..{shards}");
    let per_shard = items / shards;
    let remainder = items % shards;
    // Shard i starts after i shards of `per_shard` items plus one extra item
    // for each of the first `remainder` shards. `i * per_shard <= items`, so
    // nothing overflows.
    let start_of = |index: u64| index * per_shard + index.min(remainder);
    (start_of(index), start_of(index + 1))
}

#[cfg(test)]
mod tests {
    use super::super::{Partition, PartitionInput};
    use super::*;
    use serde_json::json;

    fn run(value: serde_json::Value, shards_max: u64) -> Result<Vec<Partition>, PartitionError> {
        let partitions = partition(value.as_object().unwrap(), shards_max)?;
        Ok(partitions
            .iter()
            .map(std::borrow::Cow::into_owned)
            .collect())
    }

    fn ranges(partitions: &[Partition]) -> Vec<(u64, u64)> {
        partitions
            .iter()
            .map(|partition| match partition.input {
                PartitionInput::Range { start, end } => (start, end),
                _ => unreachable!("by_range makes ranges"),
            })
            .collect()
    }

    #[test]
    fn items_default_to_shards() {
        let partitions = run(json!({"shards": 3}), 10).unwrap();
        assert_eq!(ranges(&partitions), [(0, 1), (1, 2), (2, 3)]);
        assert!(partitions.iter().all(|partition| partition.key.is_none()));
    }

    #[test]
    fn uneven_items_put_the_larger_ranges_first() {
        let partitions = run(json!({"shards": 4, "items": 10}), 10).unwrap();
        assert_eq!(ranges(&partitions), [(0, 3), (3, 6), (6, 8), (8, 10)]);
    }

    #[test]
    fn bounds_match_the_materialized_ranges() {
        let partitions = run(json!({"shards": 7, "items": 45}), 10).unwrap();
        let got = ranges(&partitions);
        for index in 0..7 {
            assert_eq!(range_shard_bounds(45, 7, index), got[index as usize]);
        }
    }

    #[test]
    fn even_items_split_evenly() {
        let partitions = run(json!({"shards": 2, "items": 10}), 10).unwrap();
        assert_eq!(ranges(&partitions), [(0, 5), (5, 10)]);
    }

    #[test]
    fn huge_item_counts_do_not_overflow() {
        let partitions = run(json!({"shards": 3, "items": u64::MAX}), 10).unwrap();
        let got = ranges(&partitions);
        assert_eq!(got[0].0, 0);
        assert_eq!(got[2].1, u64::MAX);
        assert!(got.windows(2).all(|pair| pair[0].1 == pair[1].0));
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            (json!({}), "shards", "shards: required key is missing"),
            (
                json!({"shards": 0}),
                "shards",
                "shards: expected an integer >= 1, got 0",
            ),
            (
                json!({"shards": "4"}),
                "shards",
                "shards: expected an integer >= 1, got \"4\"",
            ),
            (
                json!({"shards": 2.5}),
                "shards",
                "shards: expected an integer >= 1, got 2.5",
            ),
            (
                json!({"shards": 4, "items": 3}),
                "items",
                "items: must be at least shards (4), got 3",
            ),
            (
                json!({"shards": 4, "items": -1}),
                "items",
                "items: expected a non-negative integer, got -1",
            ),
        ];
        for (config, key, message) in cases {
            let error = run(config, 100).unwrap_err();
            assert_eq!(error.key(), key);
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn too_many_shards_is_checked_before_allocating() {
        // u64::MAX partitions could never be allocated: reaching the error
        // proves the check comes first.
        let error = run(json!({"shards": u64::MAX}), 1_000_000).unwrap_err();
        assert!(matches!(
            error,
            PartitionError::TooManyShards {
                count: u64::MAX,
                max: 1_000_000,
                ..
            }
        ));
        assert_eq!(error.key(), "shards");
        assert!(run(json!({"shards": 5}), 5).is_ok());
        assert!(run(json!({"shards": 6}), 5).is_err());
    }

    #[test]
    fn millions_of_shards_are_computed_not_stored() {
        for (shards, items) in [(1_000_000u64, 2_500_001u64), (10_000_000, 10_000_000)] {
            let config = json!({"shards": shards, "items": items});
            let partitions = partition(config.as_object().unwrap(), shards).unwrap();
            assert_eq!(
                partitions,
                Partitions::EvenRanges {
                    items,
                    count: shards
                }
            );
            assert_eq!(partitions.len() as u64, shards);
            let range = |index: usize| match partitions.get(index).input {
                PartitionInput::Range { start, end } => (start, end),
                _ => unreachable!("by_range makes ranges"),
            };
            assert_eq!(range(0).0, 0);
            assert_eq!(range(shards as usize - 1).1, items);
            if shards == 1_000_000 {
                assert_eq!(range(1), (3, 6));
                assert_eq!(range(500_000), (1_500_000, 1_500_003));
                assert_eq!(range(500_001), (1_500_003, 1_500_005));
                assert_eq!(range(999_999), (2_499_999, 2_500_001));
            }
        }
    }
}
