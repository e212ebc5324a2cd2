//! What one request brought: the decoded profiles with the labels of their
//! series, and the profiles refused while decoding. The ingest APIs fill a
//! batch inside [`crate::Distributor::prepare`].

use std::sync::Arc;

use flamedb_api::ErrorCode;
use flamedb_model::gzip::{GzipError, gunzip_if_compressed};
use flamedb_model::pprof::{self, Profile};
use flamedb_model::{Labels, Limits, ValidationError};

/// A profile refused before it was stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The discard reason in metrics (Pyroscope's reason strings).
    pub reason: &'static str,
    pub code: ErrorCode,
    /// Names the series, the limit and the value.
    pub message: String,
    /// Uncompressed bytes refused (for the discard metrics).
    pub bytes: usize,
}

impl Rejection {
    pub fn invalid(error: &ValidationError, bytes: usize) -> Self {
        Self {
            reason: error.reason(),
            code: ErrorCode::InvalidArgument,
            message: error.to_string(),
            bytes,
        }
    }
}

/// One decoded profile and the labels it was pushed under.
#[derive(Debug)]
pub(crate) struct ReceivedProfile {
    pub labels: Labels,
    pub profile: Profile,
    /// Uncompressed pprof bytes plus label bytes: what the rate limit
    /// counts.
    pub bytes: usize,
}

/// The profiles of one request, decoded under the tenant's limits.
#[derive(Debug)]
pub struct PushBatch {
    pub(crate) limits: Arc<Limits>,
    pub(crate) profiles: Vec<ReceivedProfile>,
    pub(crate) rejections: Vec<Rejection>,
    decompressed_bytes: usize,
}

/// The whole request is refused: its profiles decompress to more than the
/// body limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the profiles of this request decompress to more than ingestion_body_limit_mb ({limit} bytes); nothing was stored: send fewer profiles per request"
)]
pub struct BodyTooLarge {
    pub limit: usize,
}

impl PushBatch {
    pub(crate) fn new(limits: Arc<Limits>) -> Self {
        Self {
            limits,
            profiles: Vec::new(),
            rejections: Vec::new(),
            decompressed_bytes: 0,
        }
    }

    /// Decompresses a pushed `raw_profile` (gzip or plain), within the
    /// profile size limit and the request's body limit. A profile over the
    /// size limit is a rejection; a request over the body limit fails whole.
    pub fn decompress<'a>(
        &mut self,
        labels: &Labels,
        raw: &'a [u8],
    ) -> Result<Option<std::borrow::Cow<'a, [u8]>>, BodyTooLarge> {
        let body_limit = self.limits.ingestion_body_limit_bytes();
        let body_left = body_limit.saturating_sub(self.decompressed_bytes);
        let profile_limit = match self.limits.max_profile_size_bytes {
            0 => usize::MAX,
            limit => limit,
        };
        // Decompression stops at the smaller limit, so a small gzip bomb
        // never inflates past what the request may hold.
        let limit = profile_limit.min(body_left).max(1);
        match gunzip_if_compressed(raw, limit) {
            Ok(bytes) => {
                self.count_decompressed(bytes.len())?;
                Ok(Some(bytes))
            }
            Err(GzipError::TooLarge { .. }) if body_left < profile_limit => Err(BodyTooLarge { limit: body_limit }),
            Err(err) => {
                let source = match err {
                    GzipError::TooLarge { limit } => pprof::DecodeError::TooLarge { limit },
                    GzipError::Invalid { source } => pprof::DecodeError::Gzip { source },
                };
                self.reject(Rejection::invalid(
                    &ValidationError::from_decode(labels, source),
                    raw.len(),
                ));
                Ok(None)
            }
        }
    }

    /// Counts `bytes` decompressed for this request against the body limit.
    fn count_decompressed(&mut self, bytes: usize) -> Result<(), BodyTooLarge> {
        self.decompressed_bytes = self.decompressed_bytes.saturating_add(bytes);
        let limit = self.limits.ingestion_body_limit_bytes();
        if self.decompressed_bytes > limit {
            return Err(BodyTooLarge { limit });
        }
        Ok(())
    }

    /// Decodes a raw pushed profile and adds it, or records why it cannot
    /// be decoded.
    pub fn add_raw(&mut self, labels: &Labels, raw: &[u8]) -> Result<(), BodyTooLarge> {
        let Some(bytes) = self.decompress(labels, raw)? else {
            return Ok(());
        };
        match pprof::decode_plain(&bytes) {
            Ok(profile) => self.add(labels.clone(), profile, bytes.len()),
            Err(source) => self.reject(Rejection::invalid(
                &ValidationError::from_decode(labels, source),
                bytes.len(),
            )),
        }
        Ok(())
    }

    /// Adds a decoded profile of `pprof_bytes` uncompressed bytes.
    pub fn add(&mut self, labels: Labels, profile: Profile, pprof_bytes: usize) {
        let label_bytes: usize = labels.iter().map(|label| label.name.len() + label.value.len()).sum();
        self.profiles.push(ReceivedProfile {
            labels,
            profile,
            bytes: pprof_bytes + label_bytes,
        });
    }

    pub fn reject(&mut self, rejection: Rejection) {
        self.rejections.push(rejection);
    }
}

