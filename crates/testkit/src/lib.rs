//! Dev-only harness: starts the real `flamedb` binary on 127.0.0.1 (free
//! ports: the process picks them and logs them) in a temporary directory,
//! talks to it over HTTP, signals it, and stops it by PID when dropped
//! (SIGTERM, then SIGKILL), printing its log if the test failed.
//!
//! ```text
//!  Flamedb::start(binary, name, args) ─▶ child process ─▶ "listening ... 127.0.0.1:PORT"
//!      │                                   └─ stderr collected (printed on failure)
//!      ├─ get / get_json / post / post_form / post_proto / metric ─▶ HTTP
//!      └─ signal(SIGTERM|SIGSTOP|SIGCONT) / kill() / wait_exit()
//! ```
//!
//! Also: [`S3Server`] (object storage that can go down), [`SmallDisk`] (a
//! tmpfs to fill) and [`Link`] (a TCP proxy that can be cut, for
//! partitions).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test harness: failing loudly is its job

pub mod counting;
mod link;
mod needs;
mod s3;
mod small_disk;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use link::Link;
pub use needs::{Need, missing, testdata};
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
pub use s3::S3Server;
pub use small_disk::SmallDisk;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `flamedb` process.
pub struct Flamedb {
    name: String,
    child: Child,
    /// `127.0.0.1:PORT` of its HTTP server.
    pub http: String,
    /// `127.0.0.1:PORT` of its internal listener (the ingester API), when
    /// it runs an ingester.
    pub internal: Option<String>,
    /// `127.0.0.1:PORT` of its gossip, when it gossips.
    pub gossip: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    workdir: tempfile::TempDir,
}

impl std::fmt::Debug for Flamedb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flamedb")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl Flamedb {
    /// Starts `binary` with `args` in a fresh temporary directory, on
    /// 127.0.0.1 with a free HTTP port (and a free gossip port), and waits
    /// until it listens. It is not necessarily ready (see [`Self::wait_ready`]).
    pub fn start(binary: &str, name: &str, args: &[&str]) -> Self {
        let workdir = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary);
        command.args([
            "-server.http-listen-address=127.0.0.1",
            "-server.http-listen-port=0",
            "-server.grpc-listen-address=127.0.0.1",
            "-server.grpc-listen-port=0",
            "-memberlist.bind-addr=127.0.0.1",
            "-memberlist.bind-port=0",
        ]);
        let mut child = command
            .args(args)
            .current_dir(workdir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {binary}: {err}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addresses_tx, addresses_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gossip membership started")
                    && let Some(address) = address_after(&line, "bind")
                {
                    let _ = addresses_tx.send(("gossip", address));
                } else if line.contains("listening for internal gRPC")
                    && let Some(address) = address_after(&line, "address")
                {
                    let _ = addresses_tx.send(("internal", address));
                } else if line.contains("listening for HTTP/1.1 and h2c")
                    && let Some(address) = address_after(&line, "address")
                {
                    let _ = addresses_tx.send(("http", address));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut process = Self {
            name: name.to_owned(),
            child,
            http: String::new(),
            internal: None,
            gossip: None,
            log,
            workdir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while process.http.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match addresses_rx.recv_timeout(remaining) {
                Ok(("gossip", address)) => process.gossip = Some(address),
                Ok(("internal", address)) => process.internal = Some(address),
                Ok((_, address)) => process.http = address,
                Err(_) => panic!("{name} did not start listening:\n{}", process.log()),
            }
        }
        process
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's working directory (removed when dropped).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.get_with(path, &[])
    }

    /// GET `path` with `headers`: status and body.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
        let mut request = client().get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().map_err(|err| err.to_string())?))
    }

    /// GET `path` with `Accept: application/json`, expecting 200.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let response = client()
            .get(self.url(path))
            .header("accept", "application/json")
            .send()
            .unwrap_or_else(|err| panic!("GET {path} on {}: {err}", self.name));
        assert_eq!(response.status(), 200, "GET {path} on {}", self.name);
        response.json().unwrap()
    }

    /// POST an HTML form to `path`: status and body.
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let response = client()
            .post(self.url(path))
            .header("accept", "application/json")
            .form(form)
            .send()
            .unwrap_or_else(|err| panic!("POST {path} on {}: {err}", self.name));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    }

    /// POST a protobuf message (Connect unary, `application/proto`) to
    /// `path`: status and body, or the transport error (the process may be
    /// gone).
    pub fn post_proto(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        post_proto(&self.http, path, body)
    }

    /// POST a protobuf body to `path` of the internal listener (the
    /// ingester API); panics when the process runs no ingester.
    pub fn post_internal_proto(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        let internal = self
            .internal
            .as_deref()
            .unwrap_or_else(|| panic!("{} runs no ingester", self.name));
        post_proto(internal, path, body)
    }

    /// POST `body` with `headers` to `path` (query included): status and
    /// body, or the transport error.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        post(&self.http, path, headers, body)
    }

    /// The sum of the samples of metric `name` on `/metrics` (every label
    /// set), if it is there.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_until(timeout, &format!("{} ready", self.name), || {
            matches!(self.get("/ready"), Ok((200, _))).then_some(())
        });
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGTERM, and wait (up to `timeout`) for the process to exit; its
    /// exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        wait_until(timeout, &format!("{name} exits"), || {
            self.child.try_wait().ok().flatten()
        })
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Flamedb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} (pid {}) ---\n{}\n---", self.name, self.pid(), self.log());
        }
        if self.is_running() {
            // A stopped process must be continued to handle SIGTERM.
            self.signal(Signal::SIGCONT);
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
        }
    }
}

