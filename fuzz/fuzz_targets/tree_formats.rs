//! Any bytes as the binary trie or tree of an old agent sent to `/ingest`:
//! read or refused, never a panic, and never more frames than the budget.
#![no_main]

use flamedb_model::tree_formats::{TreeFormat, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [TreeFormat::Trie, TreeFormat::Tree] {
        let mut frames = 0usize;
        let _ = parse(format, data, |stack, _| frames += stack.count());
        assert!(frames <= data.len() * 8);
    }
});
