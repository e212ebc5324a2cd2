//! What build is running, for `/api/v1/status/buildinfo` and
//! `flamedb_build_info`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: &'static str,
    /// The git commit the binary was built from, or `unknown`.
    pub revision: &'static str,
    /// The compiler that built it.
    pub rustc: &'static str,
}

impl BuildInfo {
    pub const CURRENT: Self = Self {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("FLAMEDB_REVISION"),
        rustc: env!("FLAMEDB_RUSTC_VERSION"),
    };
}