/// POST a protobuf message to `path` of the server at `http`
/// (`127.0.0.1:PORT`); for threads that outlive a [`Flamedb`] borrow.
pub fn post_proto(http: &str, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    post(http, path, &[("content-type", "application/proto")], body)
}

/// POST `body` with `headers` to `path` of the server at `http`.
pub fn post(http: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    post_within(http, path, headers, body, REQUEST_TIMEOUT)
}

/// [`post`] with its own timeout (for benchmarks' long queries).
pub fn post_within(
    http: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let mut request = client()
        .post(format!("http://{http}{path}"))
        .timeout(timeout)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    let body = response.bytes().map_err(|err| err.to_string())?;
    Ok((status, body.to_vec()))
}

/// How long a request of a test may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// `127.0.0.1:PORT` following `key` in a log line (logfmt or JSON).
fn address_after(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)?;
    let rest = &line[start..];
    let at = rest.find("127.0.0.1:")?;
    let digits: String = rest[at + 10..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("127.0.0.1:{digits}"))
}

/// Polls `check` until it returns `Some`, or panics naming `what` after
/// `timeout`. Use instead of sleeping then asserting.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory that outlives the processes of a test (tokens files, data).
pub fn shared_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `dir/name` as a string, for flags.
pub fn path_in(dir: &Path, name: &str) -> String {
    PathBuf::from(dir).join(name).display().to_string()
}

/// Flags for the processes of a test cluster: short gossip and heartbeat
/// periods, so membership forms and deaths show within seconds, and a
/// cluster label of its own. The heartbeat timeout and the push timeout
/// leave room for a slow, loaded machine: a live ingester that stalls for
/// a few seconds must stay healthy, and a slow copy must not be given up.
pub fn cluster_flags(label: &str) -> Vec<String> {
    [
        "-memberlist.gossip-interval=100ms",
        "-ingester.heartbeat-period=200ms",
        "-distributor.ring.heartbeat-period=200ms",
        "-compactor.ring.heartbeat-period=200ms",
        "-ring.heartbeat-timeout=5s",
        "-distributor.push.timeout=10s",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([format!("-memberlist.cluster-label={label}")])
    .collect()
}

/// Starts `binary` with `flags` then `extra`, and waits until it is ready.
pub fn start_ready(binary: &str, name: &str, flags: &[String], extra: &[String]) -> Flamedb {
    let args: Vec<&str> = flags.iter().chain(extra).map(String::as_str).collect();
    let node = Flamedb::start(binary, name, &args);
    node.wait_ready(Duration::from_secs(60));
    node
}

/// Starts `count` ingesters (`ingester-1`, ...) that join the gossip of
/// `seed`, each with `flags` then `extra`, and waits until `seed` sees them
/// all ACTIVE.
pub fn start_ingesters(binary: &str, seed: &Flamedb, count: usize, flags: &[String], extra: &[String]) -> Vec<Flamedb> {
    let join = format!("-memberlist.join={}", seed.gossip.clone().expect("the seed gossips"));
    let ingesters = (1..=count)
        .map(|n| {
            let mut args = vec![
                "-target=ingester".to_owned(),
                format!("-ingester.lifecycler.ID=ingester-{n}"),
                join.clone(),
            ];
            args.extend_from_slice(extra);
            start_ready(binary, &format!("ingester-{n}"), flags, &args)
        })
        .collect();
    wait_active_ingesters(seed, count);
    ingesters
}

/// Waits until the ingester ring `node` sees has `count` ACTIVE instances.
pub fn wait_active_ingesters(node: &Flamedb, count: usize) {
    wait_until(Duration::from_secs(30), &format!("{count} ACTIVE ingesters"), || {
        let shards = node.get_json("/ring")["shards"].as_array().cloned().unwrap_or_default();
        (shards.iter().filter(|shard| shard["state"] == "ACTIVE").count() == count).then_some(())
    });
}
