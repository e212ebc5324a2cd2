//! Call trees by function name: what a merge of profiles produces and what
//! flame graphs are drawn from. Stacks are inserted root first; a node's
//! `self` is the value of stacks ending there, its total the sum below it.
//!
//! A tree made [`Tree::within`] a query's budget charges what it grows by
//! (an upper bound of its nodes and names) before it grows, and so do its
//! copies, truncations, encodings, flame graphs and pprof exports: past
//! the budget the query fails whole. (DOT is drawn from a truncated tree,
//! its size bounded by the node limit.)
//!
//! The wire form is Pyroscope's tree bytes: a depth-first walk from a
//! virtual root (empty name, self 0), each node written as
//! `uvarint(len(name)) · name · uvarint(self) · uvarint(child count)`,
//! children in reverse name order; with a node limit, nodes whose total is
//! below the limit's cut-off fold into a child named `other`. Between
//! flamedb's own components a tree travels as a [`CompactTree`]: each name
//! once, nodes by name index.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use prost::encoding::{decode_varint, encode_varint};

use crate::budget::{BudgetError, RequestBudget, allocation_size, reserve_charged};

/// The name truncated nodes fold into.
pub const OTHER: &str = "other";

/// The longest a varint can be.
const MAX_VARINT_BYTES: usize = 10;

/// What a tree's growth is charged as.
const TREE: &str = "the query's call trees";

#[derive(Debug, Clone, Default, PartialEq)]
struct Node {
    name: u32,
    /// The parent's index, always smaller than the node's own (nodes are
    /// only ever appended); the root is its own parent.
    parent: u32,
    self_value: i64,
    total: i64,
    children: Vec<u32>,
}

/// What one more node takes at most: its `Node` and its entry in the child
/// index, both twice (collections grow by doubling), and its parent's
/// child list (at least 4 slots once it has one child).
const NODE_BYTES: usize = 2 * size_of::<Node>() + 16 + 2 * (size_of::<((u32, u32), u32)>() + 1) * 8 / 7 + 1;

/// What one more name of `len` bytes takes at most: two copies (the name
/// list and the index), their slots, twice.
fn name_bytes(len: usize) -> usize {
    2 * allocation_size(len) + 2 * size_of::<String>() + 2 * (size_of::<(String, u32)>() + 1) * 8 / 7 + 1
}

/// A call tree. Node 0 is the root (no name).
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    names: Vec<String>,
    name_index: HashMap<String, u32>,
    child_index: HashMap<(u32, u32), u32>,
    /// What growth is charged to; none: no limit.
    budget: Option<Arc<RequestBudget>>,
    /// Bytes charged for the tree so far (an upper bound of its memory).
    charged: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Tree bytes (or a compact tree) that could not be read, or that would
/// pass the budget of the tree read into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeDecodeError {
    #[error("invalid tree bytes at offset {offset}: {message}")]
    Invalid { offset: usize, message: &'static str },
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// A tree with each name once, as ingesters send merged trees to queriers:
/// `names`, and for each node, depth first from the root,
/// `uvarint(name index) · uvarint(self) · uvarint(child count)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactTree {
    pub names: Vec<String>,
    pub nodes: Vec<u8>,
}

impl Tree {
    /// A tree without a memory limit: for ingest paths that charge their
    /// own budgets, tools and tests.
    pub fn new() -> Self {
        let mut tree = Self {
            nodes: vec![Node::default()],
            names: vec![String::new()],
            name_index: HashMap::new(),
            child_index: HashMap::new(),
            budget: None,
            charged: 0,
        };
        tree.name_index.insert(String::new(), 0);
        tree
    }

    /// An empty tree whose growth is charged to `budget` (and given back
    /// when the tree is dropped).
    pub fn within(budget: Arc<RequestBudget>) -> Self {
        let mut tree = Self::new();
        tree.budget = Some(budget);
        tree
    }

    /// An empty tree charged to the same budget as this one.
    fn sibling(&self) -> Self {
        let mut tree = Self::new();
        tree.budget = self.budget.clone();
        tree
    }

    fn charge(&mut self, bytes: usize, what: &'static str) -> Result<(), BudgetError> {
        if let Some(budget) = &self.budget {
            budget.charge(bytes, what)?;
        }
        self.charged = self.charged.saturating_add(bytes);
        Ok(())
    }

    /// The index of `name` among the tree's names, added if new: for
    /// [`Tree::insert_interned`], so a name is hashed once, not once per
    /// frame (names can be 64 KiB long).
    pub fn intern(&mut self, name: &str) -> Result<u32, BudgetError> {
        if let Some(&index) = self.name_index.get(name) {
            return Ok(index);
        }
        self.charge(name_bytes(name.len()), TREE)?;
        let index = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.name_index.insert(name.to_owned(), index);
        Ok(index)
    }

    fn child(&mut self, parent: u32, name: &str) -> Result<u32, BudgetError> {
        let name = self.intern(name)?;
        self.child_with_name(parent, name)
    }

    /// The child of `parent` with the interned name `name`, added if new.
    fn child_with_name(&mut self, parent: u32, name: u32) -> Result<u32, BudgetError> {
        if let Some(&child) = self.child_index.get(&(parent, name)) {
            return Ok(child);
        }
        self.charge(NODE_BYTES, TREE)?;
        let child = self.nodes.len() as u32;
        self.nodes.push(Node {
            name,
            parent,
            ..Node::default()
        });
        self.nodes[parent as usize].children.push(child);
        self.child_index.insert((parent, name), child);
        Ok(child)
    }

