//! Identifiers: app ids shown as 8 hex digits, and random UUIDs for unnamed apps and
//! sockets.

use std::fmt;

/// Formats 16 random bytes as a version-4 UUID.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A random UUID from the given generator.
pub fn random_uuid(rng: &mut fastrand::Rng) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    uuid_v4(b)
}

/// An app id: 32 bits, shown as 8 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppId(pub u32);

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// An app id that is not 8 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app id '{0}' is not 8 hex digits")]
pub struct BadAppId(pub String);

impl std::str::FromStr for AppId {
    type Err = BadAppId;
    fn from_str(s: &str) -> Result<Self, BadAppId> {
        // from_str_radix alone would take "+1bb" and shorter forms.
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadAppId(s.into()));
        }
        u32::from_str_radix(s, 16).map(AppId).map_err(|_| BadAppId(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_version_and_variant() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn app_id_is_eight_hex_digits() {
        assert_eq!(AppId(0x1bb).to_string(), "000001bb");
        assert_eq!("f00001bb".parse::<AppId>(), Ok(AppId(0xf00001bb)));
        assert!("f001bb".parse::<AppId>().is_err());
        assert_eq!("zzzzzzzz".parse::<AppId>().unwrap_err().to_string(), "app id 'zzzzzzzz' is not 8 hex digits");
        assert!("+f0001bb".parse::<AppId>().is_err(), "a sign is no hex digit");
    }
}
