//! The binary formats of old Pyroscope agents: `format=trie` (or
//! `Content-Type: binary/octet-stream+trie`) and `format=tree` (`+tree`).
//! Both write a tree depth first, each node as `uvarint name length, name,
//! uvarint value, uvarint child count`, its children after it:
//! - trie: a node's name continues its parent's key (the trie is prefix
//!   compressed, so names need not end at frame boundaries); a key is a
//!   whole stack, frames separated by `;`, and a node's value is the count
//!   of that stack;
//! - tree: a node's name is one frame and its value the frame's self value.
//!
//! Empty frames are left out. The stacks may expand to at most 8 frames
//! per byte of the body (and a trie's keys to 256 bytes per byte): a small
//! body cannot make an unbounded profile.

/// Frames the stacks may expand to, per byte of the body.
const FRAMES_PER_BYTE: usize = 8;
/// Key bytes a trie may expand to, per byte of the body. Keys share their
/// prefixes, so a leaf of a few bytes stands for a whole stack.
const KEY_BYTES_PER_BYTE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeFormat {
    Trie,
    Tree,
}

impl std::fmt::Display for TreeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Trie => "trie",
            Self::Tree => "tree",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeFormatError {
    #[error("the {format} body ends inside the node at byte {offset}")]
    Truncated { format: TreeFormat, offset: usize },
    #[error("the {format} body ends before the children its nodes announce ({missing} more)")]
    MissingChildren { format: TreeFormat, missing: u64 },
    #[error("the {format} body goes on after its tree, at byte {offset}")]
    TrailingBytes { format: TreeFormat, offset: usize },
    #[error("the {format} body has a varint of more than 64 bits at byte {offset}")]
    BadVarint { format: TreeFormat, offset: usize },
    #[error("the {format} body has a name that is not UTF-8 at byte {offset}")]
    NotUtf8 { format: TreeFormat, offset: usize },
    #[error("the {format} body expands to more than {limit} stack frames ({FRAMES_PER_BYTE} per byte of the body)")]
    TooManyFrames { format: TreeFormat, limit: usize },
    #[error("the trie's stack keys expand to more than {limit} bytes ({KEY_BYTES_PER_BYTE} per byte of the body)")]
    TooManyKeyBytes { limit: usize },
}

/// Reads `body` and hands each stack with a value to `emit`: its frames,
/// root first, and the value.
pub fn parse(
    format: TreeFormat,
    body: &[u8],
    mut emit: impl FnMut(&mut dyn Iterator<Item = &str>, i64),
) -> Result<(), TreeFormatError> {
    let frame_limit = body.len().saturating_mul(FRAMES_PER_BYTE);
    let key_limit = body.len().saturating_mul(KEY_BYTES_PER_BYTE);
    let (mut frames_left, mut key_bytes_left) = (frame_limit, key_limit);
    let mut reader = Reader {
        format,
        body,
        offset: 0,
    };
    // Nodes whose children are still to come: (the children's depth, how
    // many are left).
    let mut open: Vec<(usize, u64)> = Vec::new();
    // Trie: the key so far and where it ended at each depth.
    let mut key = String::new();
    let mut key_ends: Vec<usize> = Vec::new();
    // Tree: the frame at each depth.
    let mut path: Vec<&str> = Vec::new();
    let mut root_read = false;
    loop {
        while open.last().is_some_and(|&(_, left)| left == 0) {
            open.pop();
        }
        if reader.is_done() {
            break;
        }
        let depth = match open.last_mut() {
            Some((depth, left)) => {
                *left -= 1;
                *depth
            }
            None if !root_read => 0,
            None => {
                return Err(TreeFormatError::TrailingBytes {
                    format,
                    offset: reader.offset,
                });
            }
        };
        root_read = true;
        let name = reader.name()?;
        let value = i64::try_from(reader.varint()?).unwrap_or(i64::MAX);
        let children = reader.varint()?;
        match format {
            TreeFormat::Trie => {
                let parent_end = depth
                    .checked_sub(1)
                    .and_then(|parent| key_ends.get(parent))
                    .copied()
                    .unwrap_or(0);
                // Every end is where a whole name was appended: a char
                // boundary.
                key.truncate(parent_end);
                key.push_str(name);
                key_ends.truncate(depth);
                key_ends.push(key.len());
                if value > 0 {
                    key_bytes_left = key_bytes_left
                        .checked_sub(key.len())
                        .ok_or(TreeFormatError::TooManyKeyBytes { limit: key_limit })?;
                    let frames = key.split(';').filter(|frame| !frame.is_empty());
                    frames_left =
                        frames_left
                            .checked_sub(frames.clone().count())
                            .ok_or(TreeFormatError::TooManyFrames {
                                format,
                                limit: frame_limit,
                            })?;
                    emit(&mut frames.into_iter(), value);
                }
            }
            TreeFormat::Tree => {
                path.truncate(depth);
                path.push(name);
                if value > 0 {
                    frames_left = frames_left
                        .checked_sub(path.len())
                        .ok_or(TreeFormatError::TooManyFrames {
                            format,
                            limit: frame_limit,
                        })?;
                    emit(&mut path.iter().copied().filter(|frame| !frame.is_empty()), value);
                }
            }
        }
        if children > 0 {
            open.push((depth + 1, children));
        }
    }
    let missing = open.iter().fold(0u64, |sum, &(_, left)| sum.saturating_add(left));
    if missing > 0 {
        return Err(TreeFormatError::MissingChildren { format, missing });
    }
    Ok(())
}

