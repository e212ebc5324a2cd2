//! gzip decompression with a ceiling on the output, so a small body can
//! never expand into unbounded memory (gzip bombs). Every compressed input
//! flamedb accepts goes through here.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::MultiGzDecoder;

use crate::budget::{BudgetError, RequestBudget, allocation_size, extend_charged};

const MAGIC: [u8; 2] = [0x1f, 0x8b];
/// What decompression charges a request's budget for.
const DECOMPRESSED: &str = "decompressed bytes";

/// Why compressed input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    #[error("decompressed size exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid gzip data: {source}")]
    Invalid { source: std::io::Error },
    /// The request's memory budget ran out while decompressing.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Returns whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Decompresses gzip `input`, failing once the output would exceed `limit`
/// bytes (`0`: no limit).
pub fn gunzip(input: &[u8], limit: usize) -> Result<Vec<u8>, GzipError> {
    gunzip_within(input, limit, &RequestBudget::unlimited())
}

/// [`gunzip`], charging the output buffer to `budget` before each time it
/// grows.
pub fn gunzip_within(input: &[u8], limit: usize, budget: &RequestBudget) -> Result<Vec<u8>, GzipError> {
    let max = if limit == 0 { usize::MAX } else { limit };
    // The gzip trailer holds the uncompressed size modulo 2^32: a good
    // first capacity, but the sender writes it, so it is trusted only up
    // to the limit and a plausible compression ratio.
    const PLAUSIBLE_RATIO: usize = 32;
    let size_hint = input
        .len()
        .checked_sub(4)
        .and_then(|start| input.get(start..))
        .and_then(|tail| <[u8; 4]>::try_from(tail).ok())
        .map_or(0, |tail| u32::from_le_bytes(tail) as usize);
    let first_capacity = size_hint.min(max).min(input.len().saturating_mul(PLAUSIBLE_RATIO));
    budget.charge(allocation_size(first_capacity), DECOMPRESSED)?;
    let mut out = Vec::with_capacity(first_capacity);
    let mut decoder = MultiGzDecoder::new(input);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(GzipError::Invalid { source }),
        };
        if out.len() + read > max {
            return Err(GzipError::TooLarge { limit });
        }
        extend_charged(&mut out, &chunk[..read], max, budget, DECOMPRESSED)?;
    }
    Ok(out)
}

/// Decompresses `input` if it starts with the gzip magic number, else
/// returns it as it is; either way the result may not exceed `limit` bytes
/// (`0`: no limit). What decompression allocates is charged to `budget`.
pub fn gunzip_if_compressed<'a>(
    input: &'a [u8],
    limit: usize,
    budget: &RequestBudget,
) -> Result<Cow<'a, [u8]>, GzipError> {
    if is_gzip(input) {
        return gunzip_within(input, limit, budget).map(Cow::Owned);
    }
    if limit != 0 && input.len() > limit {
        return Err(GzipError::TooLarge { limit });
    }
    Ok(Cow::Borrowed(input))
}

/// Compresses `input` with gzip at the fastest level (for responses and
/// tests; speed matters more than size there).
pub fn gzip(input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(input.len() / 4 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(input);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gunzip_round_trip_and_limit() {
        let data = b"hello hello hello".repeat(100);
        let compressed = gzip(&data);
        assert!(is_gzip(&compressed));
        assert_eq!(gunzip(&compressed, 0).unwrap(), data);
        assert_eq!(gunzip(&compressed, data.len()).unwrap(), data);
        assert!(matches!(
            gunzip(&compressed, data.len() - 1),
            Err(GzipError::TooLarge { .. })
        ));
        assert!(matches!(gunzip(&[0x1f, 0x8b, 1], 0), Err(GzipError::Invalid { .. })));
    }

    #[test]
    fn test_gunzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 20 << 20]);
        assert!(bomb.len() < 200 << 10);
        assert!(matches!(gunzip(&bomb, 1 << 20), Err(GzipError::TooLarge { limit }) if limit == 1 << 20));
    }

    #[test]
    fn test_gunzip_charges_the_buffer_before_it_grows() {
        let data = vec![7u8; 1 << 20];
        let compressed = gzip(&data);
        let budget = RequestBudget::standalone(0, "-x");
        assert_eq!(gunzip_within(&compressed, 0, &budget).unwrap(), data);
        // The buffer as it last grew, never less than the output.
        assert!(budget.used() >= 1 << 20 && budget.used() < 2 << 20, "{}", budget.used());
        let small = RequestBudget::standalone(100 << 10, "-x");
        let err = gunzip_within(&compressed, 0, &small).unwrap_err();
        assert!(
            matches!(err, GzipError::Budget(BudgetError::RequestTooLarge { .. })),
            "{err}"
        );
        // A lying trailer (refused at the end): charged as the buffer
        // doubled.
        let mut lying = compressed.clone();
        let len = lying.len();
        lying[len - 4..].copy_from_slice(&16u32.to_le_bytes());
        let budget = RequestBudget::standalone(0, "-x");
        assert!(matches!(
            gunzip_within(&lying, 0, &budget),
            Err(GzipError::Invalid { .. })
        ));
        assert!(budget.used() >= 1 << 20 && budget.used() < 2 << 20, "{}", budget.used());
    }

    #[test]
    fn test_gunzip_if_compressed_passes_plain_input_through() {
        assert_eq!(
            &*gunzip_if_compressed(b"plain", 5, &RequestBudget::unlimited()).unwrap(),
            b"plain"
        );
        assert!(matches!(
            gunzip_if_compressed(b"plain", 4, &RequestBudget::unlimited()),
            Err(GzipError::TooLarge { limit: 4 })
        ));
        assert_eq!(
            &*gunzip_if_compressed(&gzip(b"zipped"), 6, &RequestBudget::unlimited()).unwrap(),
            b"zipped"
        );
    }
}
