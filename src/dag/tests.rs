//! Unit tests of DAG compilation: joins, cas_id sensitivity, collapse, chains, limits.

use super::*;
use crate::partition::{FileEntry, Partition, PartitionInput, Partitioning, Partitions};
use crate::plan::{Plan, PlanDefaults};

const DEFAULTS: PlanDefaults = PlanDefaults {
    default_slo_ms: 1000,
    max_shards: 1_000_000,
};

fn ranges(count: u64) -> Partitioning {
    Partitioning::unit_ranges(count)
}

fn plan(json: &str) -> Plan {
    Plan::from_json(json, DEFAULTS).unwrap()
}

const THREE: &str = r#"{"name": "p", "stages": [
    {"id": "a", "kind": "synthetic", "config": {"shards": 4}},
    {"id": "b", "kind": "synthetic", "config": {"shards": 4}, "dependencies": ["a"]},
    {"id": "c", "kind": "synthetic", "config": {"shards": 2}, "dependencies": ["b"]}]}"#;

#[test]
fn same_keys_pipeline_and_different_keys_barrier() {
    let dag = compile(&plan(THREE), vec![ranges(4), ranges(4), ranges(2)]).unwrap();
    assert_eq!(dag.shard_count(), 10);
    assert_eq!(dag.stages[1].upstream, vec![(0, Join::Pipelined)]);
    assert_eq!(dag.stages[2].upstream, vec![(1, Join::Barrier)]);
    // Pipelined: shard k of b waits for shard k of a only.
    for k in 0..4 {
        assert_eq!(dag.dependents(LeafIndex(k)), &[4 + k]);
        assert_eq!(dag.dependency_count(LeafIndex(4 + k)), 1);
    }
    assert_eq!(dag.barrier_dependents(1), &[2]);
    assert_eq!(dag.barrier_count(2), 1);
    assert_eq!(dag.stage_of(LeafIndex(0)), 0);
    assert_eq!(dag.stage_of(LeafIndex(7)), 1);
    assert_eq!(dag.stage_of(LeafIndex(9)), 2);
    let closure = dag.downstream_closure(&[LeafIndex(1)]);
    assert_eq!(
        closure,
        vec![LeafIndex(1), LeafIndex(5), LeafIndex(8), LeafIndex(9)]
    );
}

#[test]
fn cas_ids_are_deterministic_unique_and_input_sensitive() {
    let p = plan(THREE);
    let first = compile(&p, vec![ranges(4), ranges(4), ranges(2)]).unwrap();
    let second = compile(&p, vec![ranges(4), ranges(4), ranges(2)]).unwrap();
    assert_eq!(first.cas_ids(), second.cas_ids());
    assert_eq!(first.dag_digest, second.dag_digest);
    let unique: std::collections::HashSet<_> = first.cas_ids().iter().collect();
    assert_eq!(unique.len(), 10);
    // Changing an upstream input changes the downstream cas_ids too.
    let mut changed = ranges(4);
    let Partitions::Listed(partitions) = &mut changed.partitions else {
        unreachable!("the test's ranges are listed")
    };
    partitions[0].input = PartitionInput::Range { start: 0, end: 2 };
    let third = compile(&p, vec![changed, ranges(4), ranges(2)]).unwrap();
    assert_ne!(first.cas_id(LeafIndex(0)), third.cas_id(LeafIndex(0)));
    assert_ne!(first.cas_id(LeafIndex(4)), third.cas_id(LeafIndex(4)));
    assert_eq!(first.cas_id(LeafIndex(1)), third.cas_id(LeafIndex(1)));
    // Barrier dependents see any upstream change.
    assert_ne!(first.cas_id(LeafIndex(8)), third.cas_id(LeafIndex(8)));
}

#[test]
fn config_changes_cas_ids_but_key_order_does_not() {
    let a = plan(
        r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 2, "seed": 1}}]}"#,
    );
    let b = plan(
        r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic", "config": {"seed": 1, "shards": 2}}]}"#,
    );
    let c = plan(
        r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic", "config": {"seed": 2, "shards": 2}}]}"#,
    );
    let cas = |p: &Plan| compile(p, vec![ranges(2)]).unwrap().cas_ids().to_vec();
    assert_eq!(cas(&a), cas(&b));
    assert_ne!(cas(&a), cas(&c));
}

