//! Call graphs in Graphviz DOT, as `/pyroscope/render?format=dot` answers
//! (in the manner of `go tool pprof -dot`): one node per function with its
//! flat (self) and cumulative values, edges from callers to callees, the
//! `max_nodes` functions with the largest cumulative values kept.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::tree::Tree;

/// The tree's call graph as DOT; `unit` names the values (`nanoseconds`,
/// `bytes`, ...). An empty tree gives an empty string.
pub fn to_dot(tree: &Tree, max_nodes: usize, unit: &str) -> String {
    let stacks = tree.stacks();
    if stacks.is_empty() {
        return String::new();
    }
    let total: i64 = stacks.iter().map(|(_, value)| value).sum();
    let mut flat: HashMap<&str, i64> = HashMap::new();
    let mut cumulative: HashMap<&str, i64> = HashMap::new();
    let mut edges: HashMap<(&str, &str), i64> = HashMap::new();
    for (frames, value) in &stacks {
        if let Some(leaf) = frames.last() {
            *flat.entry(leaf.as_str()).or_default() += value;
        }
        // A function counts once per stack, however often it recurses.
        let mut seen = HashSet::new();
        for frame in frames {
            if seen.insert(frame.as_str()) {
                *cumulative.entry(frame.as_str()).or_default() += value;
            }
        }
        let mut seen_edges = HashSet::new();
        for pair in frames.windows(2) {
            let edge = (pair[0].as_str(), pair[1].as_str());
            if seen_edges.insert(edge) {
                *edges.entry(edge).or_default() += value;
            }
        }
    }
    let mut nodes: Vec<(&str, i64)> = cumulative.iter().map(|(name, value)| (*name, *value)).collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if max_nodes != 0 {
        nodes.truncate(max_nodes);
    }
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, (name, _))| (*name, i + 1)).collect();
    let shown: i64 = nodes.iter().map(|(name, _)| flat.get(name).copied().unwrap_or(0)).sum();
    let percent = |value: i64| value as f64 * 100.0 / total.max(1) as f64;

    let mut out = String::new();
    let _ = writeln!(out, "digraph \"flamedb\" {{");
    let _ = writeln!(out, "node [style=filled fillcolor=\"#f8f8f8\"]");
    let _ = writeln!(
        out,
        "subgraph cluster_L {{ \"Legend\" [shape=box fontsize=16 label=\"Unit: {}\\lShowing nodes accounting for {shown}, {:.2}% of {total} total\\l\"] }}",
        escape(unit),
        percent(shown)
    );
    for (name, cum) in &nodes {
        let self_value = flat.get(name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "N{} [label=\"{}\\n{self_value} ({:.2}%)\\nof {cum} ({:.2}%)\" shape=box fontsize={:.0} tooltip=\"{} ({cum})\"]",
            index[name],
            escape(name),
            percent(self_value),
            percent(*cum),
            8.0 + 24.0 * percent(self_value) / 100.0,
            escape(name),
        );
    }
    let mut shown_edges: Vec<((&str, &str), i64)> = edges
        .into_iter()
        .filter(|((from, to), _)| index.contains_key(from) && index.contains_key(to))
        .collect();
    shown_edges.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for ((from, to), value) in shown_edges {
        let _ = writeln!(
            out,
            "N{} -> N{} [label=\" {value}\" weight={} penwidth={:.2}]",
            index[from],
            index[to],
            (percent(value).ceil() as i64).max(1),
            1.0 + 4.0 * percent(value) / 100.0,
        );
    }
    out.push_str("}\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dot_has_nodes_with_flat_and_cumulative_values_and_edges() {
        let mut tree = Tree::new();
        tree.insert(["main", "work"], 6);
        tree.insert(["main", "work", "work"], 2);
        tree.insert(["main", "idle"], 2);
        let dot = to_dot(&tree, 0, "nanoseconds");
        assert!(dot.starts_with("digraph \"flamedb\" {"), "{dot}");
        assert!(dot.ends_with("}\n"));
        // main: cum 10; work: flat 8, cum 8 (recursion counted once).
        assert!(
            dot.contains("N1 [label=\"main\\n0 (0.00%)\\nof 10 (100.00%)\""),
            "{dot}"
        );
        assert!(dot.contains("N2 [label=\"work\\n8 (80.00%)\\nof 8 (80.00%)\""), "{dot}");
        assert!(dot.contains("N1 -> N2 [label=\" 8\""), "{dot}");
        assert!(dot.contains("N2 -> N2 [label=\" 2\""), "{dot}");
        // Two nodes kept: idle (cum 2) goes, and its edge with it.
        let small = to_dot(&tree, 2, "nanoseconds");
        assert!(!small.contains("idle"), "{small}");
        assert_eq!(to_dot(&Tree::new(), 10, "bytes"), "");
    }
}
