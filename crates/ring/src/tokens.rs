//! Token generation and the tokens file.
//!
//! A joining instance takes its fair share of the key space
//! (`1 / (instances + 1)`) from the instances that own most: each new token
//! splits a range of the currently most loaded instance, picked at random
//! with a chance proportional to its size, taking just what the new
//! instance still needs. Joining one after another, every instance ends
//! within a few percent of its fair share; instances joining at the same
//! time (each seeing the same ring) pick different ranges thanks to the
//! randomness and stay within about ±15%. Uniformly random tokens,
//! Pyroscope's way, leave ±8% typical deviation with 128 tokens and often
//! more than ±15%. An instance joining an empty ring takes uniformly
//! random tokens.

use std::collections::BTreeSet;
use std::path::Path;

use rand::RngExt;
use serde::{Deserialize, Serialize};

const KEY_SPACE: u64 = 1 << 32;

/// Generates `count` new distinct tokens for `new_instance`, given the
/// tokens already in the ring as `(token, owner)` pairs.
pub fn generate_tokens<R: rand::Rng + ?Sized>(count: usize, taken: &[(u32, &str)], rng: &mut R) -> Vec<u32> {
    let mut ring: Vec<(u32, Owner)> = taken
        .iter()
        .map(|&(token, owner)| (token, Owner::Existing(owner)))
        .collect();
    ring.sort_unstable_by_key(|&(token, _)| token);
    ring.dedup_by_key(|(token, _)| *token);
    let mut owners: Vec<&str> = taken.iter().map(|&(_, owner)| owner).collect();
    owners.sort_unstable();
    owners.dedup();
    let mut fresh = BTreeSet::new();
    if owners.is_empty() {
        while fresh.len() < count {
            fresh.insert(rng.random::<u32>());
        }
        return fresh.into_iter().collect();
    }
    let target = KEY_SPACE / (owners.len() as u64 + 1);
    let mut gained = 0u64;
    for placed in 0..count {
        let load = ownership(&ring);
        // The most loaded existing instance, then its largest range.
        let Some(victim) = owners
            .iter()
            .copied()
            .max_by_key(|owner| load.get(owner).copied().unwrap_or(0))
        else {
            break;
        };
        let Some((start, size)) = weighted_range_of(&ring, victim, rng) else {
            break;
        };
        let still_needed = target.saturating_sub(gained) / (count - placed) as u64;
        // Never the whole range, so the owner keeps its token's position;
        // a little jitter keeps concurrent joiners apart.
        let take = (still_needed.min(size * 9 / 10) as f64 * rng.random_range(0.95..=1.0)) as u64;
        let mut token = (u64::from(start) + take.max(1)) as u32;
        while fresh.contains(&token) || ring.binary_search_by_key(&token, |&(t, _)| t).is_ok() {
            token = rng.random::<u32>();
        }
        gained += take;
        fresh.insert(token);
        let at = ring.partition_point(|&(t, _)| t < token);
        ring.insert(at, (token, Owner::New));
    }
    // Fill up (tiny rings) with random tokens.
    while fresh.len() < count {
        let token = rng.random::<u32>();
        if ring.binary_search_by_key(&token, |&(t, _)| t).is_err() {
            fresh.insert(token);
        }
    }
    fresh.into_iter().collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner<'a> {
    Existing(&'a str),
    New,
}

/// Key space owned per existing instance. A token owns the keys from the
/// previous token (inclusive) up to itself (exclusive).
fn ownership<'a>(ring: &[(u32, Owner<'a>)]) -> foldhash::HashMap<&'a str, u64> {
    let mut load = foldhash::HashMap::default();
    for (index, &(token, owner)) in ring.iter().enumerate() {
        if let Owner::Existing(owner) = owner {
            *load.entry(owner).or_insert(0) += range_ending_at(ring, index, token);
        }
    }
    load
}

fn range_ending_at(ring: &[(u32, Owner<'_>)], index: usize, token: u32) -> u64 {
    if ring.len() == 1 {
        return KEY_SPACE;
    }
    let previous = ring[(index + ring.len() - 1) % ring.len()].0;
    u64::from(token.wrapping_sub(previous))
}

/// The start (previous token) and size of one of `owner`'s ranges, picked
/// with a chance proportional to its size.
fn weighted_range_of<R: rand::Rng + ?Sized>(ring: &[(u32, Owner<'_>)], owner: &str, rng: &mut R) -> Option<(u32, u64)> {
    let ranges: Vec<(u32, u64)> = ring
        .iter()
        .enumerate()
        .filter(|(_, (_, o))| *o == Owner::Existing(owner))
        .map(|(index, &(token, _))| {
            let size = range_ending_at(ring, index, token);
            (token.wrapping_sub(size as u32), size)
        })
        .collect();
    let total: u64 = ranges.iter().map(|&(_, size)| size).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    ranges.into_iter().find(|&(_, size)| {
        if point < size {
            return true;
        }
        point -= size;
        false
    })
}

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read tokens file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("tokens file {path} is not {{\"tokens\": [...]}}: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("cannot write tokens file {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

#[derive(Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<u32>,
}

/// Loads tokens saved by [`save_tokens`]; `Ok(None)` if there is no file.
pub fn load_tokens(path: &Path) -> Result<Option<Vec<u32>>, TokensFileError> {
    let display = || path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokensFileError::Read {
                path: display(),
                source,
            });
        }
    };
    let file: TokensFile = serde_json::from_str(&text).map_err(|source| TokensFileError::Parse {
        path: display(),
        source,
    })?;
    let mut tokens = file.tokens;
    tokens.sort_unstable();
    tokens.dedup();
    Ok(Some(tokens))
}

/// Saves tokens atomically (write to a temporary file, fsync, rename).
pub fn save_tokens(path: &Path, tokens: &[u32]) -> Result<(), TokensFileError> {
    use std::io::Write;
    let error = |source| TokensFileError::Write {
        path: path.display().to_string(),
        source,
    };
    let json = serde_json::to_vec(&TokensFile {
        tokens: tokens.to_vec(),
    })
    .map_err(|err| error(err.into()))?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(error)?;
    file.write_all(&json).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn test_first_instance_gets_distinct_sorted_tokens() {
        let tokens = generate_tokens(128, &[], &mut StdRng::seed_from_u64(1));
        assert_eq!(tokens.len(), 128);
        assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn test_new_tokens_avoid_taken_ones_and_take_a_fair_share() {
        let mut rng = StdRng::seed_from_u64(7);
        let first = generate_tokens(128, &[], &mut rng);
        let taken: Vec<(u32, &str)> = first.iter().map(|&token| (token, "a")).collect();
        let second = generate_tokens(128, &taken, &mut rng);
        assert_eq!(second.len(), 128);
        assert!(second.iter().all(|token| first.binary_search(token).is_err()));
        let mut ring: Vec<(u32, Owner)> = first
            .iter()
            .map(|&t| (t, Owner::Existing("a")))
            .chain(second.iter().map(|&t| (t, Owner::Existing("b"))))
            .collect();
        ring.sort_unstable_by_key(|&(t, _)| t);
        let load = ownership(&ring);
        let share = load["b"] as f64 / KEY_SPACE as f64;
        assert!((share - 0.5).abs() < 0.02, "second instance owns {share}");
    }

    #[test]
    fn test_tokens_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        assert!(load_tokens(&path).unwrap().is_none());
        save_tokens(&path, &[3, 1, 2]).unwrap();
        assert_eq!(load_tokens(&path).unwrap(), Some(vec![1, 2, 3]));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(load_tokens(&path), Err(TokensFileError::Parse { .. })));
    }
}
