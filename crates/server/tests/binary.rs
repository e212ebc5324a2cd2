//! The real `flamedb` binary: started on 127.0.0.1 in a temporary
//! directory, driven over HTTP, stopped with signals. Every process is
//! stopped by PID when its handle drops; its log is printed if a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `flamedb` process.
struct Flamedb {
    child: Child,
    address: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Flamedb {
    /// Starts `flamedb` with `args`, listening on 127.0.0.1; unless `args`
    /// names a port, on a free one.
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(BINARY);
        command.arg("-server.http-listen-address=127.0.0.1");
        if !args.iter().any(|arg| arg.contains("server.http-listen-port")) {
            command.arg("-server.http-listen-port=0");
        }
        let mut child = command
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening for HTTP/1.1 and h2c")
                    && let Some(address) = find_address(&line)
                {
                    let _ = address_tx.send(address);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut process = Self {
            child,
            address: String::new(),
            log,
            _dir: dir,
        };
        match address_rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => process.address = address,
            Err(_) => panic!("flamedb did not start listening:\n{}", process.log_text()),
        }
        process.wait_ready();
        process
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if get(&self.url("/ready")).is_ok_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("flamedb did not turn ready:\n{}", self.log_text());
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "flamedb did not exit:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Flamedb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- flamedb log ---\n{}\n---", self.log_text());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `127.0.0.1:PORT` in a log line (logfmt or JSON).
fn find_address(line: &str) -> Option<String> {
    let start = line.find("127.0.0.1:")?;
    let digits: String = line[start + 10..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("127.0.0.1:{digits}"))
}

/// A minimal HTTP/1.1 GET; returns the status and the body.
fn get(url: &str) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(url).await.map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|err| err.to_string())?))
    })
}

/// Runs the binary to completion (for flags that print or fail).
fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn test_no_arguments_listens_on_4040() {
    // Binds 127.0.0.1:4040 only when it is free; everything else defaults.
    if std::net::TcpListener::bind("127.0.0.1:4040").is_err() {
        eprintln!("skipping: 127.0.0.1:4040 is in use");
        return;
    }
    let flamedb = Flamedb::start(&["-server.http-listen-port=4040"]);
    assert_eq!(flamedb.address, "127.0.0.1:4040");
    let (status, body) = get(&flamedb.url("/ready")).unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (_, config) = get(&flamedb.url("/api/v1/status/config/diff")).unwrap();
    assert_eq!(config, "server:\n  http_listen_address: 127.0.0.1\n");
}

#[test]
fn test_help_lists_the_flags() {
    for flag in ["-h", "--help", "-help"] {
        let (code, stdout, _) = run(&[flag]);
        assert_eq!(code, 0, "{flag}");
        for name in [
            "--target",
            "--server.http-listen-port",
            "--auth.multitenancy-enabled",
            "--config.file",
        ] {
            assert!(stdout.contains(name), "{flag}: {name} missing:\n{stdout}");
        }
    }
    let (code, stdout, _) = run(&["-version"]);
    assert_eq!((code, stdout.starts_with("flamedb ")), (0, true), "{stdout}");
}

#[test]
fn test_bad_flags_and_config_fail_at_start_naming_them() {
    let (code, _, stderr) = run(&["-no.such-flag=1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--no.such-flag"), "{stderr}");

    let (code, _, stderr) = run(&["-server.http-listen-port=http"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("-server.http-listen-port"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flamedb.yaml");
    std::fs::write(&file, "limits:\n  max_label_names_per_series: many\n").unwrap();
    let (code, _, stderr) = run(&["-config.file", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("limits.max_label_names_per_series"), "{stderr}");

    std::fs::write(&file, "servr:\n  http_listen_port: 1\n").unwrap();
    let (code, _, stderr) = run(&["-config.file", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown field `servr`"), "{stderr}");
}

#[test]
fn test_operator_endpoints() {
    let flamedb = Flamedb::start(&[
        "-target=distributor,ingester",
        "-validation.max-label-names-per-series=40",
    ]);

    let (status, buildinfo) = get(&flamedb.url("/api/v1/status/buildinfo")).unwrap();
    assert_eq!(status, 200);
    let buildinfo: serde_json::Value = serde_json::from_str(&buildinfo).unwrap();
    assert_eq!(buildinfo["status"], "success");
    assert_eq!(buildinfo["data"]["version"], env!("CARGO_PKG_VERSION"));

    let (status, config) = get(&flamedb.url("/api/v1/status/config")).unwrap();
    assert_eq!(status, 200);
    assert!(config.contains("target: distributor,ingester"), "{config}");
    assert!(config.contains("max_label_names_per_series: 40"), "{config}");
    let (_, defaults) = get(&flamedb.url("/api/v1/status/config/default")).unwrap();
    assert!(defaults.contains("max_label_names_per_series: 30"), "{defaults}");
    let (_, diff) = get(&flamedb.url("/api/v1/status/config/diff")).unwrap();
    assert!(
        diff.contains("max_label_names_per_series: 40") && !diff.contains("max_label_value_length"),
        "{diff}"
    );

    let (status, body) = get(&flamedb.url("/no/such/route")).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#), "{body}");

    let (status, metrics) = get(&flamedb.url("/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("flamedb_build_info{"), "{metrics}");
    assert!(
        metrics.contains(r#"flamedb_request_duration_seconds_count{method="GET",route="/api/v1/status/buildinfo",status_code="200"} 1"#),
        "{metrics}"
    );
    assert!(
        flamedb.log_text().contains(r#"modules="distributor,ingester""#),
        "{}",
        flamedb.log_text()
    );
}

#[test]
fn test_sigterm_and_sigint_stop_gracefully() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut flamedb = Flamedb::start(&[]);
        flamedb.signal(signal);
        let status = flamedb.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{signal}: {status}\n{}", flamedb.log_text());
        let log = flamedb.log_text();
        assert!(
            log.contains("received a stop signal") && log.contains("stopped"),
            "{log}"
        );
    }
}

#[test]
fn test_json_logs() {
    let flamedb = Flamedb::start(&["-log.format=json"]);
    let log = flamedb.log_text();
    let first = log.lines().next().unwrap();
    let event: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|err| panic!("{err}: {first}"));
    assert_eq!(event["message"], "starting flamedb");
    assert_eq!(event["level"], "INFO");
}