    /// Adds `value` to the stack `frames` (root first).
    pub fn insert<'a>(&mut self, frames: impl IntoIterator<Item = &'a str>, value: i64) -> Result<(), BudgetError> {
        let names: Vec<u32> = frames
            .into_iter()
            .map(|frame| self.intern(frame))
            .collect::<Result<_, _>>()?;
        self.insert_interned(names, value)
    }

    /// Adds `value` to the stack of interned `names` (root first; see
    /// [`Tree::intern`]). Sums saturate: a crafted profile can hold values
    /// that would overflow `i64`. Past the budget the tree keeps the part
    /// of the stack added so far: callers drop a tree that failed.
    pub fn insert_interned(&mut self, names: impl IntoIterator<Item = u32>, value: i64) -> Result<(), BudgetError> {
        let mut node = 0;
        self.nodes[0].total = self.nodes[0].total.saturating_add(value);
        for name in names {
            node = self.child_with_name(node, name)?;
            let current = &mut self.nodes[node as usize];
            current.total = current.total.saturating_add(value);
        }
        let current = &mut self.nodes[node as usize];
        current.self_value = current.self_value.saturating_add(value);
        Ok(())
    }

    /// Adds every stack of `other` to this tree. Iterative: trees can be as
    /// deep as stored data makes them; each of `other`'s names is looked up
    /// once, not once per node.
    pub fn merge(&mut self, other: &Tree) -> Result<(), BudgetError> {
        let mut names: Vec<Option<u32>> = vec![None; other.names.len()];
        // (node here, node of `other`) whose values and children are due.
        let mut pending = vec![(0u32, 0u32)];
        while let Some((into, from)) = pending.pop() {
            let source = &other.nodes[from as usize];
            let node = &mut self.nodes[into as usize];
            node.total = node.total.saturating_add(source.total);
            node.self_value = node.self_value.saturating_add(source.self_value);
            for &child in &source.children {
                let other_name = other.nodes[child as usize].name;
                let name = match names[other_name as usize] {
                    Some(name) => name,
                    None => {
                        let name = self.intern(&other.names[other_name as usize])?;
                        names[other_name as usize] = Some(name);
                        name
                    }
                };
                let target = self.child_with_name(into, name)?;
                pending.push((target, child));
            }
        }
        Ok(())
    }

    /// A copy charged to the same budget.
    pub fn try_clone(&self) -> Result<Tree, BudgetError> {
        if let Some(budget) = &self.budget {
            budget.charge(self.charged, TREE)?;
        }
        Ok(Self {
            nodes: self.nodes.clone(),
            names: self.names.clone(),
            name_index: self.name_index.clone(),
            child_index: self.child_index.clone(),
            budget: self.budget.clone(),
            charged: self.charged,
        })
    }

    /// The sum of all values.
    pub fn total(&self) -> i64 {
        self.nodes[0].total
    }

    /// Nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The stacks of the tree (root first) with their self values, in
    /// name order; for tests and exports.
    pub fn stacks(&self) -> Vec<(Vec<String>, i64)> {
        let mut out = Vec::new();
        self.for_each_stack(|path, self_value| {
            out.push((path.iter().map(|name| (*name).to_owned()).collect(), self_value));
        });
        out
    }

    /// Calls `visit` with each stack that has a self value (root first),
    /// depth first with children in name order. Iterative, with one path
    /// buffer for the whole walk.
    fn for_each_stack<'a>(&'a self, mut visit: impl FnMut(&[&'a str], i64)) {
        let mut path: Vec<&str> = Vec::new();
        for (node, depth) in self.depth_first() {
            path.truncate(depth - 1);
            path.push(self.name_of(node));
            let self_value = self.nodes[node as usize].self_value;
            if self_value != 0 {
                visit(&path, self_value);
            }
        }
    }

    /// Every node but the root with its depth (the root's children are at
    /// depth 1), in pre-order with children in name order.
    pub(crate) fn depth_first(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        let ranks = self.name_ranks();
        let mut stack: Vec<(u32, usize)> = Vec::new();
        stack.extend(
            self.sorted_children(0, &ranks)
                .into_iter()
                .rev()
                .map(|child| (child, 1)),
        );
        std::iter::from_fn(move || {
            let (node, depth) = stack.pop()?;
            stack.extend(
                self.sorted_children(node, &ranks)
                    .into_iter()
                    .rev()
                    .map(|child| (child, depth + 1)),
            );
            Some((node, depth))
        })
    }

    /// A node's name index (see [`Tree::name`]), total and self value.
    pub(crate) fn node_values(&self, node: u32) -> (u32, i64, i64) {
        let node = &self.nodes[node as usize];
        (node.name, node.total, node.self_value)
    }

    /// The name with index `name`.
    pub(crate) fn name(&self, name: u32) -> &str {
        &self.names[name as usize]
    }

    /// Each name's place in name order: children are sorted by these, so
    /// names (up to 64 KiB each) are compared once per distinct pair, not
    /// once per node.
    fn name_ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut ranks = vec![0u32; self.names.len()];
        for (rank, name) in order.into_iter().enumerate() {
            ranks[name as usize] = rank as u32;
        }
        ranks
    }

    /// The children of `node` in name order (`ranks` from
    /// [`Tree::name_ranks`]).
    fn sorted_children(&self, node: u32, ranks: &[u32]) -> Vec<u32> {
        let mut children = self.nodes[node as usize].children.clone();
        children.sort_unstable_by_key(|child| ranks[self.nodes[*child as usize].name as usize]);
        children
    }

    fn name_of(&self, node: u32) -> &str {
        &self.names[self.nodes[node as usize].name as usize]
    }

    /// The smallest total a node may have to be kept with `max_nodes`
    /// (0 = keep everything): the `max_nodes`-th largest total.
    fn cutoff(&self, max_nodes: usize) -> i64 {
        if max_nodes == 0 || self.nodes.len() - 1 <= max_nodes {
            return i64::MIN;
        }
        let mut totals: Vec<i64> = self.nodes[1..].iter().map(|node| node.total).collect();
        let at = max_nodes - 1;
        totals.select_nth_unstable_by(at, |a, b| b.cmp(a));
        totals[at]
    }

    /// Walks the tree as [`Tree::encode`] writes it: each kept node (or a
    /// folded `other` with its value, name `None`) with its name, self value
    /// and the number of children written after it.
    fn walk_kept(
        &self,
        max_nodes: usize,
        mut visit: impl FnMut(Option<u32>, i64, usize) -> Result<(), BudgetError>,
    ) -> Result<(), BudgetError> {
        let cutoff = self.cutoff(max_nodes);
        let ranks = self.name_ranks();
        // (node, or a folded `other` with its value)
        enum Item {
            Node(u32),
            Other(i64),
        }
        let mut stack = vec![Item::Node(0)];
        while let Some(item) = stack.pop() {
            match item {
                Item::Other(value) => visit(None, value, 0)?,
                Item::Node(node) => {
                    let current = &self.nodes[node as usize];
                    let mut kept = Vec::new();
                    let mut folded = 0i64;
                    for child in self.sorted_children(node, &ranks) {
                        if self.nodes[child as usize].total >= cutoff {
                            kept.push(child);
                        } else {
                            folded = folded.saturating_add(self.nodes[child as usize].total);
                        }
                    }
                    visit(
                        Some(current.name),
                        current.self_value,
                        kept.len() + usize::from(folded != 0),
                    )?;
                    // Pushed in name order, so popped (written) in reverse.
                    for child in kept {
                        stack.push(Item::Node(child));
                    }
                    if folded != 0 {
                        stack.push(Item::Other(folded));
                    }
                }
            }
        }
        Ok(())
    }

    /// Pyroscope's tree bytes, keeping at most about `max_nodes` nodes
    /// (0: all); the rest fold into `other` children. Each node repeats
    /// its name, so the bytes are charged as they grow.
    pub fn encode(&self, max_nodes: usize) -> Result<Vec<u8>, BudgetError> {
        let mut out = Vec::new();
        self.walk_kept(max_nodes, |name, self_value, children| {
            let name = name.map_or(OTHER, |name| self.names[name as usize].as_str());
            reserve_charged(
                &mut out,
                name.len() + 3 * MAX_VARINT_BYTES,
                usize::MAX,
                self.budget.as_deref(),
                "the tree bytes of the answer",
            )?;
            write_node(&mut out, name, self_value.max(0) as u64, children as u64);
            Ok(())
        })?;
        Ok(out)
    }

    /// A copy keeping at most about `max_nodes` nodes (0: all), the rest
    /// folded into `other` as [`Tree::encode`] folds them; charged to the
    /// same budget.
    pub fn truncated(&self, max_nodes: usize) -> Result<Tree, BudgetError> {
        let mut tree = self.sibling();
        let mut names: Vec<Option<u32>> = vec![None; self.names.len()];
        // (node of the copy, children still to come) along the current path.
        let mut open: Vec<(u32, usize)> = Vec::new();
        self.walk_kept(max_nodes, |name, self_value, children| {
            let node = match open.last_mut() {
                None => 0,
                Some((parent, remaining)) => {
                    *remaining -= 1;
                    let parent = *parent;
                    let name = match name {
                        Some(name) => match names[name as usize] {
                            Some(interned) => interned,
                            None => {
                                let interned = tree.intern(&self.names[name as usize])?;
                                names[name as usize] = Some(interned);
                                interned
                            }
                        },
                        None => tree.intern(OTHER)?,
                    };
                    tree.child_with_name(parent, name)?
                }
            };
            let current = &mut tree.nodes[node as usize];
            current.self_value = current.self_value.saturating_add(self_value);
            open.push((node, children));
            while open.last().is_some_and(|(_, remaining)| *remaining == 0) {
                open.pop();
            }
            Ok(())
        })?;
        tree.compute_totals();
        Ok(tree)
    }

    /// Reads Pyroscope's tree bytes into a tree without a memory limit.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeDecodeError> {
        Self::new().read(bytes)
    }

    /// Reads Pyroscope's tree bytes into a tree charged to `budget`.
    pub fn decode_within(bytes: &[u8], budget: Arc<RequestBudget>) -> Result<Self, TreeDecodeError> {
        Self::within(budget).read(bytes)
    }

    /// Reads tree bytes into this empty tree.
    fn read(mut self, bytes: &[u8]) -> Result<Self, TreeDecodeError> {
        let mut input = bytes;
        let offset = |input: &[u8]| bytes.len() - input.len();
        let error = |input: &[u8], message| TreeDecodeError::Invalid {
            offset: offset(input),
            message,
        };
        let mut nodes = NodeReader::default();
        while !input.is_empty() || nodes.first {
            let name_length = decode_varint(&mut input).map_err(|_| error(input, "bad name length"))? as usize;
            if input.len() < name_length {
                return Err(error(input, "name runs past the end"));
            }
            let name = std::str::from_utf8(&input[..name_length]).map_err(|_| error(input, "name is not UTF-8"))?;
            input = &input[name_length..];
            let self_value = decode_varint(&mut input).map_err(|_| error(input, "bad self value"))?;
            let children = decode_varint(&mut input).map_err(|_| error(input, "bad child count"))?;
            let self_value = i64::try_from(self_value).map_err(|_| error(input, "self value too large"))?;
            let parent = nodes.parent().map_err(|message| error(input, message))?;
            let node = match parent {
                None => 0,
                Some(parent) => self.child(parent, name)?,
            };
            if nodes.add(&mut self, node, self_value, children) {
                break;
            }
        }
        if !nodes.open.is_empty() {
            return Err(error(input, "tree ends before all children"));
        }
        if !input.is_empty() {
            return Err(error(input, "bytes after the tree"));
        }
        self.compute_totals();
        Ok(self)
    }

    /// The tree with each name once (see [`CompactTree`]); children in no
    /// particular order. The nodes' bytes are charged as they grow; the
    /// names move into the answer, and their charge is given back with the
    /// rest of the tree's (the answer is sent at once).
    pub fn into_compact(mut self) -> Result<CompactTree, BudgetError> {
        let mut out = Vec::new();
        let mut stack = vec![0u32];
        while let Some(node) = stack.pop() {
            let current = &self.nodes[node as usize];
            reserve_charged(
                &mut out,
                3 * MAX_VARINT_BYTES,
                usize::MAX,
                self.budget.as_deref(),
                "the merged call tree sent to the querier",
            )?;
            encode_varint(u64::from(current.name), &mut out);
            encode_varint(current.self_value.max(0) as u64, &mut out);
            encode_varint(current.children.len() as u64, &mut out);
            stack.extend(current.children.iter().rev());
        }
        Ok(CompactTree {
            names: std::mem::take(&mut self.names),
            nodes: out,
        })
    }

    /// Reads a [`CompactTree`] into a tree charged to `budget`.
    pub fn decode_compact_within(compact: &CompactTree, budget: Arc<RequestBudget>) -> Result<Self, TreeDecodeError> {
        let mut tree = Self::within(budget);
        let names: Vec<u32> = compact
            .names
            .iter()
            .map(|name| tree.intern(name))
            .collect::<Result<_, _>>()?;
        let bytes = compact.nodes.as_slice();
        let mut input = bytes;
        let error = |input: &[u8], message| TreeDecodeError::Invalid {
            offset: bytes.len() - input.len(),
            message,
        };
        let mut nodes = NodeReader::default();
        while !input.is_empty() || nodes.first {
            let name = decode_varint(&mut input).map_err(|_| error(input, "bad name index"))?;
            let self_value = decode_varint(&mut input).map_err(|_| error(input, "bad self value"))?;
            let children = decode_varint(&mut input).map_err(|_| error(input, "bad child count"))?;
            let self_value = i64::try_from(self_value).map_err(|_| error(input, "self value too large"))?;
            let parent = nodes.parent().map_err(|message| error(input, message))?;
            let node = match parent {
                None => 0,
                Some(parent) => {
                    let name = usize::try_from(name)
                        .ok()
                        .and_then(|name| names.get(name))
                        .ok_or_else(|| error(input, "name index out of range"))?;
                    tree.child_with_name(parent, *name)?
                }
            };
            if nodes.add(&mut tree, node, self_value, children) {
                break;
            }
        }
        if !nodes.open.is_empty() || !input.is_empty() {
            return Err(error(input, "tree ends before all children or runs past its root"));
        }
        tree.compute_totals();
        Ok(tree)
    }

    /// Sets every total from the self values, children before parents
    /// (a child's index is always above its parent's): no recursion on
    /// depth.
    fn compute_totals(&mut self) {
        for node in &mut self.nodes {
            node.total = node.self_value;
        }
        for index in (1..self.nodes.len()).rev() {
            let Node { total, parent, .. } = self.nodes[index];
            let parent = &mut self.nodes[parent as usize];
            parent.total = parent.total.saturating_add(total);
        }
    }
}