#[cfg(test)]
mod tests {
    use flamedb_model::gzip::gzip;
    use flamedb_model::pprof::{ValueType, encode};

    use super::*;

    fn labels() -> Labels {
        Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")])
    }

    fn raw() -> Vec<u8> {
        encode(&Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: ["", "cpu", "nanoseconds"].map(String::from).to_vec(),
            ..Profile::default()
        })
    }

    #[test]
    fn test_add_raw_decodes_gzip_and_plain_and_rejects_garbage() {
        let mut batch = PushBatch::new(Arc::new(Limits::default()));
        batch.add_raw(&labels(), &raw()).unwrap();
        batch.add_raw(&labels(), &gzip(&raw())).unwrap();
        batch.add_raw(&labels(), b"\x1f\x8b not really gzip").unwrap();
        batch.add_raw(&labels(), &[0xff, 0xff, 0xff]).unwrap();
        assert_eq!(batch.profiles.len(), 2);
        assert_eq!(batch.rejections.len(), 2);
        assert!(batch.rejections.iter().all(|r| r.reason == "malformed_profile"));
        assert!(batch.rejections[0].message.contains("service_name=\"app\""));
    }

    #[test]
    fn test_profile_size_limit_rejects_one_profile_and_body_limit_fails_the_request() {
        let limits = Limits {
            max_profile_size_bytes: 20,
            ..Limits::default()
        };
        let mut batch = PushBatch::new(Arc::new(limits));
        batch.add_raw(&labels(), &gzip(&[0u8; 1000])).unwrap();
        assert_eq!(batch.rejections[0].reason, "profile_size_limit");

        // Room for exactly two profiles (a power-of-two division is exact).
        let two = 2 * raw().len();
        let limits = Limits {
            ingestion_body_limit_mb: two as f64 / 1_048_576.0,
            ..Limits::default()
        };
        let mut batch = PushBatch::new(Arc::new(limits.clone()));
        batch.add_raw(&labels(), &raw()).unwrap();
        batch.add_raw(&labels(), &gzip(&raw())).unwrap();
        let err = batch.add_raw(&labels(), &raw()).unwrap_err();
        assert_eq!(err.limit, two);

        // Without a profile limit, a gzip bomb stops at the body limit.
        let bomb = gzip(&vec![0u8; 10 << 20]);
        let mut batch = PushBatch::new(Arc::new(Limits {
            max_profile_size_bytes: 0,
            ..limits
        }));
        assert_eq!(batch.add_raw(&labels(), &bomb).unwrap_err().limit, two);
    }
}
