//! What a test needs from the machine beyond the repository, and what
//! happens when it is missing: the test fails, naming what is missing and
//! how to get it, unless `FLAMEDB_ALLOW_SKIP` names the need
//! (comma-separated keys, or `all`). Then it says so and returns, and
//! `scripts/test` leaves every test of that need out of the run by name
//! (each need's tests carry its marker in their names), so that the run
//! counts them as skipped, never as passed. `.ci/run` installs every need
//! it can and allows only `testdata` where `../shared/testdata` is absent
//! and `root` where a tmpfs cannot be mounted.

use std::path::PathBuf;

/// Something a test needs that the repository does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The real agents' profiles of `../shared/testdata`, read in place
    /// (never copied); tests named `*testdata*`.
    Testdata,
    /// Root, to mount a tmpfs; tests named `*full_disk*`.
    Root,
    /// The `s3s-fs` server; tests named `*_s3_*`.
    S3,
    /// Python with `pyroscope-io` in `.tools/python`; tests named
    /// `*python_agent*`.
    PythonAgent,
    /// 127.0.0.1:4040 free; tests named `*4040*`.
    Port4040,
}

impl Need {
    /// Its key in `FLAMEDB_ALLOW_SKIP`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Testdata => "testdata",
            Self::Root => "root",
            Self::S3 => "s3",
            Self::PythonAgent => "python-agent",
            Self::Port4040 => "port-4040",
        }
    }

    fn allowed(self) -> bool {
        std::env::var("FLAMEDB_ALLOW_SKIP").is_ok_and(|allowed| {
            allowed
                .split(',')
                .map(str::trim)
                .any(|key| key == "all" || key == self.key())
        })
    }
}

/// Reports that `need` is missing (`why`: what, and how to get it): fails
/// the test, unless `FLAMEDB_ALLOW_SKIP` names the need; then prints the
/// skip and returns, for the test to stop.
pub fn missing(need: Need, why: &str) {
    let key = need.key();
    if need.allowed() {
        eprintln!("SKIPPED (FLAMEDB_ALLOW_SKIP allows {key}): {why}");
        return;
    }
    panic!(
        "{why}; to run without it, set FLAMEDB_ALLOW_SKIP={key} (scripts/test then leaves out the tests that need it)"
    );
}

/// `../shared/testdata/<kind>` (`pprof`, `jfr`, `otlp`, ...) when present;
/// otherwise [`missing`] and `None`.
pub fn testdata(kind: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata")
        .join(kind);
    if dir.is_dir() {
        return Some(dir);
    }
    missing(Need::Testdata, &format!("{} is absent", dir.display()));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_need_has_its_own_key() {
        let needs = [Need::Testdata, Need::Root, Need::S3, Need::PythonAgent, Need::Port4040];
        let mut keys: Vec<&str> = needs.iter().map(|need| need.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), needs.len());
    }
}
