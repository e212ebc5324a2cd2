//! Tenants. With multitenancy off (the default) every request belongs to
//! `anonymous` and `X-Scope-OrgID` is ignored; with it on, the header is
//! required and validated: letters, digits and `! - _ . * ' ( )`, at most
//! 150 bytes, not `.` or `..`. A `:key=value` suffix is dropped; `a|b`
//! names several tenants, which only reads accept.

use std::fmt;

use http::HeaderMap;

use crate::error::{ErrorCode, RpcError};

/// The header that carries the tenant ID.
pub const ORG_ID_HEADER: &str = "X-Scope-OrgID";
/// The tenant of every request when multitenancy is off.
pub const DEFAULT_TENANT: &str = "anonymous";
const MAX_TENANT_ID_LENGTH: usize = 150;

/// A validated tenant ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `id` with the tenant ID rules.
    pub fn new(id: &str) -> Result<Self, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_ID_LENGTH {
            return Err(TenantError::TooLong {
                length: id.len(),
                limit: MAX_TENANT_ID_LENGTH,
            });
        }
        if id == "." || id == ".." {
            return Err(TenantError::Reserved { id: id.to_owned() });
        }
        if let Some(character) = id.chars().find(|&c| !is_tenant_char(c)) {
            return Err(TenantError::InvalidCharacter {
                id: id.to_owned(),
                character,
            });
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant used when multitenancy is off.
    pub fn anonymous() -> Self {
        Self(DEFAULT_TENANT.to_owned())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')')
}

/// Why a request has no acceptable tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("no org id: the X-Scope-OrgID header is required when multitenancy is enabled")]
    Missing,
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is {length} bytes long, the limit is {limit}")]
    TooLong { length: usize, limit: usize },
    #[error("tenant id {id:?} is not allowed")]
    Reserved { id: String },
    #[error("tenant id {id:?} contains {character:?}; allowed are letters, digits and ! - _ . * ' ( )")]
    InvalidCharacter { id: String, character: char },
    #[error("the X-Scope-OrgID header is not valid UTF-8")]
    NotUtf8,
    #[error("{count} tenant ids given, this request accepts only one")]
    Multiple { count: usize },
}

impl From<TenantError> for RpcError {
    fn from(err: TenantError) -> Self {
        Self::new(ErrorCode::Unauthenticated, err.to_string())
    }
}

/// How requests are assigned to tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tenancy {
    pub multitenancy_enabled: bool,
}

impl Tenancy {
    /// The tenants a request names: one, or several (`a|b`) for reads.
    pub fn tenants(&self, headers: &HeaderMap) -> Result<Vec<TenantId>, TenantError> {
        if !self.multitenancy_enabled {
            return Ok(vec![TenantId::anonymous()]);
        }
        let header = headers.get(ORG_ID_HEADER).ok_or(TenantError::Missing)?;
        let value = header.to_str().map_err(|_| TenantError::NotUtf8)?.trim();
        if value.is_empty() {
            return Err(TenantError::Missing);
        }
        let mut tenants = value
            .split('|')
            .map(|id| TenantId::new(id.split_once(':').map_or(id, |(tenant, _metadata)| tenant)))
            .collect::<Result<Vec<_>, _>>()?;
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }

    /// The single tenant of a request, as writes require.
    pub fn tenant(&self, headers: &HeaderMap) -> Result<TenantId, TenantError> {
        let mut tenants = self.tenants(headers)?;
        match tenants.len() {
            1 => Ok(tenants.remove(0)),
            count => Err(TenantError::Multiple { count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(org_id: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(org_id) = org_id {
            headers.insert(ORG_ID_HEADER, HeaderValue::from_str(org_id).unwrap());
        }
        headers
    }

    #[test]
    fn test_multitenancy_off_is_always_anonymous() {
        let tenancy = Tenancy::default();
        assert_eq!(tenancy.tenant(&headers(None)).unwrap().as_str(), "anonymous");
        assert_eq!(
            tenancy.tenant(&headers(Some("ignored|x"))).unwrap().as_str(),
            "anonymous"
        );
    }

    #[test]
    fn test_multitenancy_on_validates_the_header() {
        let tenancy = Tenancy {
            multitenancy_enabled: true,
        };
        assert_eq!(tenancy.tenant(&headers(None)), Err(TenantError::Missing));
        assert_eq!(tenancy.tenant(&headers(Some(" "))), Err(TenantError::Missing));
        assert_eq!(
            tenancy.tenant(&headers(Some("team-a_1.(x)*'!"))).unwrap().as_str(),
            "team-a_1.(x)*'!"
        );
        assert_eq!(
            tenancy.tenant(&headers(Some("team:env=prod"))).unwrap().as_str(),
            "team"
        );
        assert!(matches!(
            tenancy.tenant(&headers(Some("a/b"))),
            Err(TenantError::InvalidCharacter { character: '/', .. })
        ));
        assert!(matches!(
            tenancy.tenant(&headers(Some(".."))),
            Err(TenantError::Reserved { .. })
        ));
        let long = "x".repeat(151);
        assert!(matches!(
            tenancy.tenant(&headers(Some(&long))),
            Err(TenantError::TooLong { length: 151, .. })
        ));
        assert!(tenancy.tenant(&headers(Some(&long[..150]))).is_ok());
        assert_eq!(
            tenancy.tenant(&headers(Some("a|b"))),
            Err(TenantError::Multiple { count: 2 })
        );
        let both: Vec<String> = tenancy
            .tenants(&headers(Some("b|a|b")))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(both, ["a", "b"]);
        assert!(matches!(
            tenancy.tenants(&headers(Some("a||b"))),
            Err(TenantError::Empty)
        ));
    }
}
