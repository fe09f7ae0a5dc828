//! Domain scalars of the request, each a newtype with `FromStr`/`Display`.
//! The `FromStr` error is the rule that failed, phrased to follow a field path.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A DNS-1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsLabel(String);

impl DnsLabel {
    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DnsLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_dns_label(s, 63).map(|()| DnsLabel(s.to_string()))
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the DNS-1123 label rule with a length limit.
pub fn check_dns_label(s: &str, max: usize) -> Result<(), String> {
    let rule = format!(
        "must be a DNS-1123 label of at most {max} characters: lower-case letters, digits and '-', starting and ending with a letter or digit"
    );
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{rule} (got {s:?})"))
    }
}

/// Checks the DNS-1123 subdomain rule (Kubernetes object names such as Secret names).
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| check_dns_label(part, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253 characters) (got {s:?})"
        ))
    }
}

/// A Kubernetes release version such as `v1.33.4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeVersion {
    text: String,
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl FromStr for KubeVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("must be a Kubernetes version like v1.33.4 (got {s:?})");
        let rest = s.strip_prefix('v').ok_or_else(bad)?;
        let (core, suffix) = match rest.find(['-', '+']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let num = |p: &str| -> Result<u32, String> {
            if p.is_empty()
                || p.len() > 4
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                Err(bad())
            } else {
                p.parse().map_err(|_| bad())
            }
        };
        let (major, minor, patch) = (num(parts[0])?, num(parts[1])?, num(parts[2])?);
        if !suffix[..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b))
            || suffix.len() > 64
        {
            return Err(bad());
        }
        if major != 1 {
            return Err(format!("must be a Kubernetes 1.x version (got {s:?})"));
        }
        if minor < 28 {
            return Err(format!(
                "must be v1.28 or newer, the oldest release current Cluster API supports (got {s:?})"
            ));
        }
        Ok(KubeVersion {
            text: s.to_string(),
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An IP network in CIDR notation, with no host bits set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let p = self.prefix.min(other.prefix) as u32;
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let p = self.prefix.min(other.prefix) as u32;
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }

    /// True for an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("must be a CIDR such as 10.0.0.0/16 or fd00::/108 (got {s:?})");
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let host_bits_clear = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return Err(format!(
                        "prefix length must be at most 32 for IPv4 (got {s:?})"
                    ));
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix as u32)
                };
                u32::from(a) & !mask == 0
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return Err(format!(
                        "prefix length must be at most 128 for IPv6 (got {s:?})"
                    ));
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix as u32)
                };
                u128::from(a) & !mask == 0
            }
        };
        if !host_bits_clear {
            return Err(format!(
                "must be a network address with no host bits set (got {s:?})"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A login name on the node (as `useradd` accepts it, and not `root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !first_ok || !rest_ok || s.len() > 32 {
            return Err(format!(
                "must be a login name: a lower-case letter or '_', then lower-case letters, digits, '_' or '-', at most 32 characters (got {s:?})"
            ));
        }
        if s == "root" {
            return Err("must not be root: root login is disabled on fledge nodes".to_string());
        }
        Ok(UserName(s.to_string()))
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name or IP address (an API endpoint or a vCenter server).
pub fn check_host(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("must be a host name or IP address (got {s:?})"))
    }
}

/// An `https://` URL with a host, an optional port and path, and no credentials.
pub fn check_https_url(s: &str) -> Result<(), String> {
    let bad = |why: &str| format!("must be an https:// URL {why} (got {s:?})");
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| bad("with a host"))?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("without spaces or control characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("without credentials in it"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or_else(|| bad("with a valid host"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("with a valid host"));
        }
        check_port(tail.strip_prefix(':'), s)?;
        return check_not_metadata(h, s);
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        check_port(port, s)?;
        h
    };
    check_host(host).map_err(|_| bad("with a valid host"))?;
    check_not_metadata(host, s)
}

/// Cloud metadata services reached by name.
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];

/// Cloud metadata services outside the link-local ranges: Alibaba Cloud, AWS (IPv6 IMDS),
/// Google Cloud (IPv6).
const METADATA_IPS: [std::net::IpAddr; 3] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

/// True for an address nothing fledge fetches may reach: link-local (169.254.0.0/16,
/// fe80::/10, where the cloud metadata services and their credentials live, also IPv4-mapped)
/// and the metadata services' other addresses. The one rule for spec URLs and the agent's
/// downloads (redirects and name lookups included).
pub fn is_metadata_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || METADATA_IPS.contains(&ip),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_metadata_ip(IpAddr::V4(v4)),
            None => v6.is_unicast_link_local() || METADATA_IPS.contains(&ip),
        },
    }
}

