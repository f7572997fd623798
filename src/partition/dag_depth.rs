//! `by_dag_depth`: `graph` maps each node to the nodes it depends on;
//! depth(n) = 0 without dependencies, else 1 + the largest depth of its
//! dependencies. One shard per depth `0..=max`, each holding its nodes in
//! byte order; the partitioning is `chained` (depth d waits for depth d-1).
//!
//! A shard's key is its node list written as a JSON array (`["a","b"]`):
//! two `by_dag_depth` stages then pipeline shard k -> shard k only when
//! they group the very same nodes at every depth, not merely when their
//! graphs are equally deep. JSON quoting keeps the key unambiguous whatever
//! the node names hold.
//!
//! Depths come from Kahn's algorithm, not recursion, so a long chain cannot
//! overflow the stack. A dependency on a node that is not a key of `graph`
//! is an error naming `graph.<node>[i]`; a cycle is an error naming
//! `graph.<node>` for the cycle's smallest node and spelling out the cycle.
//! Repeated dependencies count once.

use std::collections::HashMap;

use serde_json::Value;

use super::config::{describe, missing, Config};
use super::error::check_shard_count;
use super::{Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["graph"];

pub(crate) fn partition(
    config: &Config,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let graph = match config.get("graph") {
        None => return Err(missing("graph")),
        Some(Value::Object(graph)) => graph,
        Some(other) => {
            return Err(PartitionError::config(
                "graph",
                format!(
                    "expected an object of node to dependencies, got {}",
                    describe(other)
                ),
            ))
        }
    };
    if graph.is_empty() {
        return Err(PartitionError::config("graph", "has no nodes"));
    }

    // Node indices follow name order, so "smallest index" means "first
    // name" and everything below is deterministic.
    let mut names: Vec<&str> = graph.keys().map(String::as_str).collect();
    names.sort_unstable();
    let index_of: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(index, name)| (*name, index))
        .collect();

    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(names.len());
    for name in &names {
        let key = format!("graph.{name}");
        let list = match &graph[*name] {
            Value::Array(list) => list,
            other => {
                return Err(PartitionError::config(
                    key,
                    format!("expected an array of node names, got {}", describe(other)),
                ))
            }
        };
        let mut node_deps = Vec::with_capacity(list.len());
        for (position, dep) in list.iter().enumerate() {
            let Value::String(dep) = dep else {
                return Err(PartitionError::config(
                    format!("{key}[{position}]"),
                    format!("expected a node name, got {}", describe(dep)),
                ));
            };
            let Some(&dep_index) = index_of.get(dep.as_str()) else {
                return Err(PartitionError::config(
                    format!("{key}[{position}]"),
                    format!("unknown dependency {dep:?} (not a node of graph)"),
                ));
            };
            node_deps.push(dep_index);
        }
        node_deps.sort_unstable();
        node_deps.dedup();
        deps.push(node_deps);
    }

    let depths = depths(&deps).map_err(|cycle| cycle_error(&names, &cycle))?;
    let depth_max = depths.iter().copied().max().unwrap_or(0);
    check_shard_count("graph", depth_max as u64 + 1, shards_max)?;
    let mut levels: Vec<Vec<String>> = vec![Vec::new(); depth_max as usize + 1];
    for (index, depth) in depths.iter().enumerate() {
        levels[*depth as usize].push(names[index].to_owned());
    }
    Ok(levels
        .into_iter()
        .enumerate()
        .map(|(depth, nodes)| Partition {
            key: Some(Value::from(nodes.clone()).to_string().into_boxed_str()),
            input: PartitionInput::Nodes {
                // depth <= depth_max, which is a u32.
                depth: depth as u32,
                nodes,
            },
        })
        .collect())
}

