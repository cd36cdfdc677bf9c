//! The values config keys take, read from their TOML strings: durations,
//! sizes, `host:port` addresses, and whether an address is loopback. Each
//! error names the key and the value as written. Pure: no name is resolved
//! (a host name may resolve anywhere, so only `localhost` counts as local).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `value` as a duration such as "10s" or "2m", or `default` when unset.
pub(super) fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v.trim())
            .map_err(|e| format!("{key} = {v:?}: not a duration such as \"10s\" or \"2m\": {e}")),
    }
}

/// `value` as a byte count such as "64MiB", or `default` when unset.
pub(super) fn size(key: &str, value: Option<&str>, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("{key} = {v:?}: not a size such as \"64MiB\": {e}")),
    }
}

/// `value`, where `key` serves metrics, as an address and port such as
/// `example`; `None` when unset.
pub(super) fn metrics_addr(
    key: &str,
    value: Option<&str>,
    example: &str,
) -> Result<Option<SocketAddr>, String> {
    value
        .map(|m| {
            m.trim().parse::<SocketAddr>().map_err(|_| {
                format!("{key} = {m:?}: expected an address and port such as \"{example}\"")
            })
        })
        .transpose()
}

/// Refuse `value` unless it reads "host:port" with a host and a port number.
pub(super) fn check_host_port(key: &str, value: &str) -> Result<(), String> {
    let ok = match value.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{key} = {value:?}: expected \"host:port\""))
    }
}

/// True when the host of "host:port" is a loopback address or `localhost`.
/// Any other name may resolve anywhere, so it counts as remote.
pub fn host_is_loopback(host_port: &str) -> bool {
    let Some((host, _)) = host_port.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when `addr` is a loopback address.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback(),
    }
}

/// A duration as people write it in the config: "5m", "1h 30s".
pub fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_values_take_the_default_and_bad_ones_name_key_and_value() {
        let ten = Duration::from_secs(10);
        assert_eq!(duration("a.b", None, ten), Ok(ten));
        assert_eq!(
            duration("a.b", Some(" 2m "), ten),
            Ok(Duration::from_secs(120))
        );
        let e = duration("a.b", Some("soon"), ten).unwrap_err();
        assert!(e.starts_with("a.b = \"soon\": not a duration"), "{e}");
        assert_eq!(size("a.c", None, 7), Ok(7));
        assert_eq!(size("a.c", Some("64MiB"), 7), Ok(64 << 20));
        let e = size("a.c", Some("big"), 7).unwrap_err();
        assert!(e.starts_with("a.c = \"big\": not a size"), "{e}");
    }

    #[test]
    fn host_port_needs_a_host_and_a_port_number() {
        for ok in ["h:80", "web1.example:7700", "[::1]:7700", "10.0.0.1:0"] {
            assert_eq!(check_host_port("k", ok), Ok(()), "{ok}");
        }
        for bad in ["h", ":80", "h:", "h:99999", "h:port"] {
            let e = check_host_port("k", bad).unwrap_err();
            assert_eq!(e, format!("k = {bad:?}: expected \"host:port\""));
        }
    }

    #[test]
    fn only_loopback_addresses_and_localhost_count_as_local() {
        for local in [
            "127.0.0.1:1",
            "127.0.0.2:1",
            "[::1]:1",
            "localhost:1",
            "LocalHost:1",
        ] {
            assert!(host_is_loopback(local), "{local}");
        }
        for remote in [
            "10.1.2.3:1",
            "[::2]:1",
            "web1.example:1",
            "localhost",
            "0.0.0.0:1",
        ] {
            assert!(!host_is_loopback(remote), "{remote}");
        }
        assert!(is_loopback(&"127.0.0.1:7700".parse().unwrap()));
        assert!(is_loopback(&"[::1]:7700".parse().unwrap()));
        assert!(!is_loopback(&"0.0.0.0:7700".parse().unwrap()));
    }

    #[test]
    fn durations_print_as_they_are_written() {
        assert_eq!(fmt_dur(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_dur(Duration::from_millis(500)), "500ms");
    }
}
