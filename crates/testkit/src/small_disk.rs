//! A small tmpfs for disk-full scenarios. Mounting needs root (or
//! CAP_SYS_ADMIN); where it is refused, the test fails unless a skip is
//! allowed ([`crate::missing`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs mounted on a directory, unmounted when dropped (drop it before
/// the temporary directory holding it).
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `dir` (created); where this machine
    /// refuses, fails the test unless a skip is allowed, then `None`.
    pub fn mount(dir: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            crate::missing(
                crate::Need::Root,
                "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN) for a full disk",
            );
            return None;
        }
        Some(Self { dir: dir.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the disk but for `leave` bytes with a ballast file.
    pub fn fill(&self, leave: u64) {
        let stats = nix::sys::statvfs::statvfs(self.path()).unwrap();
        let free = stats.blocks_available() * stats.fragment_size();
        let ballast = std::fs::File::create(self.path().join("ballast")).unwrap();
        let mut remaining = free.saturating_sub(leave);
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut writer = std::io::BufWriter::new(ballast);
        while remaining > 0 {
            let n = remaining.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut writer, &chunk[..n]).is_err() {
                break;
            }
            remaining -= n as u64;
        }
        let _ = std::io::Write::flush(&mut writer);
    }

    /// Removes the ballast.
    pub fn free_up(&self) {
        std::fs::remove_file(self.path().join("ballast")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
