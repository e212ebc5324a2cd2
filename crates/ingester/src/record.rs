//! The WAL record of one push: the tenant and, per profile, its series
//! labels, ID and normalized pprof bytes. A storage format of the ingester
//! only (not an API): protobuf, so fields can be added compatibly.

use bytes::Bytes;
use flamedb_model::pprof::Profile;
use flamedb_model::{Label, Labels, ProfileId};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WalRecord {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(message, repeated, tag = "2")]
    pub profiles: Vec<WalProfile>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WalProfile {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<WalLabel>,
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    /// The profile, as plain (not gzip'd) pprof.
    #[prost(bytes = "bytes", tag = "3")]
    pub pprof: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WalLabel {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A record that cannot be read back (never written by flamedb itself).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("WAL record is not a valid protobuf message: {0}")]
    Record(prost::DecodeError),
    #[error("WAL record holds a profile ID of {0} bytes instead of 16")]
    ProfileId(usize),
    #[error("WAL record holds a profile that is not valid pprof: {0}")]
    Profile(prost::DecodeError),
}

/// One profile of a record, decoded.
#[derive(Debug)]
pub(crate) struct RecordProfile {
    pub labels: Labels,
    pub id: ProfileId,
    pub profile: Profile,
}

pub(crate) fn encode(tenant: &str, profiles: impl IntoIterator<Item = (Labels, ProfileId, Bytes)>) -> Vec<u8> {
    WalRecord {
        tenant: tenant.to_owned(),
        profiles: profiles
            .into_iter()
            .map(|(labels, id, pprof)| WalProfile {
                labels: labels
                    .into_vec()
                    .into_iter()
                    .map(|label| WalLabel {
                        name: label.name,
                        value: label.value,
                    })
                    .collect(),
                id: id.0.to_vec(),
                pprof,
            })
            .collect(),
    }
    .encode_to_vec()
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(String, Vec<RecordProfile>), RecordError> {
    let record = WalRecord::decode(bytes).map_err(RecordError::Record)?;
    let profiles = record
        .profiles
        .into_iter()
        .map(|profile| {
            let id = ProfileId::from_slice(&profile.id).ok_or(RecordError::ProfileId(profile.id.len()))?;
            Ok(RecordProfile {
                labels: Labels::new(
                    profile
                        .labels
                        .into_iter()
                        .map(|label| Label::new(label.name, label.value))
                        .collect(),
                ),
                id,
                profile: Profile::decode(profile.pprof).map_err(RecordError::Profile)?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((record.tenant, profiles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_record_round_trip() {
        let profile = Profile {
            time_nanos: 42,
            string_table: vec![String::new(), "x".into()],
            ..Profile::default()
        };
        let labels = Labels::from_pairs([("service_name", "app"), ("__name__", "cpu")]);
        let bytes = encode(
            "tenant-a",
            [(labels.clone(), ProfileId([7; 16]), Bytes::from(profile.encode_to_vec()))],
        );
        let (tenant, profiles) = decode(&bytes).unwrap();
        assert_eq!(tenant, "tenant-a");
        assert_eq!(profiles.len(), 1);
        assert_eq!(
            (&profiles[0].labels, profiles[0].id, &profiles[0].profile),
            (&labels, ProfileId([7; 16]), &profile)
        );
        assert!(matches!(decode(&[0xff, 0xff]), Err(RecordError::Record(_))));
    }
}
