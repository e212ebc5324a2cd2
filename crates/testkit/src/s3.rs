//! The S3-compatible server the tests use (`s3s-fs`, installed by
//! `.ci/run` into `.tools/bin`), on a free 127.0.0.1 port, stopped by PID
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

const KEY: &str = "flamedb-test";
const SECRET: &str = "flamedb-test-secret";
const BUCKET: &str = "blocks";

/// A running (or stopped, restartable) `s3s-fs`.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    root: PathBuf,
    binary: PathBuf,
}

impl S3Server {
    fn binary() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("FLAMEDB_S3S_FS").map(PathBuf::from),
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/s3s-fs")),
        ];
        candidates.into_iter().flatten().find(|path| path.is_file())
    }

    /// Starts a server keeping its objects under `root`; when `s3s-fs` is
    /// not installed, fails the test unless a skip is allowed
    /// ([`crate::missing`]), then `None`.
    pub fn start_if_installed(root: &Path) -> Option<Self> {
        let Some(binary) = Self::binary() else {
            crate::missing(
                crate::Need::S3,
                "s3s-fs is not installed (.ci/run installs it into .tools/bin; or set FLAMEDB_S3S_FS)",
            );
            return None;
        };
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            root: root.to_owned(),
            binary,
        };
        server.restart();
        Some(server)
    }

    /// The flamedb flags that use this server as object storage.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "-storage.backend=s3".to_owned(),
            format!("-storage.s3.endpoint=127.0.0.1:{}", self.port),
            "-storage.s3.insecure".to_owned(),
            format!("-storage.s3.bucket-name={BUCKET}"),
            format!("-storage.s3.access-key-id={KEY}"),
            format!("-storage.s3.secret-access-key={SECRET}"),
        ]
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(30), "s3s-fs listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).ok().map(drop)
        });
    }

    /// Kills it (SIGKILL): object storage is down until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where the objects of `tenant` are kept on disk.
    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join(BUCKET).join(tenant)
    }

    /// The block directories of `tenant` in the bucket.
    pub fn blocks(&self, tenant: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.tenant_dir(tenant).join("blocks"))
            .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
