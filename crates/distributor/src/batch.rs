//! What one request brought: the decoded profiles with the labels of their
//! series, and the profiles refused while decoding. The ingest APIs fill a
//! batch inside [`crate::Distributor::prepare`].

use std::sync::Arc;

use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::budget::{BudgetError, RequestBudget};
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

/// The profiles of one request, decoded under the tenant's limits and the
/// request's memory budget.
#[derive(Debug)]
pub struct PushBatch {
    pub(crate) limits: Arc<Limits>,
    pub(crate) budget: Arc<RequestBudget>,
    pub(crate) profiles: Vec<ReceivedProfile>,
    pub(crate) rejections: Vec<Rejection>,
    decompressed_bytes: usize,
}

/// Why a whole request is refused while its profiles are decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Its profiles decompress to more than the body limit.
    #[error(
        "the profiles of this request decompress to more than ingestion_body_limit_mb ({limit} bytes); nothing was stored: send fewer profiles per request"
    )]
    BodyTooLarge { limit: usize },
    /// Its memory budget ran out.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

impl From<BatchError> for RpcError {
    fn from(err: BatchError) -> Self {
        match err {
            // Pyroscope's body_size_limit_exceeded: invalid input, so
            // agents do not retry it.
            BatchError::BodyTooLarge { .. } => RpcError::invalid_argument(err.to_string()),
            BatchError::Budget(err) => err.into(),
        }
    }
}

impl PushBatch {
    pub(crate) fn new(limits: Arc<Limits>, budget: Arc<RequestBudget>) -> Self {
        Self {
            limits,
            budget,
            profiles: Vec::new(),
            rejections: Vec::new(),
            decompressed_bytes: 0,
        }
    }

    /// The request's memory budget: what building its profiles charges.
    pub fn budget(&self) -> &Arc<RequestBudget> {
        &self.budget
    }