struct Reader<'a> {
    format: TreeFormat,
    body: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn is_done(&self) -> bool {
        self.offset >= self.body.len()
    }

    fn varint(&mut self) -> Result<u64, TreeFormatError> {
        let start = self.offset;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.body.get(self.offset).ok_or(TreeFormatError::Truncated {
                format: self.format,
                offset: start,
            })?;
            self.offset += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                // The tenth byte holds only the top bit.
                if shift == 63 && byte > 1 {
                    break;
                }
                return Ok(value);
            }
        }
        Err(TreeFormatError::BadVarint {
            format: self.format,
            offset: start,
        })
    }

    fn name(&mut self) -> Result<&'a str, TreeFormatError> {
        let start = self.offset;
        let truncated = TreeFormatError::Truncated {
            format: self.format,
            offset: start,
        };
        let len = usize::try_from(self.varint()?).map_err(|_| truncated.clone())?;
        let end = self.offset.checked_add(len).ok_or(truncated.clone())?;
        let bytes = self.body.get(self.offset..end).ok_or(truncated)?;
        self.offset = end;
        std::str::from_utf8(bytes).map_err(|_| TreeFormatError::NotUtf8 {
            format: self.format,
            offset: start,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A node to write: name, value, children.
    #[derive(Debug, Clone)]
    struct Node {
        name: String,
        value: u64,
        children: Vec<Node>,
    }

    fn node(name: &str, value: u64, children: Vec<Node>) -> Node {
        Node {
            name: name.to_owned(),
            value,
            children,
        }
    }

    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// Writes `node` depth first, as the agents do.
    fn write(out: &mut Vec<u8>, node: &Node) {
        varint(out, node.name.len() as u64);
        out.extend_from_slice(node.name.as_bytes());
        varint(out, node.value);
        varint(out, node.children.len() as u64);
        for child in &node.children {
            write(out, child);
        }
    }

    fn encode(root: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, root);
        out
    }

    fn stacks(format: TreeFormat, body: &[u8]) -> Result<Vec<(String, i64)>, TreeFormatError> {
        let mut out = Vec::new();
        parse(format, body, |frames, value| {
            out.push((frames.collect::<Vec<_>>().join(";"), value));
        })?;
        Ok(out)
    }

    #[test]
    fn test_a_trie_continues_its_keys_across_nodes() {
        // Keys "foo;bar" (3), "foo;baz" (5) and "foo;ba" (1), shared
        // prefixes split inside frames, as the agents' tries do.
        let trie = node(
            "",
            0,
            vec![node(
                "foo;ba",
                1,
                vec![node("r", 3, vec![]), node("z", 5, vec![node(";qux", 2, vec![])])],
            )],
        );
        assert_eq!(
            stacks(TreeFormat::Trie, &encode(&trie)).unwrap(),
            [
                ("foo;ba".to_owned(), 1),
                ("foo;bar".to_owned(), 3),
                ("foo;baz".to_owned(), 5),
                ("foo;baz;qux".to_owned(), 2),
            ]
        );
    }

    #[test]
    fn test_a_tree_names_one_frame_per_node_with_self_values() {
        let tree = node(
            "",
            0,
            vec![
                node("main", 1, vec![node("work", 4, vec![node("io", 2, vec![])])]),
                node("gc", 3, vec![]),
            ],
        );
        assert_eq!(
            stacks(TreeFormat::Tree, &encode(&tree)).unwrap(),
            [
                ("main".to_owned(), 1),
                ("main;work".to_owned(), 4),
                ("main;work;io".to_owned(), 2),
                ("gc".to_owned(), 3),
            ]
        );
    }

    #[test]
    fn test_damaged_bodies_are_refused() {
        let tree = encode(&node("", 0, vec![node("a", 1, vec![]), node("b", 1, vec![])]));
        let cut = &tree[..tree.len() - 4];
        assert!(matches!(
            stacks(TreeFormat::Tree, cut),
            Err(TreeFormatError::MissingChildren { missing: 1, .. })
        ));
        let mut longer = tree.clone();
        longer.extend_from_slice(&tree);
        assert!(matches!(
            stacks(TreeFormat::Tree, &longer),
            Err(TreeFormatError::TrailingBytes { .. })
        ));
        assert!(matches!(
            stacks(TreeFormat::Trie, &[5, b'a']),
            Err(TreeFormatError::Truncated { offset: 0, .. })
        ));
        assert!(matches!(
            stacks(TreeFormat::Trie, &[2, 0xff, 0xfe, 1, 0]),
            Err(TreeFormatError::NotUtf8 { .. })
        ));
        assert!(matches!(
            stacks(TreeFormat::Trie, &[0xff; 11]),
            Err(TreeFormatError::BadVarint { .. })
        ));
        assert_eq!(stacks(TreeFormat::Trie, &[]).unwrap(), []);
    }

    #[test]
    fn test_expansion_is_bounded() {
        // A chain where every node counts: frames grow with the square of
        // the depth.
        let mut chain = node("f;", 1, vec![]);
        for _ in 0..200 {
            chain = node("f;", 1, vec![chain]);
        }
        let body = encode(&chain);
        assert!(matches!(
            stacks(TreeFormat::Tree, &body),
            Err(TreeFormatError::TooManyFrames { .. })
        ));
        assert!(matches!(
            stacks(TreeFormat::Trie, &body),
            Err(TreeFormatError::TooManyFrames { .. })
        ));
    }

    fn any_node() -> impl Strategy<Value = Node> {
        let leaf = ("[a-c;]{0,3}", 0u64..5).prop_map(|(name, value)| node(&name, value, vec![]));
        leaf.prop_recursive(4, 32, 4, |inner| {
            ("[a-c;]{0,3}", 0u64..5, proptest::collection::vec(inner, 0..4))
                .prop_map(|(name, value, children)| node(&name, value, children))
        })
    }

    /// The stacks of `node` as a tree: (path, self value), depth first.
    fn expected_tree(node: &Node, path: &mut Vec<String>, out: &mut Vec<(String, i64)>) {
        path.push(node.name.clone());
        if node.value > 0 {
            let frames: Vec<&str> = path.iter().map(String::as_str).filter(|f| !f.is_empty()).collect();
            out.push((frames.join(";"), node.value as i64));
        }
        for child in &node.children {
            expected_tree(child, path, out);
        }
        path.pop();
    }

    proptest! {
        /// What is written is read back: every node with a value, depth
        /// first (or a refusal for going over the frame budget).
        #[test]
        fn prop_trees_read_back(root in any_node()) {
            let body = encode(&root);
            let mut expected = Vec::new();
            expected_tree(&root, &mut Vec::new(), &mut expected);
            match stacks(TreeFormat::Tree, &body) {
                Ok(stacks) => prop_assert_eq!(stacks, expected),
                Err(err) => prop_assert!(matches!(err, TreeFormatError::TooManyFrames { .. }), "{}", err),
            }
        }

        /// Any bytes parse or are refused, never panic.
        #[test]
        fn prop_any_bytes_parse_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            for format in [TreeFormat::Trie, TreeFormat::Tree] {
                let _ = stacks(format, &body);
            }
        }
    }
}
