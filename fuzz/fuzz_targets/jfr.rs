//! Any bytes as a JFR recording sent to `/ingest?format=jfr`: parsed or
//! refused, never a panic or a large allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flamedb_model::jfr::parse(data);
});
