//! The record framing: length, checksum, payload.

/// Largest payload a record may carry.
pub const MAX_RECORD_BYTES: usize = 512 * 1024 * 1024;

pub(crate) const HEADER_BYTES: usize = 8;

/// The checksum of a record: CRC-32 over the length bytes, then the payload.
pub(crate) fn checksum(length: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the framed record to `out`.
pub(crate) fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&length);
    out.extend_from_slice(&checksum(length, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The size of a framed record.
pub(crate) fn framed_len(payload: &[u8]) -> u64 {
    (HEADER_BYTES + payload.len()) as u64
}