/// A flame graph in Pyroscope's flamebearer layout: `names[0]` is
/// `"total"`, and each level is a flat list of `[x delta, total, self,
/// name index]` per node, left to right. A node's self value takes the
/// left part of its span, its children follow in name order, then `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlameGraph {
    pub names: Vec<String>,
    pub levels: Vec<Vec<i64>>,
    pub total: i64,
    pub max_self: i64,
}

impl Tree {
    /// Charges what an answer built from this tree is about to allocate.
    fn charge_answer(&self, bytes: usize) -> Result<(), BudgetError> {
        match &self.budget {
            Some(budget) => budget.charge(bytes, "the flame graph of the answer"),
            None => Ok(()),
        }
    }

    /// The flame graph of the tree, keeping at most about `max_nodes`
    /// nodes (0: all); the rest fold into `other` children.
    pub fn flame_graph(&self, max_nodes: usize) -> Result<FlameGraph, BudgetError> {
        enum Item {
            Node(u32),
            Other(i64),
        }
        let cutoff = self.cutoff(max_nodes);
        let ranks = self.name_ranks();
        let mut graph = FlameGraph {
            names: vec!["total".to_owned()],
            total: self.total(),
            ..FlameGraph::default()
        };
        let mut name_index: HashMap<u32, i64> = HashMap::new();
        let mut other_index = None;
        // Absolute x of each level's last node end, for the deltas.
        let mut level_ends: Vec<i64> = Vec::new();
        let mut stack = vec![(Item::Node(0), 0usize, 0i64)];
        while let Some((item, depth, x)) = stack.pop() {
            if graph.levels.len() <= depth {
                graph.levels.push(Vec::new());
                level_ends.push(0);
            }
            let (total, self_value, name) = match item {
                Item::Other(value) => {
                    let index = *other_index.get_or_insert_with(|| {
                        graph.names.push(OTHER.to_owned());
                        graph.names.len() as i64 - 1
                    });
                    (value, value, index)
                }
                Item::Node(node) => {
                    let current = &self.nodes[node as usize];
                    let index = if node == 0 {
                        0
                    } else if let Some(&index) = name_index.get(&current.name) {
                        index
                    } else {
                        let name = &self.names[current.name as usize];
                        self.charge_answer(name_bytes(name.len()))?;
                        graph.names.push(name.clone());
                        name_index.insert(current.name, graph.names.len() as i64 - 1);
                        graph.names.len() as i64 - 1
                    };
                    let mut children = Vec::new();
                    let mut folded = 0i64;
                    let mut child_x = x.saturating_add(current.self_value);
                    for child in self.sorted_children(node, &ranks) {
                        let child_total = self.nodes[child as usize].total;
                        if child_total >= cutoff {
                            children.push((Item::Node(child), depth + 1, child_x));
                            child_x = child_x.saturating_add(child_total);
                        } else {
                            folded = folded.saturating_add(child_total);
                        }
                    }
                    if folded != 0 {
                        children.push((Item::Other(folded), depth + 1, child_x));
                    }
                    // Popped left to right, so each level fills in x order.
                    stack.extend(children.into_iter().rev());
                    (current.total, current.self_value, index)
                }
            };
            // Four numbers, twice (levels grow by doubling).
            self.charge_answer(2 * 4 * size_of::<i64>())?;
            graph.max_self = graph.max_self.max(self_value);
            graph.levels[depth].extend([x.saturating_sub(level_ends[depth]), total, self_value, name]);
            level_ends[depth] = x.saturating_add(total);
        }
        Ok(graph)
    }
}

