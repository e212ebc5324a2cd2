//! `meta.json`: what a block is and which files it has. It is written
//! last, locally and in object storage: a block without it is incomplete.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    pub version: u32,
    #[serde(with = "ulid_text")]
    pub id: Ulid,
    /// Time of the first and last profile, ms since the epoch.
    pub min_time: i64,
    pub max_time: i64,
    pub stats: BlockStats,
    /// Every file of the block but `meta.json`, sorted by path.
    pub files: Vec<BlockFile>,
    /// Who wrote it: `ingester` (or, later, `compactor`).
    pub source: String,
    pub compaction: Compaction,
    /// Set when the block also holds its profiles merged per series and
    /// time bucket (`downsampled.parquet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downsample: Option<Downsample>,
}

/// How a block's profiles are pre-merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Downsample {
    /// The buckets' lengths (ms), finest first, each a multiple of the one
    /// before; a bucket starts at a multiple of its length.
    pub resolutions_ms: Vec<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    pub num_series: u64,
    /// Rows: one per profile and sample type.
    pub num_profiles: u64,
    pub num_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockFile {
    pub rel_path: String,
    pub size_bytes: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
    /// What a zstd-packed file (series, symbols) unpacks to; 0 for the
    /// profiles table and in blocks written before it was recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncompressed_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compaction {
    /// 1 for blocks written by ingesters.
    pub level: u32,
    /// The level-1 blocks this one holds the data of.
    #[serde(with = "ulid_list")]
    pub sources: Vec<Ulid>,
}

mod ulid_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use ulid::Ulid;

    pub(super) fn serialize<S: Serializer>(id: &Ulid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ulid, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ulid::from_string(&text).map_err(|err| D::Error::custom(format!("block id {text:?}: {err}")))
    }
}

mod ulid_list {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use ulid::Ulid;

    pub(super) fn serialize<S: Serializer>(ids: &[Ulid], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ids.iter().map(Ulid::to_string))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Ulid>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| Ulid::from_string(text).map_err(|err| D::Error::custom(format!("block id {text:?}: {err}"))))
            .collect()
    }
}
