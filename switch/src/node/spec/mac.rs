//! [`Mac`]: a MAC address that parses and prints itself as `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::EthernetAddress;

/// A MAC address, written and parsed as `aa:bb:cc:dd:ee:ff` (`-` accepted as separator).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)")]
pub struct MacParseError {
    input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`: hex digits of either case, exactly two per
    /// octet, one separator used throughout. Anything else is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError { input: s.into() };
        let bytes = s.as_bytes();
        if bytes.len() != 17 || !matches!(bytes[2], b':' | b'-') {
            return Err(err());
        }
        let sep = bytes[2];
        let mut mac = [0u8; 6];
        for (i, octet) in mac.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != sep {
                return Err(err());
            }
            let pair = std::str::from_utf8(&bytes[at..at + 2]).map_err(|_| err())?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Mac> for EthernetAddress {
    fn from(m: Mac) -> Self {
        EthernetAddress(m.0)
    }
}

impl From<EthernetAddress> for Mac {
    fn from(m: EthernetAddress) -> Self {
        Mac(m.0)
    }
}
