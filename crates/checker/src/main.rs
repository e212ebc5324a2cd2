//! `flamedb-checker`: writes profiles with known values to a flamedb
//! through its public API for a while, reads them back, prints a summary
//! line and exits 1 if anything acknowledged is missing, counted twice or
//! wrong.
//!
//! ```text
//! flamedb-checker --push 127.0.0.1:4040 [--query HOST:PORT] [--tenant T]
//!                 [--series 10] [--rate 10] [--writers 1] [--seconds 60]
//!                 [--metrics-file PATH]
//! ```
//!
//! `--metrics-file` writes the counts in Prometheus text format (for a
//! textfile collector).

use std::process::ExitCode;
use std::time::Duration;

use flamedb_checker::{Checker, CheckerConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        value(name).map_or(Ok(default), |text| {
            text.parse()
                .map_err(|_| format!("{name} {text:?} is not a whole number"))
        })
    };
    let parsed = (|| -> Result<(CheckerConfig, u64), String> {
        let push_to = value("--push").ok_or("--push HOST:PORT is required")?;
        let config = CheckerConfig {
            query_from: value("--query").unwrap_or_else(|| push_to.clone()),
            push_to,
            tenant: value("--tenant"),
            series: usize::try_from(number("--series", 10)?).unwrap_or(10),
            rate: usize::try_from(number("--rate", 10)?).unwrap_or(10),
            writers: usize::try_from(number("--writers", 1)?).unwrap_or(1),
            run: format!("{}", std::process::id()),
        };
        Ok((config, number("--seconds", 60)?))
    })();
    let (config, seconds) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("flamedb-checker: {message}");
            return ExitCode::from(2);
        }
    };
    let mut checker = Checker::new(config);
    checker.write_for(Duration::from_secs(seconds));
    // Let the last copies land before reading.
    std::thread::sleep(Duration::from_secs(2));
    match checker.check() {
        Ok(report) => {
            println!("{}", report.summary());
            if let Some(path) = value("--metrics-file")
                && let Err(err) = std::fs::write(&path, report.prometheus_text())
            {
                eprintln!("flamedb-checker: cannot write {path}: {err}");
                return ExitCode::FAILURE;
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("flamedb-checker: {err}");
            ExitCode::FAILURE
        }
    }
}
