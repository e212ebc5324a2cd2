//! Any bytes as a pushed `raw_profile` (gzip or plain): decoding,
//! validation, normalization and splitting never panic, never exceed the
//! size limit, and stay within the request's memory budget (what they
//! charge it, and the fuzzer's -malloc_limit_mb on what they allocate).
#![no_main]

use flamedb_model::budget::RequestBudget;
use flamedb_model::{Labels, Limits, prepare_profile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let labels = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "fuzz")]);
    let limits = Limits {
        reject_older_than: std::time::Duration::ZERO,
        reject_newer_than: std::time::Duration::ZERO,
        ..Limits::default()
    };
    let budget = RequestBudget::standalone(256 << 20, "-distributor.max-request-memory");
    if let Ok(series) = prepare_profile(data, &labels, &limits, 1_700_000_000_000_000_000, &budget) {
        for part in series {
            let _ = flamedb_model::typed_series(&part.labels, &part.profile);
        }
    }
});