/// Two flame graphs side by side (Pyroscope's diff layout): per node
/// `[x left, total left, self left, x right, total right, self right,
/// name index]`, both x columns delta-encoded per level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlameGraphDiff {
    pub names: Vec<String>,
    pub levels: Vec<Vec<i64>>,
    pub total: i64,
    pub max_self: i64,
    pub left_ticks: i64,
    pub right_ticks: i64,
}

impl Tree {
    /// The diff flame graph of `left` and `right`: the union of their
    /// stacks, each node with both sides' values. Nodes whose combined
    /// total (left + right) is below the `max_nodes`-th largest fold into
    /// `other` (0: keep all); Pyroscope ranks by the larger side instead.
    pub fn flame_graph_diff(left: &Tree, right: &Tree, max_nodes: usize) -> Result<FlameGraphDiff, BudgetError> {
        // The union tree decides the shape (and what folds); each side's
        // values are looked up by path.
        let mut union = left.try_clone()?;
        union.merge(right)?;
        let cutoff = union.cutoff(max_nodes);
        let ranks = union.name_ranks();
        // The union's names as each side numbers them: the left's are the
        // same (the union is its copy, names only appended); the right's
        // are looked up once per name.
        let on_left = |name: u32| ((name as usize) < left.names.len()).then_some(name);
        let on_right: Vec<Option<u32>> = union
            .names
            .iter()
            .map(|name| right.name_index.get(name.as_str()).copied())
            .collect();
        let mut graph = FlameGraphDiff {
            names: vec!["total".to_owned()],
            left_ticks: left.total(),
            right_ticks: right.total(),
            total: left.total().saturating_add(right.total()),
            ..FlameGraphDiff::default()
        };
        let mut name_index: HashMap<u32, i64> = HashMap::new();
        let mut other_index = None;
        let mut level_ends: Vec<(i64, i64)> = Vec::new();
        // (union node or folded (left, right)), depth, x left, x right,
        // the node on each side (None: absent there).
        enum Item {
            Node(u32, Option<u32>, Option<u32>),
            Other(i64, i64),
        }
        let side = |tree: &Tree, node: Option<u32>| -> (i64, i64) {
            node.map_or((0, 0), |node| {
                let node = &tree.nodes[node as usize];
                (node.total, node.self_value)
            })
        };
        let mut stack = vec![(Item::Node(0, Some(0), Some(0)), 0usize, 0i64, 0i64)];
        while let Some((item, depth, x_left, x_right)) = stack.pop() {
            if graph.levels.len() <= depth {
                graph.levels.push(Vec::new());
                level_ends.push((0, 0));
            }
            let (left_values, right_values, name) = match item {
                Item::Other(l, r) => {
                    let index = *other_index.get_or_insert_with(|| {
                        graph.names.push(OTHER.to_owned());
                        graph.names.len() as i64 - 1
                    });
                    ((l, l), (r, r), index)
                }
                Item::Node(node, in_left, in_right) => {
                    let current = &union.nodes[node as usize];
                    let index = if node == 0 {
                        0
                    } else if let Some(&index) = name_index.get(&current.name) {
                        index
                    } else {
                        let name = &union.names[current.name as usize];
                        union.charge_answer(name_bytes(name.len()))?;
                        graph.names.push(name.clone());
                        name_index.insert(current.name, graph.names.len() as i64 - 1);
                        graph.names.len() as i64 - 1
                    };
                    let (left_values, right_values) = (side(left, in_left), side(right, in_right));
                    let mut children = Vec::new();
                    let (mut folded_left, mut folded_right) = (0i64, 0i64);
                    let mut child_x = (
                        x_left.saturating_add(left_values.1),
                        x_right.saturating_add(right_values.1),
                    );
                    for child in union.sorted_children(node, &ranks) {
                        let name = union.nodes[child as usize].name;
                        let child_left = in_left
                            .zip(on_left(name))
                            .and_then(|(parent, name)| left.child_id(parent, name));
                        let child_right = in_right
                            .zip(on_right[name as usize])
                            .and_then(|(parent, name)| right.child_id(parent, name));
                        let (l, r) = (side(left, child_left).0, side(right, child_right).0);
                        if union.nodes[child as usize].total >= cutoff {
                            children.push((
                                Item::Node(child, child_left, child_right),
                                depth + 1,
                                child_x.0,
                                child_x.1,
                            ));
                            child_x = (child_x.0.saturating_add(l), child_x.1.saturating_add(r));
                        } else {
                            folded_left = folded_left.saturating_add(l);
                            folded_right = folded_right.saturating_add(r);
                        }
                    }
                    if folded_left != 0 || folded_right != 0 {
                        children.push((Item::Other(folded_left, folded_right), depth + 1, child_x.0, child_x.1));
                    }
                    stack.extend(children.into_iter().rev());
                    (left_values, right_values, index)
                }
            };
            // Seven numbers, twice (levels grow by doubling).
            union.charge_answer(2 * 7 * size_of::<i64>())?;
            graph.max_self = graph.max_self.max(left_values.1).max(right_values.1);
            let (end_left, end_right) = level_ends[depth];
            graph.levels[depth].extend([
                x_left.saturating_sub(end_left),
                left_values.0,
                left_values.1,
                x_right.saturating_sub(end_right),
                right_values.0,
                right_values.1,
                name,
            ]);
            level_ends[depth] = (
                x_left.saturating_add(left_values.0),
                x_right.saturating_add(right_values.0),
            );
        }
        Ok(graph)
    }

