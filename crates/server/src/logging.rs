//! Structured logs on stderr, as lines for people (`logfmt`) or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ServerConfig};

/// Installs the global log subscriber; the level comes from the
/// configuration only (no environment variable).
pub fn init(config: &ServerConfig) {
    // Transport crates are chatty at debug; keep them at warn.
    let filter = EnvFilter::new(format!("{},h2=warn,hyper=warn,tower=warn", config.log_level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.log_format {
        LogFormat::Logfmt => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
