//! flannel's key layout under the prefix: `<prefix>/config` and `<prefix>/subnets/<a.b.c.d-len>`.
//!
//! Invariant: [`parse_subnet_key`] of [`subnet_key`] is the subnet again; any other key is an
//! error naming it, never a panic (keys come from etcd).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

use super::FlannelError;

/// The prefix without trailing slashes (`/coreos.com/network/` is `/coreos.com/network`).
fn trim(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `<prefix>/config`, where the network config lives.
pub(crate) fn config_key(prefix: &str) -> String {
    format!("{}/config", trim(prefix))
}

/// `<prefix>/subnets`: list (and watch) with this as a key prefix to get every lease.
pub(crate) fn subnets_key(prefix: &str) -> String {
    format!("{}/subnets", trim(prefix))
}

/// `<prefix>/subnets/10.244.5.0-24`, the key of the lease on `subnet`.
pub(crate) fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        trim(prefix),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet of a lease key `<prefix>/subnets/10.244.5.0-24`.
///
/// flannel's dual-stack keys append `&<ipv6>-<len>` (`10.244.5.0-24&fd00:5::-64`): the IPv6
/// part is checked and dropped (podswitch is IPv4-only; the IPv4 subnet is still taken).
/// Anything else is an error naming the key, for the caller to log and skip: a key outside
/// `<prefix>/subnets/`, a malformed address or length, or host bits set (`10.244.5.1-24`).
pub(crate) fn parse_subnet_key(prefix: &str, key: &str) -> Result<Ipv4Net, FlannelError> {
    let err = |reason: &str| FlannelError::new(key, reason);
    let dir = format!("{}/", subnets_key(prefix));
    let rest = key
        .strip_prefix(&dir)
        .ok_or_else(|| err(&format!("is not under {dir}")))?;
    let (v4, v6) = match rest.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (rest, None),
    };
    let subnet = parse_net_part(v4)
        .and_then(|(addr, len)| Ipv4Net::new(addr, len).ok())
        .ok_or_else(|| {
            err("is not a flannel subnet key (expected <prefix>/subnets/a.b.c.d-len)")
        })?;
    if subnet.network() != subnet.addr() {
        return Err(err(&format!(
            "{} has host bits set (the subnet would be {})",
            subnet,
            subnet.trunc()
        )));
    }
    if let Some(v6) = v6 {
        let ok = v6
            .rsplit_once('-')
            .and_then(|(a, l)| Some((a.parse::<Ipv6Addr>().ok()?, l)))
            .is_some_and(|(_, l)| is_decimal(l) && l.parse::<u8>().is_ok_and(|l| l <= 128));
        if !ok {
            return Err(err(
                "has a malformed IPv6 part after '&' (expected &<ipv6>-len)",
            ));
        }
    }
    Ok(subnet)
}

/// `a.b.c.d-len` split and parsed (the length in plain decimal digits).
fn parse_net_part(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.rsplit_once('-')?;
    if !is_decimal(len) {
        return None;
    }
    Some((addr.parse().ok()?, len.parse().ok()?))
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::flannel::DEFAULT_PREFIX;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        assert_eq!(config_key(DEFAULT_PREFIX), "/coreos.com/network/config");
        assert_eq!(config_key("/p/"), "/p/config");
        assert_eq!(subnets_key(DEFAULT_PREFIX), "/coreos.com/network/subnets");
        let key = subnet_key(DEFAULT_PREFIX, net("10.244.5.0/24"));
        assert_eq!(key, "/coreos.com/network/subnets/10.244.5.0-24");
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, &key).unwrap(),
            net("10.244.5.0/24")
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network/", &key).unwrap(),
            net("10.244.5.0/24")
        );
        // Dual stack: the IPv6 part is checked and dropped.
        assert_eq!(
            parse_subnet_key(
                DEFAULT_PREFIX,
                "/coreos.com/network/subnets/10.244.5.0-24&fd00:10:244:5::-64"
            )
            .unwrap(),
            net("10.244.5.0/24")
        );
    }

    #[test]
    fn bad_subnet_keys_are_errors_naming_the_key() {
        for key in [
            "/coreos.com/network/config",
            "/other/subnets/10.244.5.0-24",
            "/coreos.com/network/subnets/",
            "/coreos.com/network/subnets/10.244.5.0",
            "/coreos.com/network/subnets/10.244.5.0/24",
            "/coreos.com/network/subnets/10.244.5.0-33",
            "/coreos.com/network/subnets/10.244.5.0-+24",
            "/coreos.com/network/subnets/10.244.5.1-24",
            "/coreos.com/network/subnets/10.244.05.0-24",
            "/coreos.com/network/subnets/10.244.5.0-24&nope",
            "/coreos.com/network/subnets/10.244.5.0-24&fd00::-129",
            "/coreos.com/network/subnets/10.244.5.0-24/extra",
        ] {
            let e = parse_subnet_key(DEFAULT_PREFIX, key).unwrap_err();
            assert_eq!(e.key, key);
        }
    }
}
