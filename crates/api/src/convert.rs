//! Conversions between wire messages and model types.

use flamedb_model::{Label, Labels, ProfileType};

use crate::pb::types::v1::{LabelPair, ProfileType as ProfileTypeProto};

/// The model label set of wire label pairs (sorted by name).
pub fn labels_from_pairs(pairs: Vec<LabelPair>) -> Labels {
    Labels::new(
        pairs
            .into_iter()
            .map(|pair| Label::new(pair.name, pair.value))
            .collect(),
    )
}

/// The wire label pairs of a label set.
pub fn labels_to_pairs(labels: &Labels) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|label| LabelPair {
            name: label.name.clone(),
            value: label.value.clone(),
        })
        .collect()
}

/// The wire form of a profile type.
pub fn profile_type_to_proto(profile_type: &ProfileType) -> ProfileTypeProto {
    ProfileTypeProto {
        id: profile_type.id(),
        name: profile_type.name.clone(),
        sample_type: profile_type.sample_type.clone(),
        sample_unit: profile_type.sample_unit.clone(),
        period_type: profile_type.period_type.clone(),
        period_unit: profile_type.period_unit.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_labels_round_trip_sorted() {
        let pairs = vec![
            LabelPair {
                name: "b".into(),
                value: "2".into(),
            },
            LabelPair {
                name: "a".into(),
                value: "1".into(),
            },
        ];
        let labels = labels_from_pairs(pairs);
        assert_eq!(labels.render(), r#"{a="1", b="2"}"#);
        assert_eq!(labels_to_pairs(&labels)[0].name, "a");
    }

    #[test]
    fn test_profile_type_to_proto() {
        let proto = profile_type_to_proto(&ProfileType::parse("memory:inuse_space:bytes:space:bytes").unwrap());
        assert_eq!(proto.id, "memory:inuse_space:bytes:space:bytes");
        assert_eq!((proto.name.as_str(), proto.sample_unit.as_str()), ("memory", "bytes"));
    }
}