/// [`is_metadata_ip`] for a URL's host (an IP literal, brackets allowed, or a name).
pub fn is_metadata_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => is_metadata_ip(ip),
        Err(_) => {
            METADATA_NAMES.contains(&bare.trim_end_matches('.').to_ascii_lowercase().as_str())
        }
    }
}

/// A URL's host must not be a link-local or metadata-service address or name.
fn check_not_metadata(host: &str, whole: &str) -> Result<(), String> {
    if is_metadata_host(host) {
        Err(format!(
            "must not point at a link-local or cloud metadata-service address (got {whole:?})"
        ))
    } else {
        Ok(())
    }
}

fn check_port(port: Option<&str>, whole: &str) -> Result<(), String> {
    match port {
        None => Ok(()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!(
                "must have a port between 1 and 65535 (got {whole:?})"
            )),
        },
    }
}

/// A plain text value: non-empty, at most `max` characters, no control characters.
pub fn check_text(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.chars().count() > max {
        return Err(format!(
            "must be at most {max} characters long (got {})",
            s.chars().count()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!(
            "must not contain control characters such as newlines (got {s:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_rejects_host_bits_and_bad_prefixes() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("fd00::/108".parse::<Cidr>().is_ok());
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("at most 32")
        );
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_overlap() {
        let a: Cidr = "10.0.0.0/8".parse().unwrap();
        let b: Cidr = "10.96.0.0/12".parse().unwrap();
        let c: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn kube_versions() {
        let v: KubeVersion = "v1.33.4".parse().unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 33, 4));
        assert!("1.33.4".parse::<KubeVersion>().is_err());
        assert!("v1.33".parse::<KubeVersion>().is_err());
        assert!(
            "v1.20.2"
                .parse::<KubeVersion>()
                .unwrap_err()
                .contains("v1.28 or newer")
        );
        assert!("v1.33.04".parse::<KubeVersion>().is_err());
        assert!("v1.34.0-rc.1".parse::<KubeVersion>().is_ok());
    }

    #[test]
    fn urls_and_hosts() {
        assert!(check_https_url("https://mgmt.example.com:6443").is_ok());
        assert!(check_https_url("https://10.0.0.1").is_ok());
        assert!(check_https_url("https://[fd00::1]:6443/x").is_ok());
        assert!(check_https_url("http://mgmt").is_err());
        assert!(check_https_url("https://user:pw@mgmt").is_err());
        assert!(check_https_url("https://mgmt:0").is_err());
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://[fe80::1]/x",
            "https://[::ffff:169.254.169.254]/x",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://100.100.100.200/x",
        ] {
            assert!(
                check_https_url(url)
                    .unwrap_err()
                    .contains("link-local or cloud metadata-service"),
                "{url}"
            );
        }
        assert!(check_https_url("https://10.0.0.1/x").is_ok());
        assert!(check_host("bad host").is_err());
    }

    #[test]
    fn user_names() {
        assert!("capi".parse::<UserName>().is_ok());
        assert!("root".parse::<UserName>().is_err());
        assert!("Bad".parse::<UserName>().is_err());
        assert!("a:b".parse::<UserName>().is_err());
    }
}