    /// The child of `parent` with the interned name `name`, if any.
    fn child_id(&self, parent: u32, name: u32) -> Option<u32> {
        self.child_index.get(&(parent, name)).copied()
    }

    /// The tree as a pprof profile of `profile_type`: one function and one
    /// location per frame name, one sample per stack (its self value),
    /// charged to the tree's budget (each sample lists its whole stack).
    pub fn to_pprof(
        &self,
        profile_type: &crate::ProfileType,
        time_nanos: i64,
        duration_nanos: i64,
    ) -> Result<crate::pprof::Profile, BudgetError> {
        let mut builder = crate::pprof::StackProfileBuilder::new(&profile_type.sample_type, &profile_type.sample_unit)
            .time(time_nanos, duration_nanos);
        if let Some(budget) = &self.budget {
            builder = builder.within(Arc::clone(budget));
        }
        if !profile_type.period_type.is_empty() || !profile_type.period_unit.is_empty() {
            builder = builder.period(&profile_type.period_type, &profile_type.period_unit, 1);
        }
        self.for_each_stack(|path, self_value| builder.add(path.iter().copied(), self_value));
        builder.finish()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.charged);
        }
    }
}

/// Where the next node of a depth-first node list goes: the nodes whose
/// children are still being read.
struct NodeReader {
    first: bool,
    /// (node, children still to read)
    open: Vec<(u32, u64)>,
}