    /// Decompresses a pushed `raw_profile` (gzip or plain), within the
    /// profile size limit, the request's body limit and its budget. A
    /// profile over the size limit is a rejection; a request over the body
    /// limit or its budget fails whole.
    pub fn decompress<'a>(
        &mut self,
        labels: &Labels,
        raw: &'a [u8],
    ) -> Result<Option<std::borrow::Cow<'a, [u8]>>, BatchError> {
        let body_limit = self.limits.ingestion_body_limit_bytes();
        let body_left = body_limit.saturating_sub(self.decompressed_bytes);
        let profile_limit = match self.limits.max_profile_size_bytes {
            0 => usize::MAX,
            limit => limit,
        };
        // Decompression stops at the smaller limit, so a small gzip bomb
        // never inflates past what the request may hold.
        let limit = profile_limit.min(body_left).max(1);
        match gunzip_if_compressed(raw, limit, &self.budget) {
            Ok(bytes) => {
                self.count_decompressed(bytes.len())?;
                Ok(Some(bytes))
            }
            Err(GzipError::TooLarge { .. }) if body_left < profile_limit => {
                Err(BatchError::BodyTooLarge { limit: body_limit })
            }
            Err(GzipError::Budget(err)) => Err(err.into()),
            Err(err) => {
                let source = match err {
                    GzipError::TooLarge { limit } => pprof::DecodeError::TooLarge { limit },
                    GzipError::Invalid { source } => pprof::DecodeError::Gzip { source },
                    GzipError::Budget(err) => pprof::DecodeError::Budget(err),
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
    fn count_decompressed(&mut self, bytes: usize) -> Result<(), BatchError> {
        self.decompressed_bytes = self.decompressed_bytes.saturating_add(bytes);
        let limit = self.limits.ingestion_body_limit_bytes();
        if self.decompressed_bytes > limit {
            return Err(BatchError::BodyTooLarge { limit });
        }
        Ok(())
    }

    /// Decodes a raw pushed profile and adds it, or records why it cannot
    /// be decoded. What it decodes into is charged to the budget first.
    pub fn add_raw(&mut self, labels: &Labels, raw: &[u8]) -> Result<(), BatchError> {
        let Some(bytes) = self.decompress(labels, raw)? else {
            return Ok(());
        };
        self.budget.charge(pprof::decoded_size(&bytes), DECODED)?;
        match pprof::decode_plain(&bytes) {
            Ok(profile) => self.add(labels.clone(), profile, bytes.len())?,
            Err(source) => self.reject(Rejection::invalid(
                &ValidationError::from_decode(labels, source),
                bytes.len(),
            )),
        }
        Ok(())
    }

    /// Adds a decoded profile of `pprof_bytes` uncompressed bytes (already
    /// charged to the budget); its labels are charged here.
    pub fn add(&mut self, labels: Labels, profile: Profile, pprof_bytes: usize) -> Result<(), BatchError> {
        let label_bytes: usize = labels.iter().map(|label| label.name.len() + label.value.len()).sum();
        self.budget
            .charge(2 * size_of::<ReceivedProfile>() + 2 * label_bytes, LABELS)?;
        self.profiles.push(ReceivedProfile {
            labels,
            profile,
            bytes: pprof_bytes + label_bytes,
        });
        Ok(())
    }

    pub fn reject(&mut self, rejection: Rejection) {
        self.rejections.push(rejection);
    }
}

/// What decoding a raw profile charges the budget as.
const DECODED: &str = "the decoded pprof profile";
/// What the labels of each profile charge the budget as.
const LABELS: &str = "the labels of the request's profiles";

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
        let mut batch = PushBatch::new(Arc::new(Limits::default()), unlimited());
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
        let mut batch = PushBatch::new(Arc::new(limits), unlimited());
        batch.add_raw(&labels(), &gzip(&[0u8; 1000])).unwrap();
        assert_eq!(batch.rejections[0].reason, "profile_size_limit");

        // Room for exactly two profiles (a power-of-two division is exact).
        let two = 2 * raw().len();
        let limits = Limits {
            ingestion_body_limit_mb: two as f64 / 1_048_576.0,
            ..Limits::default()
        };
        let mut batch = PushBatch::new(Arc::new(limits.clone()), unlimited());
        batch.add_raw(&labels(), &raw()).unwrap();
        batch.add_raw(&labels(), &gzip(&raw())).unwrap();
        let err = batch.add_raw(&labels(), &raw()).unwrap_err();
        assert_eq!(err, BatchError::BodyTooLarge { limit: two });

        // Without a profile limit, a gzip bomb stops at the body limit.
        let bomb = gzip(&vec![0u8; 10 << 20]);
        let mut batch = PushBatch::new(
            Arc::new(Limits {
                max_profile_size_bytes: 0,
                ..limits
            }),
            unlimited(),
        );
        assert_eq!(
            batch.add_raw(&labels(), &bomb).unwrap_err(),
            BatchError::BodyTooLarge { limit: two }
        );
    }

    #[test]
    fn test_what_profiles_decode_into_is_charged_and_fails_the_request() {
        // 10,000 empty samples: 20 KB of pprof, hundreds of KB decoded.
        let mut bytes = raw();
        bytes.extend([0x12, 0x00].repeat(10_000));
        let mut batch = PushBatch::new(Arc::new(Limits::default()), unlimited());
        batch.add_raw(&labels(), &bytes).unwrap();
        assert!(batch.budget().used() > 10_000 * 72, "{}", batch.budget().used());
        let small = Arc::new(RequestBudget::standalone(100_000, "-distributor.max-request-memory"));
        let mut batch = PushBatch::new(Arc::new(Limits::default()), small);
        let err = batch.add_raw(&labels(), &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::Budget(BudgetError::RequestTooLarge { limit: 100_000, .. })
            ),
            "{err}"
        );
        assert!(batch.profiles.is_empty());
    }

    fn unlimited() -> Arc<RequestBudget> {
        Arc::new(RequestBudget::unlimited())
    }
}
