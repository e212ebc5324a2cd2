//! Profile IDs: 16 bytes, written as a UUID. The distributor gives every
//! series-profile one; every replica stores it, so readers count each
//! profile once however many copies they see.

use std::fmt;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(pub [u8; 16]);

/// A profile ID that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile id {0:?} is not a UUID (32 hex digits, dashes allowed)")]
pub struct ProfileIdError(pub String);

impl ProfileId {
    /// Parses `8-4-4-4-12` hex (dashes optional).
    pub fn parse(text: &str) -> Result<Self, ProfileIdError> {
        let error = || ProfileIdError(text.to_owned());
        let digits: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
        if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(error());
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| error())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| error())?;
        }
        Ok(Self(bytes))
    }

    /// The ID from its 16 bytes; `None` for another length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_profile_ids_round_trip_as_uuids() {
        let text = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
        let id = ProfileId::parse(text).unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(ProfileId::parse("7c9e6679742540de944be07fc1f90ae7").unwrap(), id);
        assert_eq!(ProfileId::from_slice(&id.0), Some(id));
        for bad in [
            "",
            "7c9e6679",
            "zz9e6679-7425-40de-944b-e07fc1f90ae7",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7a",
            "+c9e6679-7425-40de-944b-e07fc1f90ae7",
        ] {
            assert!(ProfileId::parse(bad).is_err(), "{bad}");
        }
        assert!(ProfileId::from_slice(&[1, 2]).is_none());
    }
}
