//! Any bytes as a WAL segment: opening the WAL replays (and repairs)
//! it without panicking, and what replay yields can be read again.
#![no_main]

use flamedb_wal::{Wal, WalConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(dir.path().join("0000000001.wal"), data).is_err() {
        return;
    }
    let Ok((wal, replay)) = Wal::open(WalConfig::new(dir.path())) else {
        return;
    };
    for record in replay {
        if record.is_err() {
            break;
        }
    }
    drop(wal);
});