/// Each node's depth, or the nodes of one cycle (as indices, in dependency
/// order, starting at the smallest index).
fn depths(deps: &[Vec<usize>]) -> Result<Vec<u32>, Vec<usize>> {
    let count = deps.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut unmet: Vec<usize> = deps.iter().map(Vec::len).collect();
    for (node, node_deps) in deps.iter().enumerate() {
        for &dep in node_deps {
            dependents[dep].push(node);
        }
    }
    let mut depth = vec![0u32; count];
    let mut ready: Vec<usize> = (0..count).filter(|&node| unmet[node] == 0).collect();
    let mut done = 0;
    while let Some(node) = ready.pop() {
        done += 1;
        for &dependent in &dependents[node] {
            // A depth is below the node count; a graph with 2^32 nodes
            // cannot come out of a JSON plan that fits in memory.
            depth[dependent] = depth[dependent].max(depth[node] + 1);
            unmet[dependent] -= 1;
            if unmet[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }
    if done == count {
        return Ok(depth);
    }
    // Every node left has an unmet dependency that is itself left, so
    // following left-over dependencies from any left-over node must close a
    // cycle.
    let start = (0..count)
        .find(|&node| unmet[node] > 0)
        .expect("a node is left");
    let mut position: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut node = start;
    while !position.contains_key(&node) {
        position.insert(node, path.len());
        path.push(node);
        node = *deps[node]
            .iter()
            .find(|&&dep| unmet[dep] > 0)
            .expect("a left-over node has a left-over dependency");
    }
    let mut cycle = path.split_off(position[&node]);
    let smallest = (0..cycle.len())
        .min_by_key(|&at| cycle[at])
        .expect("a cycle has nodes");
    cycle.rotate_left(smallest);
    Err(cycle)
}

fn cycle_error(names: &[&str], cycle: &[usize]) -> PartitionError {
    let mut spelled: Vec<&str> = cycle.iter().map(|&node| names[node]).collect();
    spelled.push(names[cycle[0]]);
    PartitionError::config(
        format!("graph.{}", names[cycle[0]]),
        format!("dependency cycle {}", spelled.join(" -> ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(value: Value) -> Result<Vec<Partition>, PartitionError> {
        partition(value.as_object().unwrap(), 1000)
    }

    fn levels(partitions: &[Partition]) -> Vec<(u32, Vec<String>)> {
        partitions
            .iter()
            .map(|partition| match &partition.input {
                PartitionInput::Nodes { depth, nodes } => (*depth, nodes.clone()),
                _ => unreachable!("by_dag_depth makes node lists"),
            })
            .collect()
    }

    fn owned(levels: &[(u32, &[&str])]) -> Vec<(u32, Vec<String>)> {
        levels
            .iter()
            .map(|(depth, nodes)| (*depth, nodes.iter().map(|node| node.to_string()).collect()))
            .collect()
    }

    #[test]
    fn one_shard_per_depth_with_sorted_nodes() {
        let graph = json!({"graph": {
            "deploy": ["build", "migrate"],
            "migrate": ["schema"],
            "build": [],
            "schema": [],
            "test": ["build", "build"],
            "announce": ["deploy", "schema"],
        }});
        let partitions = run(graph).unwrap();
        assert_eq!(
            levels(&partitions),
            owned(&[
                (0, &["build", "schema"]),
                (1, &["migrate", "test"]),
                (2, &["deploy"]),
                (3, &["announce"]),
            ])
        );
        assert_eq!(partitions[0].key.as_deref(), Some(r#"["build","schema"]"#));
    }

    #[test]
    fn partition_sets_chained() {
        let config = json!({"graph": {"a": [], "b": ["a"]}});
        let partitioning = super::super::partition(
            super::super::PartitionerKind::ByDagDepth,
            config.as_object().unwrap(),
            std::path::Path::new("."),
            10,
        )
        .unwrap();
        assert!(partitioning.chained);
        assert_eq!(partitioning.partitions.len(), 2);
    }

    #[test]
    fn output_ignores_key_order() {
        let forward = run(json!({"graph": {"a": [], "b": ["a"], "c": ["a"]}})).unwrap();
        let backward = run(json!({"graph": {"c": ["a"], "b": ["a"], "a": []}})).unwrap();
        assert_eq!(forward, backward);
    }

    #[test]
    fn long_chain_does_not_recurse() {
        let mut graph = serde_json::Map::new();
        graph.insert("n0".into(), json!([]));
        for index in 1..20_000 {
            graph.insert(format!("n{index}"), json!([format!("n{}", index - 1)]));
        }
        let config = json!({"graph": graph});
        let partitions = partition(config.as_object().unwrap(), 20_000).unwrap();
        assert_eq!(partitions.len(), 20_000);
        assert_eq!(
            levels(&partitions[19_999..]),
            owned(&[(19_999, &["n19999"])])
        );
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            (json!({}), "graph", "graph: required key is missing"),
            (
                json!({"graph": []}),
                "graph",
                "graph: expected an object of node to dependencies, got an array",
            ),
            (json!({"graph": {}}), "graph", "graph: has no nodes"),
            (
                json!({"graph": {"a": "b"}}),
                "graph.a",
                "graph.a: expected an array of node names, got \"b\"",
            ),
            (
                json!({"graph": {"a": [1]}}),
                "graph.a[0]",
                "graph.a[0]: expected a node name, got 1",
            ),
            (
                json!({"graph": {"a": [], "b": ["a", "zz"]}}),
                "graph.b[1]",
                "graph.b[1]: unknown dependency \"zz\" (not a node of graph)",
            ),
            (
                json!({"graph": {"a": ["a"]}}),
                "graph.a",
                "graph.a: dependency cycle a -> a",
            ),
            (
                json!({"graph": {"z": [], "d": ["c"], "c": ["b", "z"], "b": ["d"], "e": ["b"]}}),
                "graph.b",
                "graph.b: dependency cycle b -> d -> c -> b",
            ),
        ];
        for (config, key, message) in cases {
            let error = run(config).unwrap_err();
            assert_eq!(error.key(), key);
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn too_many_shards() {
        let config = json!({"graph": {"a": [], "b": ["a"], "c": ["b"]}});
        let error = partition(config.as_object().unwrap(), 2).unwrap_err();
        assert!(
            matches!(
                error,
                PartitionError::TooManyShards {
                    count: 3,
                    max: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.key(), "graph");
    }
}