impl Default for NodeReader {
    fn default() -> Self {
        Self {
            first: true,
            open: Vec::new(),
        }
    }
}

impl NodeReader {
    /// The parent of the next node (`None`: it is the root).
    fn parent(&mut self) -> Result<Option<u32>, &'static str> {
        if self.first {
            self.first = false;
            return Ok(None);
        }
        let Some((parent, remaining)) = self.open.last_mut() else {
            return Err("node outside the tree");
        };
        *remaining -= 1;
        Ok(Some(*parent))
    }

    /// Adds `self_value` to `node`, which has `children` to come; true once
    /// the root's last child is read.
    fn add(&mut self, tree: &mut Tree, node: u32, self_value: i64, children: u64) -> bool {
        let current = &mut tree.nodes[node as usize];
        current.self_value = current.self_value.saturating_add(self_value);
        self.open.push((node, children));
        while self.open.last().is_some_and(|(_, remaining)| *remaining == 0) {
            self.open.pop();
        }
        self.open.is_empty()
    }
}

fn write_node(out: &mut Vec<u8>, name: &str, self_value: u64, children: u64) {
    encode_varint(name.len() as u64, out);
    out.extend_from_slice(name.as_bytes());
    encode_varint(self_value, out);
    encode_varint(children, out);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tree(stacks: &[(&[&str], i64)]) -> Tree {
        let mut tree = Tree::new();
        for (frames, value) in stacks {
            tree.insert(frames.iter().copied(), *value).unwrap();
        }
        tree
    }

    #[test]
    fn test_insert_sums_and_keeps_self_values() {
        let tree = tree(&[
            (&["main", "work"], 3),
            (&["main", "work"], 2),
            (&["main"], 1),
            (&["idle"], 4),
        ]);
        assert_eq!(tree.total(), 10);
        assert_eq!(
            tree.stacks(),
            [
                (vec!["idle".to_owned()], 4),
                (vec!["main".to_owned()], 1),
                (vec!["main".to_owned(), "work".to_owned()], 5)
            ]
        );
    }

    #[test]
    fn test_tree_bytes_layout() {
        let tree = tree(&[(&["a", "b"], 2), (&["a", "c"], 3)]);
        let bytes = tree.encode(0).unwrap();
        // root("", 0, 1 child) → a(0, 2 children) → c(3, 0) then b(2, 0):
        // children are written in reverse name order.
        let expected = [0, 0, 1, 1, b'a', 0, 2, 1, b'c', 3, 0, 1, b'b', 2, 0];
        assert_eq!(bytes, expected);
        assert_eq!(Tree::decode(&bytes).unwrap().stacks(), tree.stacks());
    }

    #[test]
    fn test_max_nodes_folds_small_nodes_into_other() {
        let tree = tree(&[(&["a", "big"], 100), (&["a", "small"], 1), (&["tiny"], 2)]);
        let decoded = Tree::decode(&tree.encode(2).unwrap()).unwrap();
        assert_eq!(decoded.total(), tree.total());
        assert_eq!(
            decoded.stacks(),
            [
                (vec!["a".to_owned(), "big".to_owned()], 100),
                (vec!["a".to_owned(), "other".to_owned()], 1),
                (vec!["other".to_owned()], 2)
            ]
        );
    }

    #[test]
    fn test_decode_rejects_garbage() {
        assert!(Tree::decode(&[0, 0, 2, 1, b'a', 0, 0]).is_err());
        assert!(Tree::decode(&[5, b'a']).is_err());
        assert!(Tree::decode(&[]).is_err());
    }

    #[test]
    fn test_decode_compact_rejects_garbage() {
        let unlimited = || Arc::new(RequestBudget::unlimited());
        let compact = |nodes: &[u8]| CompactTree {
            names: vec![String::new(), "a".to_owned()],
            nodes: nodes.to_vec(),
        };
        // root with one child named by index 1: fine.
        assert!(Tree::decode_compact_within(&compact(&[0, 0, 1, 1, 5, 0]), unlimited()).is_ok());
        // a name index past the names, a missing child, bytes after the root.
        for nodes in [&[0, 0, 1, 2, 5, 0][..], &[0, 0, 2, 1, 5, 0], &[0, 0, 0, 1], &[]] {
            assert!(
                matches!(
                    Tree::decode_compact_within(&compact(nodes), unlimited()),
                    Err(TreeDecodeError::Invalid { .. })
                ),
                "{nodes:?}"
            );
        }
    }

    #[test]
    fn test_a_tree_within_a_budget_refuses_to_grow_past_it() {
        // Eight nodes and names take about 16 × NODE_BYTES; twenty more
        // would pass 40.
        let budget = Arc::new(RequestBudget::for_query(40 * NODE_BYTES, "-x.query"));
        let mut tree = Tree::within(Arc::clone(&budget));
        tree.insert(["a", "b", "c", "d", "e", "f", "g", "h"], 1).unwrap();
        let deep: Vec<String> = (0..20).map(|level| format!("f{level}")).collect();
        let err = tree.insert(deep.iter().map(String::as_str), 1).unwrap_err();
        assert!(
            matches!(err, BudgetError::QueryTooLarge { flag: "-x.query", .. }),
            "{err}"
        );
        assert!(budget.used() <= 40 * NODE_BYTES);
    }

    #[test]
    fn test_tree_bytes_that_repeat_long_names_are_charged() {
        // 2,000 nodes of one 1 KiB name: the tree holds the name once, the
        // tree bytes 2,000 times (2 MiB).
        let name = "n".repeat(1024);
        let budget = Arc::new(RequestBudget::for_query(1 << 20, "-x.query"));
        let mut tree = Tree::within(Arc::clone(&budget));
        for leaf in 0..1000 {
            tree.insert([name.as_str(), &format!("{leaf}")], 1).unwrap();
            tree.insert([&format!("{leaf}"), name.as_str()], 1).unwrap();
        }
        assert!(budget.used() < 1 << 20);
        let err = tree.encode(0).unwrap_err();
        assert!(matches!(err, BudgetError::QueryTooLarge { .. }), "{err}");
        // Each name once: well within.
        let compact = tree.into_compact().unwrap();
        assert!(compact.nodes.len() < 16 * 1024, "{}", compact.nodes.len());
    }

    fn arb_stacks() -> impl Strategy<Value = Vec<(Vec<String>, i64)>> {
        let frame = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
        prop::collection::vec((prop::collection::vec(frame, 1..5), 1..100i64), 0..30)
    }

    proptest! {
        /// Invariants: merging two trees equals inserting all their stacks
        /// into one; totals add up; bytes round-trip.
        #[test]
        fn test_merge_and_round_trip(left in arb_stacks(), right in arb_stacks()) {
            let build = |stacks: &[(Vec<String>, i64)]| {
                let mut tree = Tree::new();
                for (frames, value) in stacks {
                    tree.insert(frames.iter().map(String::as_str), *value).unwrap();
                }
                tree
            };
            let mut merged = build(&left);
            merged.merge(&build(&right)).unwrap();
            let all: Vec<_> = left.iter().chain(right.iter()).cloned().collect();
            let expected = build(&all);
            prop_assert_eq!(merged.stacks(), expected.stacks());
            prop_assert_eq!(merged.total(), expected.total());
            prop_assert_eq!(Tree::decode(&merged.encode(0).unwrap()).unwrap().stacks(), merged.stacks());
            let compact = merged.try_clone().unwrap().into_compact().unwrap();
            let unlimited = Arc::new(RequestBudget::unlimited());
            prop_assert_eq!(Tree::decode_compact_within(&compact, unlimited).unwrap().stacks(), merged.stacks());
            for max_nodes in [1, 3, 8] {
                let truncated = merged.truncated(max_nodes).unwrap();
                let through_bytes = Tree::decode(&merged.encode(max_nodes).unwrap()).unwrap();
                prop_assert_eq!(truncated.stacks(), through_bytes.stacks());
                prop_assert_eq!(truncated.total(), merged.total());
            }
        }
    }

    /// A chain `depth` frames deep over a few names (so names repeat, as
    /// in recursion), with side stacks branching off at `branches`.
    fn deep_tree(depth: usize, branches: &[usize], value: i64) -> Tree {
        let names = ["a", "b", "c", "d", "e"];
        let chain: Vec<&str> = (0..depth).map(|level| names[level % names.len()]).collect();
        let mut tree = Tree::new();
        tree.insert(chain.iter().copied(), value).unwrap();
        for &at in branches {
            let at = at % depth;
            tree.insert(chain[..at].iter().copied().chain(["side"]), 1).unwrap();
        }
        tree
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2))]

        /// Invariants on trees 1,000,000 frames deep, on the test thread's
        /// ordinary stack (no tree algorithm recurses on depth): merging
        /// adds totals, bytes round-trip, the flame graph has a level per
        /// frame, the diff, DOT and pprof export complete.
        #[test]
        fn test_million_frame_trees_never_recurse(
            branches in prop::collection::vec(0usize..1_000_000, 0..4),
            value in 1i64..1000,
        ) {
            const DEPTH: usize = 1_000_000;
            let left = deep_tree(DEPTH, &branches, value);
            let right = deep_tree(DEPTH, &[], 2 * value);
            let mut merged = left.try_clone().unwrap();
            merged.merge(&right).unwrap();
            prop_assert_eq!(merged.total(), left.total() + right.total());
            let decoded = Tree::decode(&merged.encode(0).unwrap()).unwrap();
            prop_assert_eq!(decoded.total(), merged.total());
            prop_assert_eq!(decoded.nodes.len(), merged.nodes.len());
            prop_assert_eq!(merged.flame_graph(0).unwrap().levels.len(), DEPTH + 1);
            // Every node of a plain chain ties the cut-off, so it survives.
            prop_assert_eq!(right.flame_graph(8192).unwrap().levels.len(), DEPTH + 1);
            let diff = Tree::flame_graph_diff(&left, &right, 0).unwrap();
            prop_assert_eq!(diff.levels.len(), DEPTH + 1);
            prop_assert!(crate::to_dot(&merged, 16, "nanoseconds").contains("N1"));
            let profile_type = crate::ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
            let profile = merged.to_pprof(&profile_type, 0, 0).unwrap();
            prop_assert_eq!(profile.sample.len(), 1 + distinct_sides(&branches));
        }
    }

    fn distinct_sides(branches: &[usize]) -> usize {
        let mut at: Vec<usize> = branches.to_vec();
        at.sort_unstable();
        at.dedup();
        at.len()
    }

    #[test]
    fn test_flame_graph_layout_golden() {
        let mut tree = Tree::new();
        tree.insert(["main", "b"], 3).unwrap();
        tree.insert(["main", "a"], 2).unwrap();
        tree.insert(["main"], 1).unwrap();
        tree.insert(["other_root"], 4).unwrap();
        let graph = tree.flame_graph(0).unwrap();
        assert_eq!(graph.names, ["total", "main", "a", "b", "other_root"]);
        assert_eq!(graph.total, 10);
        assert_eq!(graph.max_self, 4);
        assert_eq!(
            graph.levels,
            vec![
                vec![0, 10, 0, 0],
                // main [0, 6) self 1; other_root [6, 10)
                vec![0, 6, 1, 1, 0, 4, 4, 4],
                // a [1, 3) after main's self, b [3, 6)
                vec![1, 2, 2, 2, 0, 3, 3, 3],
            ]
        );
    }

    #[test]
    fn test_flame_graph_folds_small_nodes_into_other() {
        let mut tree = Tree::new();
        tree.insert(["main", "big"], 100).unwrap();
        tree.insert(["main", "small1"], 1).unwrap();
        tree.insert(["main", "small2"], 2).unwrap();
        // Keep 2 nodes: main (103) and big (100).
        let graph = tree.flame_graph(2).unwrap();
        assert_eq!(graph.names, ["total", "main", "big", "other"]);
        assert_eq!(graph.levels[2], vec![0, 100, 100, 2, 0, 3, 3, 3]);
        let total_of_level_2: i64 = graph.levels[2].chunks(4).map(|node| node[1]).sum();
        assert_eq!(total_of_level_2, 103);
    }

    #[test]
    fn test_flame_graph_diff_layout_golden() {
        let mut left = Tree::new();
        left.insert(["main", "a"], 2).unwrap();
        left.insert(["main", "b"], 1).unwrap();
        let mut right = Tree::new();
        right.insert(["main", "b"], 4).unwrap();
        right.insert(["main", "c"], 1).unwrap();
        let diff = Tree::flame_graph_diff(&left, &right, 0).unwrap();
        assert_eq!(diff.names, ["total", "main", "a", "b", "c"]);
        assert_eq!(
            (diff.left_ticks, diff.right_ticks, diff.total, diff.max_self),
            (3, 5, 8, 4)
        );
        assert_eq!(
            diff.levels,
            vec![
                vec![0, 3, 0, 0, 5, 0, 0],
                vec![0, 3, 0, 0, 5, 0, 1],
                // a: left [0,2), right absent at 0; b: left [2,3), right
                // [0,4); c: left absent at 3, right [4,5).
                vec![0, 2, 2, 0, 0, 0, 2, 0, 1, 1, 0, 4, 4, 3, 0, 0, 0, 0, 1, 1, 4],
            ]
        );
    }

    #[test]
    fn test_to_pprof_keeps_every_stack_and_dedupes_functions() {
        let mut tree = Tree::new();
        tree.insert(["main", "work"], 5).unwrap();
        tree.insert(["main", "work", "main"], 2).unwrap();
        tree.insert(["main"], 1).unwrap();
        let profile_type = crate::ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        let profile = tree.to_pprof(&profile_type, 10, 20).unwrap();
        assert_eq!(profile.function.len(), 2);
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.sample.len(), 3);
        // Decoded back through the model: the same stacks.
        let mut back = Tree::new();
        for sample in &profile.sample {
            let frames: Vec<&str> = sample
                .location_id
                .iter()
                .rev()
                .map(|id| {
                    let function = &profile.function[*id as usize - 1];
                    profile.string_table[function.name as usize].as_str()
                })
                .collect();
            back.insert(frames, sample.value[0]).unwrap();
        }
        assert_eq!(back.stacks(), tree.stacks());
        assert_eq!(crate::pprof::string_at(&profile, profile.sample_type[0].r#type), "cpu");
        assert_eq!((profile.time_nanos, profile.duration_nanos), (10, 20));
    }
}
