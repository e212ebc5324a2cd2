//! The YAML of where data lives: the ingester's local directory and blocks
//! (`pyroscopedb`) and object storage (`storage`), with Pyroscope's key
//! names.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `pyroscopedb:` the ingester's WAL, heads and local blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PyroscopeDbSettings {
    /// Directory of the WAL and the local blocks.
    pub data_path: String,
    /// Width of a head's time window; each window becomes its own block.
    #[serde(with = "humantime_serde")]
    pub max_block_duration: Duration,
    /// Below this much free disk (GiB) uploaded blocks are deleted early.
    pub min_free_disk_gb: u64,
    /// Below this share of free disk (0.05 = 5 %) likewise.
    pub min_disk_available_percentage: f64,
}

impl Default for PyroscopeDbSettings {
    fn default() -> Self {
        Self {
            data_path: "./data".to_owned(),
            max_block_duration: Duration::from_secs(3600),
            min_free_disk_gb: 10,
            min_disk_available_percentage: 0.05,
        }
    }
}

/// `storage:` the object storage blocks are uploaded to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    pub filesystem: FilesystemSettings,
    pub s3: S3Settings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Filesystem,
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemSettings {
    pub dir: String,
}

impl Default for FilesystemSettings {
    fn default() -> Self {
        Self {
            dir: "./data/shared".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// `host[:port]` or a URL; empty: AWS for the region.
    pub endpoint: String,
    pub bucket_name: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Talk plain HTTP to the endpoint.
    pub insecure: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            bucket_name: String::new(),
            region: "us-east-1".to_owned(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            insecure: false,
        }
    }
}

/// A value never shown: configuration pages print `<redacted>` for it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_secret_key_is_never_shown() {
        let settings = S3Settings {
            secret_access_key: Secret("hunter2".to_owned()),
            ..S3Settings::default()
        };
        let yaml = serde_norway::to_string(&settings).unwrap();
        assert!(!yaml.contains("hunter2") && yaml.contains("<redacted>"), "{yaml}");
        assert!(!format!("{settings:?}").contains("hunter2"));
        let read: S3Settings = serde_norway::from_str("secret_access_key: hunter2").unwrap();
        assert_eq!(read.secret_access_key.0, "hunter2");
    }
}
