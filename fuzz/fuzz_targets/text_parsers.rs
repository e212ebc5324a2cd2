//! Any text as an `/ingest` name, a time (`from`/`until`) or a label
//! selector: parsers answer or refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = flamedb_model::parse_ingest_name(text);
    let _ = flamedb_model::attime::parse(text, 1_700_000_000_000_000_000);
    let _ = flamedb_model::parse_selector(text);
    let _ = flamedb_model::ProfileType::parse(text);
});
