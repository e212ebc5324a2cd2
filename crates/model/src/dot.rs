//! Call graphs in Graphviz DOT, as `/pyroscope/render?format=dot` answers
//! (in the manner of `go tool pprof -dot`): one node per function with its
//! flat (self) and cumulative values, edges from callers to callees, the
//! `max_nodes` functions with the largest cumulative values kept.

use std::collections::HashMap;
use std::fmt::Write;

use crate::tree::Tree;

/// The tree's call graph as DOT; `unit` names the values (`nanoseconds`,
/// `bytes`, ...). An empty tree gives an empty string.
pub fn to_dot(tree: &Tree, max_nodes: usize, unit: &str) -> String {
    // One walk over the tree, no recursion and no per-stack copies: a
    // function's cumulative value is the total of its outermost nodes (a
    // stack counts once however often it recurses), an edge's likewise.
    let mut total = 0i64;
    let mut any_stack = false;
    let mut flat: HashMap<u32, i64> = HashMap::new();
    let mut cumulative: HashMap<u32, i64> = HashMap::new();
    let mut edges: HashMap<(u32, u32), i64> = HashMap::new();
    // The names on the path from the root, and how often each name and
    // edge occurs on it.
    let mut path: Vec<u32> = Vec::new();
    let mut names_on_path: HashMap<u32, usize> = HashMap::new();
    let mut edges_on_path: HashMap<(u32, u32), usize> = HashMap::new();
    let leave = |count: Option<&mut usize>| {
        if let Some(count) = count {
            *count -= 1;
        }
    };
    for (node, depth) in tree.depth_first() {
        while path.len() >= depth {
            let Some(name) = path.pop() else { break };
            leave(names_on_path.get_mut(&name));
            if let Some(&parent) = path.last() {
                leave(edges_on_path.get_mut(&(parent, name)));
            }
        }
        let (name, node_total, self_value) = tree.node_values(node);
        if self_value != 0 {
            any_stack = true;
            total = total.saturating_add(self_value);
            let flat = flat.entry(name).or_default();
            *flat = flat.saturating_add(self_value);
        }
        let on_path = names_on_path.entry(name).or_default();
        if *on_path == 0 {
            let cumulative = cumulative.entry(name).or_default();
            *cumulative = cumulative.saturating_add(node_total);
        }
        *on_path += 1;
        if let Some(&parent) = path.last() {
            let on_path = edges_on_path.entry((parent, name)).or_default();
            if *on_path == 0 {
                let edge = edges.entry((parent, name)).or_default();
                *edge = edge.saturating_add(node_total);
            }
            *on_path += 1;
        }
        path.push(name);
    }
    if !any_stack {
        return String::new();
    }
    let flat: HashMap<&str, i64> = flat.into_iter().map(|(name, value)| (tree.name(name), value)).collect();
    let cumulative: HashMap<&str, i64> = cumulative
        .into_iter()
        .map(|(name, value)| (tree.name(name), value))
        .collect();
    let edges: HashMap<(&str, &str), i64> = edges
        .into_iter()
        .map(|((from, to), value)| ((tree.name(from), tree.name(to)), value))
        .collect();
    let mut nodes: Vec<(&str, i64)> = cumulative.iter().map(|(name, value)| (*name, *value)).collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if max_nodes != 0 {
        nodes.truncate(max_nodes);
    }
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, (name, _))| (*name, i + 1)).collect();
    let shown = nodes
        .iter()
        .map(|(name, _)| flat.get(name).copied().unwrap_or(0))
        .fold(0i64, i64::saturating_add);
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
        tree.insert(["main", "work"], 6).unwrap();
        tree.insert(["main", "work", "work"], 2).unwrap();
        tree.insert(["main", "idle"], 2).unwrap();
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
