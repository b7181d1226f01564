use std::sync::Arc;

use serde::Serialize;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must match ^[A-Za-z0-9_-]{{1,64}}$")]
pub struct IdError;

/// Identifiers become NATS subject tokens, so only a safe alphabet is allowed:
/// `.`, `*`, `>` and whitespace can never reach a subject.
fn check_id(s: &str) -> Result<(), IdError> {
    let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(IdError) }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A vendor's id; cheap to clone (shared).
    VendorId
);
id_type!(
    /// A user's id as the client (or, with auth, the token) names it.
    UserId
);
id_type!(
    /// The client's name for one of its area subscriptions (unique per
    /// connection; the same rules as a vendor id).
    AreaId
);

/// The two kinds of update a client can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Vendor positions (`location_updated`).
    Location,
    /// Vendor data (`vendor_updated`).
    Vendor,
}

impl Channel {
    /// The wire name (`location` / `vendor`), also the NATS subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Location => "location",
            Self::Vendor => "vendor",
        }
    }
}

/// What a subscription is to: one channel of one vendor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    /// Location or vendor data.
    pub channel: Channel,
    /// Whose updates.
    pub vendor: VendorId,
}

impl Topic {
    /// A topic for a channel and a vendor.
    pub fn new(channel: Channel, vendor: VendorId) -> Self {
        Self { channel, vendor }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.channel.as_str(), self.vendor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_safe_alphabet_only() {
        assert!(VendorId::parse("v1").is_ok());
        assert!(VendorId::parse("A-z_09").is_ok());
        assert!(VendorId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "é", "a\n", &"a".repeat(65)] {
            assert_eq!(VendorId::parse(bad), Err(IdError), "{bad:?}");
        }
    }
}