#[test]
fn duplicate_inputs_collapse_and_disable_pipelining() {
    let file = FileEntry {
        rel_path: "x.rs".into(),
        size_bytes: 1,
        content_sha256: [7; 32],
    };
    let files = |key: &str| Partition {
        key: Some(key.into()),
        input: PartitionInput::Files {
            root: "/tmp".into(),
            files: vec![file.clone()],
        },
    };
    let p = plan(
        r#"{"name": "p", "stages": [
        {"id": "a", "kind": "exec", "partitioner": "by_module", "config": {"command": "true"}},
        {"id": "b", "kind": "exec", "partitioner": "by_module", "config": {"command": "true"}, "dependencies": ["a"]}]}"#,
    );
    let dag = compile(
        &p,
        vec![
            Partitioning {
                partitions: vec![files("m1"), files("m2")].into(),
                chained: false,
            },
            Partitioning {
                partitions: vec![files("m1"), files("m2")].into(),
                chained: false,
            },
        ],
    )
    .unwrap();
    assert_eq!(dag.stages[0].shard_count, 1);
    assert_eq!(dag.stages[0].collapsed_count, 1);
    assert_eq!(dag.stages[1].upstream, vec![(0, Join::Barrier)]);
}

#[test]
fn chained_stages_form_a_chain() {
    let p = plan(
        r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic", "partitioner": "by_dag_depth", "config": {"graph": {}}}]}"#,
    );
    let mut chain = ranges(3);
    chain.chained = true;
    let dag = compile(&p, vec![chain]).unwrap();
    assert_eq!(dag.dependents(LeafIndex(0)), &[1]);
    assert_eq!(dag.dependents(LeafIndex(1)), &[2]);
    assert_eq!(dag.dependency_count(LeafIndex(0)), 0);
    assert_eq!(dag.edge_count(), 2);
}

#[test]
fn shard_limit_is_enforced_before_hashing() {
    let p = plan(
        r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic"}], "constraints": {"max_shards": 3}}"#,
    );
    let error = compile(&p, vec![ranges(4)]).err().unwrap();
    assert!(
        error.to_string().contains("4 shards exceed max_shards 3"),
        "{error}"
    );
}

#[test]
fn computed_ranges_compile_like_listed_ones() {
    let p = plan(THREE);
    let even = |count: u64| Partitioning {
        partitions: Partitions::EvenRanges {
            items: count,
            count,
        },
        chained: false,
    };
    let listed = compile(&p, vec![ranges(4), ranges(4), ranges(2)]).unwrap();
    let computed = compile(&p, vec![even(4), even(4), even(2)]).unwrap();
    assert_eq!(listed.cas_ids(), computed.cas_ids());
    assert_eq!(listed.dag_digest, computed.dag_digest);
    assert_eq!(computed.stages[1].upstream, vec![(0, Join::Pipelined)]);
    assert_eq!(
        listed.partition(LeafIndex(9)),
        computed.partition(LeafIndex(9))
    );
}

#[test]
fn a_dag_answers_to_its_digest_and_to_the_v1_digest_of_older_builds() {
    let dag = compile(&plan(THREE), vec![ranges(4), ranges(4), ranges(2)]).unwrap();
    assert!(dag.has_digest(&to_hex(&dag.dag_digest)));
    // v1, as builds before v2 computed it: one stream over the cas_ids.
    let mut v1 = Sha256::new();
    v1.update(b"hxo.dag.v1\0");
    v1.update((dag.shard_count() as u64).to_le_bytes());
    v1.update(dag.cas_ids().as_flattened());
    let v1: Hash = v1.finalize().into();
    assert!(dag.has_digest(&to_hex(&v1)));
    let other = compile(&plan(THREE), vec![ranges(4), ranges(4), ranges(3)]).unwrap();
    assert!(!dag.has_digest(&to_hex(&other.dag_digest)));
    assert!(!dag.has_digest("not a digest"));
}
