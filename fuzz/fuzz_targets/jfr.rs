//! Any bytes as a JFR recording sent to `/ingest?format=jfr`: parsed or
//! refused, never a panic, and never past the request's memory budget.
#![no_main]

use flamedb_model::budget::RequestBudget;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let budget = RequestBudget::standalone(256 << 20, "-distributor.max-request-memory");
    let _ = flamedb_model::jfr::parse_within(data, &budget);
});
