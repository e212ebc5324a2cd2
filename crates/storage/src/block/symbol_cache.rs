//! Decoded symbol tables of open blocks, kept for the next query within a
//! memory bound. A block's symbols file is read, checked, decompressed
//! and decoded into tables with their indexes on every merge otherwise:
//! over a month of blocks that is a third of a query's time. Entries are
//! counted at what their tables hold ([`Symbols::bytes`]); least recently
//! used ones go first. Tables bigger than the whole bound are used once
//! and not kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::BlockError;
use crate::Symbols;

/// Decoded symbol tables by block directory, within `max_bytes`.
#[derive(Debug)]
pub struct SymbolCache {
    max_bytes: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_block: HashMap<PathBuf, Entry>,
    bytes: usize,
    /// Counts uses: an entry's `used` is when it was last used.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    symbols: Arc<Symbols>,
    bytes: usize,
    used: u64,
}

impl SymbolCache {
    /// A cache of at most `max_bytes` of decoded tables (`0`: none kept).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Bytes of the tables kept.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The symbols of the block in `dir`: kept ones, or those `load` makes
    /// (kept if they fit). The lock is not held while loading: two queries
    /// that miss at once both load, and one copy is kept.
    pub(crate) fn get_or_load(
        &self,
        dir: &Path,
        load: impl FnOnce() -> Result<Symbols, BlockError>,
    ) -> Result<Arc<Symbols>, BlockError> {
        {
            let mut entries = self.lock();
            entries.clock += 1;
            let now = entries.clock;
            if let Some(entry) = entries.by_block.get_mut(dir) {
                entry.used = now;
                return Ok(entry.symbols.clone());
            }
        }
        let symbols = Arc::new(load()?);
        let bytes = symbols.bytes();
        if bytes > self.max_bytes {
            return Ok(symbols);
        }
        let mut entries = self.lock();
        let used = entries.clock;
        let entry = Entry {
            symbols: symbols.clone(),
            bytes,
            used,
        };
        if let Some(replaced) = entries.by_block.insert(dir.to_owned(), entry) {
            entries.bytes -= replaced.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.max_bytes {
            let Some(oldest) = entries
                .by_block
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(dir, _)| dir.clone())
            else {
                break;
            };
            if let Some(removed) = entries.by_block.remove(&oldest) {
                entries.bytes -= removed.bytes;
            }
        }
        Ok(symbols)
    }

    /// Forgets the tables of the block in `dir` (its files are going).
    pub fn remove(&self, dir: &Path) {
        let mut entries = self.lock();
        if let Some(removed) = entries.by_block.remove(dir) {
            entries.bytes -= removed.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flamedb_model::pprof::StackProfileBuilder;

    use super::*;

    fn symbols(frames: usize) -> Symbols {
        let mut symbols = Symbols::new();
        let mut builder = StackProfileBuilder::new("cpu", "nanoseconds");
        let names: Vec<String> = (0..frames).map(|frame| format!("function_{frame}")).collect();
        builder.add(names.iter().map(String::as_str), 1);
        symbols.add_profile(&builder.build());
        symbols
    }

    #[test]
    fn test_kept_within_the_bound_least_recently_used_out() {
        let size = symbols(10).bytes();
        let cache = SymbolCache::new(2 * size + size / 2);
        let mut loads = 0;
        let mut get = |dir: &str| {
            cache
                .get_or_load(Path::new(dir), || {
                    loads += 1;
                    Ok(symbols(10))
                })
                .unwrap()
        };
        get("a");
        get("b");
        get("a");
        // Two fit: `b`, the least recently used, makes room for `c`.
        get("c");
        get("a");
        get("b");
        assert_eq!(loads, 4);
        assert_eq!(cache.bytes(), 2 * size);

        // Bigger than the bound: used, not kept.
        let big = cache.get_or_load(Path::new("big"), || Ok(symbols(1000))).unwrap();
        assert!(big.bytes() > 2 * size);
        assert_eq!(cache.bytes(), 2 * size);

        cache.remove(Path::new("a"));
        cache.remove(Path::new("b"));
        cache.remove(Path::new("c"));
        assert_eq!(cache.bytes(), 0);

        // A load that fails keeps nothing.
        let failed = cache.get_or_load(Path::new("bad"), || {
            Err(BlockError::corrupt(Path::new("bad"), "damaged"))
        });
        assert!(failed.is_err());
        assert_eq!(cache.bytes(), 0);
    }
}
