//! Addresses as the data plane stores them: four native words in network byte order, and
//! a family byte.

use std::net::IpAddr;

use lbx_common::{Addr, FAMILY_V4, FAMILY_V6};

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// Network-order bytes as the four native words the data plane compares and hashes.
pub fn to_words(ip: IpAddr) -> Addr {
    let mut a = [0u32; 4];
    match ip {
        IpAddr::V4(v4) => a[0] = u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            for (w, c) in a.iter_mut().zip(v6.octets().chunks_exact(4)) {
                *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    a
}

pub fn from_words(a: Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(a[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (c, w) in o.chunks_exact_mut(4).zip(a) {
            c.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// The prefix `addr`/`len` as (network bits, host-bit mask) in the data plane's word form:
/// the outer source is `network | (hash & hostmask)`.
pub fn prefix_words(addr: IpAddr, len: u8) -> (Addr, Addr) {
    let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let len = u32::from(len).min(bits);
    let host_mask: u128 = if len == 0 {
        u128::MAX
    } else {
        (1u128 << (128 - len)).wrapping_sub(1)
    };
    let (net, mask) = match addr {
        IpAddr::V4(v4) => {
            let host = (host_mask >> 96) as u32;
            let net = u32::from(v4) & !host;
            (
                IpAddr::from(net.to_be_bytes()),
                IpAddr::from(host.to_be_bytes()),
            )
        }
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !host_mask;
            (
                IpAddr::from(net.to_be_bytes()),
                IpAddr::from(host_mask.to_be_bytes()),
            )
        }
    };
    (to_words(net), to_words(mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for ip in ["10.1.2.3", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(from_words(to_words(ip), family(ip)), ip);
        }
    }

    #[test]
    fn prefix_splits_network_and_host_bits() {
        let (net, mask) = prefix_words("172.16.9.9".parse().unwrap(), 16);
        assert_eq!(
            from_words(net, FAMILY_V4),
            "172.16.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            from_words(mask, FAMILY_V4),
            "0.0.255.255".parse::<IpAddr>().unwrap()
        );
        let (net, mask) = prefix_words("100::".parse().unwrap(), 64);
        assert_eq!(
            from_words(net, FAMILY_V6),
            "100::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            from_words(mask, FAMILY_V6),
            "::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
        );
        let (_, mask) = prefix_words("10.0.0.2".parse().unwrap(), 32);
        assert_eq!(mask, [0; 4]);
    }
}
