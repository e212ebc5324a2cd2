//! The real `flamedb` binary: started on 127.0.0.1 in a temporary
//! directory, driven over HTTP, stopped with signals. Every process is
//! stopped by PID when its handle drops; its log is printed if a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use flamedb_testkit::{Flamedb, Signal};

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const READY: Duration = Duration::from_secs(30);

fn start(args: &[&str]) -> Flamedb {
    let flamedb = Flamedb::start(BINARY, "flamedb", args);
    flamedb.wait_ready(READY);
    flamedb
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
        flamedb_testkit::missing(flamedb_testkit::Need::Port4040, "127.0.0.1:4040 is in use");
        return;
    }
    let flamedb = start(&["-server.http-listen-port=4040"]);
    assert_eq!(flamedb.http, "127.0.0.1:4040");
    let (status, body) = flamedb.get("/ready").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // Besides the address, only the harness's internal port and gossip
    // settings differ from the defaults (and gossip is not even used by
    // -target=all).
    let (_, config) = flamedb.get("/api/v1/status/config/diff").unwrap();
    assert_eq!(
        config,
        "server:\n  http_listen_address: 127.0.0.1\n  grpc_listen_port: 0\nmemberlist:\n  bind_addr: 127.0.0.1\n  bind_port: 0\n"
    );
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

/// Sends `head` and the first bytes of a body of `Content-Length: 1000`,
/// then stalls; returns the status line of the answer.
fn stall_body(flamedb: &Flamedb, head: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&flamedb.http).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "{head}\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nfoo;bar 1\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(2).any(|window| window == b"\r\n") {
        match stream.read(&mut buffer).unwrap() {
            0 => break,
            read => answer.extend_from_slice(&buffer[..read]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn test_a_stalled_request_body_gets_408() {
    let flamedb = start(&["-server.http-server-read-timeout=1s"]);
    assert_eq!(
        stall_body(&flamedb, "POST /ingest?name=app.cpu HTTP/1.1"),
        "HTTP/1.1 408 Request Timeout"
    );
    assert_eq!(
        stall_body(
            &flamedb,
            "POST /push.v1.PusherService/Push HTTP/1.1\r\nContent-Type: application/proto"
        ),
        "HTTP/1.1 408 Request Timeout"
    );
    // The server goes on.
    let (status, body) = flamedb
        .post("/ingest?name=app.cpu", &[], b"foo;bar 1\n".to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn test_operator_endpoints() {
    let flamedb = start(&[
        "-target=distributor,ingester",
        "-validation.max-label-names-per-series=40",
    ]);

    let (status, buildinfo) = flamedb.get("/api/v1/status/buildinfo").unwrap();
    assert_eq!(status, 200);
    let buildinfo: serde_json::Value = serde_json::from_str(&buildinfo).unwrap();
    assert_eq!(buildinfo["status"], "success");
    assert_eq!(buildinfo["data"]["version"], env!("CARGO_PKG_VERSION"));

    let (status, config) = flamedb.get("/api/v1/status/config").unwrap();
    assert_eq!(status, 200);
    assert!(config.contains("target: distributor,ingester"), "{config}");
    assert!(config.contains("max_label_names_per_series: 40"), "{config}");
    let (_, defaults) = flamedb.get("/api/v1/status/config/default").unwrap();
    assert!(defaults.contains("max_label_names_per_series: 30"), "{defaults}");
    let (_, diff) = flamedb.get("/api/v1/status/config/diff").unwrap();
    assert!(
        diff.contains("max_label_names_per_series: 40") && !diff.contains("max_label_value_length"),
        "{diff}"
    );

    let (status, body) = flamedb.get("/no/such/route").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#), "{body}");

    let (status, metrics) = flamedb.get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("flamedb_build_info{"), "{metrics}");
    assert!(
        metrics.contains(r#"flamedb_request_duration_seconds_count{method="GET",route="/api/v1/status/buildinfo",status_code="200"} 1"#),
        "{metrics}"
    );
    assert!(
        flamedb.log().contains(r#"modules="distributor,ingester""#),
        "{}",
        flamedb.log()
    );
}

#[test]
fn test_sigterm_and_sigint_stop_gracefully() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut flamedb = start(&[]);
        flamedb.signal(signal);
        let status = flamedb.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{signal}: {status}\n{}", flamedb.log());
        let log = flamedb.log();
        assert!(
            log.contains("received a stop signal") && log.contains("stopped"),
            "{log}"
        );
    }
}

#[test]
fn test_json_logs() {
    let flamedb = start(&["-log.format=json"]);
    let log = flamedb.log();
    let first = log.lines().next().unwrap();
    let event: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|err| panic!("{err}: {first}"));
    assert_eq!(event["message"], "starting flamedb");
    assert_eq!(event["level"], "INFO");
}

/// `-ingester.ring.tokens-file-path`, as Pyroscope's documentation spells
/// it, keeps the ingester's tokens across a restart.
#[test]
fn test_the_ingester_ring_alias_keeps_tokens_across_a_restart() {
    let dir = flamedb_testkit::shared_dir();
    let tokens = dir.path().join("tokens.json");
    let flag = format!("-ingester.ring.tokens-file-path={}", tokens.display());
    let data = format!("-pyroscopedb.data-path={}", dir.path().join("data").display());
    let first = {
        let mut flamedb = start(&[&flag, &data]);
        let written = std::fs::read_to_string(&tokens).unwrap();
        assert!(written.contains("tokens"), "{written}");
        let status = flamedb.terminate(Duration::from_secs(60));
        assert!(status.success(), "{status}");
        written
    };
    let _flamedb = start(&[&flag, &data]);
    assert_eq!(std::fs::read_to_string(&tokens).unwrap(), first);
}
