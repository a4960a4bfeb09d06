//! The command line's value parsers: each names the valid range in the field's own words,
//! so that `--weight 70000` says "a weight is 1-65535", not a machine type's range.

use crate::config::{
    MAX_WEIGHT, MIN_WEIGHT,
    endpoint::{self, Endpoint, EndpointError, whole_number},
};

/// A backend's weight: 1 to 65535.
pub fn weight(text: &str) -> Result<u32, String> {
    let range = format!("a weight is {MIN_WEIGHT}-{MAX_WEIGHT}");
    let negative = text
        .strip_prefix('-')
        .is_some_and(|d| whole_number(d).is_some());
    let n = match whole_number(text) {
        Some(n) => n,
        None if negative => u64::MAX,
        None => return Err(format!("weight \"{text}\" is not a number: {range}")),
    };
    match u32::try_from(n) {
        Ok(w) if (MIN_WEIGHT..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => Err(format!(
            "weight {text} is out of range: {range} (to stop new flows, drain the backend)"
        )),
    }
}

/// A port to probe or to ask for load reports: 1 to 65535.
pub fn port(text: &str) -> Result<u16, String> {
    match endpoint::parse_port(text) {
        Ok(endpoint::ALL_PORTS) => Err(format!(
            "port {text} is out of range: a port here is one number, 1-65535"
        )),
        Ok(p) => Ok(p),
        Err(e) => Err(e.to_string()),
    }
}

/// An HTTP status a health check expects: 100 to 599.
pub fn http_status(text: &str) -> Result<u16, String> {
    match whole_number(text).and_then(|n| u16::try_from(n).ok()) {
        Some(s) if (100..=599).contains(&s) => Ok(s),
        _ => Err(format!(
            "HTTP status {text} is out of range: a status is 100-599"
        )),
    }
}

/// A flow's source: the client's address and port.
pub fn flow_source(text: &str) -> Result<Endpoint, EndpointError> {
    Endpoint::parse_one_port(text, "the flow's source")
}

/// A flow's destination: a VIP's address and the flow's port.
pub fn flow_destination(text: &str) -> Result<Endpoint, EndpointError> {
    Endpoint::parse_one_port(text, "the flow's destination")
}

/// An address and port to listen on (`lbx report --listen`, `--metrics-listen`), in the
/// endpoint syntax with one port.
pub fn listen_address(text: &str) -> Result<std::net::SocketAddr, EndpointError> {
    let e = Endpoint::parse_one_port(text, "the address to listen on")?;
    Ok(std::net::SocketAddr::new(e.address, e.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_range() {
        for bad in ["0", "65536", "1099511627776", "-1", "x", ""] {
            let e = weight(bad).unwrap_err();
            assert!(e.contains("1-65535") && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(weight("65535"), Ok(65535));
        for bad in ["0", "70000", "*", "-5"] {
            let e = port(bad).unwrap_err();
            assert!(e.contains("1-65535"), "{bad}: {e}");
        }
        assert_eq!(port("8080"), Ok(8080));
        assert!(http_status("700").unwrap_err().contains("100-599"));
    }
}
