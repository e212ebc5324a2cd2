//! What the benchmark measures of processes and disks: CPU time and
//! memory from `/proc`, bytes of directories and of a bucket's blocks.

use std::path::Path;

/// CPU seconds (user + system, all threads) the processes used so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // USER_HZ: the unit of /proc/<pid>/stat times, 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / TICKS_PER_SECOND)
        })
        .sum()
}

/// The resident memory of a process now.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory a process had since it started.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of the complete blocks in a filesystem bucket: those the
/// compactor wrote, and those as uploaded (level 1).
pub fn bucket_block_bytes(bucket: &Path) -> (u64, u64) {
    let mut compacted = 0;
    let mut uploaded = 0;
    let tenants = std::fs::read_dir(bucket).into_iter().flatten().filter_map(Result::ok);
    for tenant in tenants {
        let blocks = std::fs::read_dir(tenant.path().join("blocks"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok);
        for block in blocks {
            let Ok(meta) = flamedb_storage::block::read_meta(&block.path()) else {
                continue;
            };
            let bytes = dir_size(&block.path());
            if meta.compaction.level >= 2 {
                compacted += bytes;
            } else {
                uploaded += bytes;
            }
        }
    }
    (compacted, uploaded)
}
