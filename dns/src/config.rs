//! What the server is told: zone, TTL, pod records, its own Service's
//! addresses, listen address, upstreams and stub domains.

use crate::error::{Error, Result};
use crate::wire;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Pod records `a-b-c-d.<ns>.pod.<zone>` (`--pods`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodsMode {
    /// No pod records (NXDOMAIN).
    Disabled,
    /// Any well-formed name answers with the address it spells.
    Insecure,
    /// Only addresses of existing pods in that namespace (the default).
    #[default]
    Verified,
}

impl FromStr for PodsMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disabled" => Ok(PodsMode::Disabled),
            "insecure" => Ok(PodsMode::Insecure),
            "verified" => Ok(PodsMode::Verified),
            _ => Err(Error::Config(format!(
                "pods mode {s:?}: expected disabled, insecure or verified"
            ))),
        }
    }
}

impl fmt::Display for PodsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PodsMode::Disabled => "disabled",
            PodsMode::Insecure => "insecure",
            PodsMode::Verified => "verified",
        })
    }
}

/// A domain forwarded to its own servers (`--stub-domain corp.example=192.168.56.50`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubDomain {
    /// The domain (lowercase, no final dot).
    pub domain: String,
    /// Its servers, tried in order (port 53 unless given).
    pub servers: Vec<SocketAddr>,
}

impl FromStr for StubDomain {
    type Err = Error;

    /// `domain=server[,server…]`, each server `ip`, `ip:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self> {
        let (domain, servers) = s
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("stub domain {s:?}: expected DOMAIN=SERVER")))?;
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || wire::name_from_text(&domain).is_none() {
            return Err(Error::Config(format!("stub domain {s:?}: invalid domain")));
        }
        let servers = servers
            .split(',')
            .map(|a| parse_server(a.trim()))
            .collect::<Result<Vec<_>>>()?;
        Ok(StubDomain { domain, servers })
    }
}

/// Parses `ip`, `ip:port` or `[ipv6]:port` (port 53 by default).
pub fn parse_server(s: &str) -> Result<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| Error::Config(format!("server {s:?}: expected IP or IP:PORT")))
}

/// The nameservers of a resolv.conf (port 53), in order.
pub fn upstreams_from_resolv_conf(path: impl AsRef<Path>) -> Result<Vec<SocketAddr>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
    Ok(parse_resolv_conf(&text))
}

/// See [`upstreams_from_resolv_conf`]. Zone-scoped IPv6 addresses
/// (`fe80::1%eth0`) are left out.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver")
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The server's configuration. `Default` is what `portico dns` starts with
/// in a cluster, minus the upstreams (read from /etc/resolv.conf by the
/// binary, see [`upstreams_from_resolv_conf`]).
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster zone (`--cluster-domain`), default `cluster.local`.
    pub zone: String,
    /// TTL of every record in the zone (`--ttl`), default 5 s.
    pub ttl: u32,
    /// Pod records (`--pods`), default verified.
    pub pods: PodsMode,
    /// The addresses of the DNS server's own Service (`--dns-service-ip`),
    /// one per family: the A/AAAA of `ns.dns.<zone>`, the name server of the
    /// zone's SOA and NS records, and the glue of the apex NS answer. Empty:
    /// `ns.dns.<zone>` exists without addresses (NODATA).
    pub service_ips: Vec<IpAddr>,
    /// UDP and TCP listen address (`--listen`), default `0.0.0.0:53`.
    pub listen: SocketAddr,
    /// Servers for names outside the zone (`--upstream`), tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Domains with their own servers (`--stub-domain`).
    pub stub_domains: Vec<StubDomain>,
    /// Forwarded answers kept at most (entries), default 10,000; 0 disables
    /// the cache.
    pub cache_size: usize,
    /// The longest a forwarded answer is cached, default 1 h.
    pub cache_max_ttl: Duration,
    /// The longest a negative forwarded answer is cached, default 30 min.
    pub cache_max_negative_ttl: Duration,
    /// Time allowed for the upstreams of a query, shared among them (each
    /// gets an equal part of what is left, in order); when all fail or the
    /// time is up the client gets SERVFAIL. Default 2 s.
    pub upstream_timeout: Duration,
    /// At most this many forwarded queries in flight; more get SERVFAIL.
    /// Default 1,000.
    pub max_forwards: usize,
    /// Largest UDP response we send (clients advertising more get this),
    /// default 1232 (DNS flag day 2020).
    pub max_udp_payload: u16,
    /// Threads serving UDP, each with its own `SO_REUSEPORT` socket.
    /// Default 1.
    pub udp_threads: usize,
    /// Idle TCP connections are closed after this, default 10 s.
    pub tcp_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodsMode::Verified,
            service_ips: Vec::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 53)),
            upstreams: Vec::new(),
            stub_domains: Vec::new(),
            cache_size: 10_000,
            cache_max_ttl: Duration::from_secs(3600),
            cache_max_negative_ttl: Duration::from_secs(1800),
            upstream_timeout: Duration::from_secs(2),
            max_forwards: 1000,
            max_udp_payload: 1232,
            udp_threads: 1,
            tcp_timeout: Duration::from_secs(10),
        }
    }
}

impl DnsConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if wire::name_from_text(&self.zone).is_none_or(|n| n.len() <= 1) {
            return Err(Error::Config(format!(
                "zone {:?} is not a domain",
                self.zone
            )));
        }
        if self.udp_threads == 0 {
            return Err(Error::Config("udp_threads must be at least 1".into()));
        }
        if self.max_udp_payload < 512 {
            return Err(Error::Config("max_udp_payload must be at least 512".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_domains_parse() {
        let s: StubDomain = "Corp.Example.=192.168.56.50,[fd00::53]:5353"
            .parse()
            .unwrap();
        assert_eq!(s.domain, "corp.example");
        assert_eq!(
            s.servers,
            vec![
                "192.168.56.50:53".parse().unwrap(),
                "[fd00::53]:5353".parse().unwrap()
            ]
        );
        assert!("corp.example".parse::<StubDomain>().is_err());
        assert!("corp.example=nowhere".parse::<StubDomain>().is_err());
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let text = "search default.svc.cluster.local\nnameserver 10.0.0.2\n# nameserver 1.1.1.1\nnameserver fd00::2\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::2]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn pods_mode_parses() {
        assert_eq!("insecure".parse::<PodsMode>().unwrap(), PodsMode::Insecure);
        assert!("maybe".parse::<PodsMode>().is_err());
    }
}
