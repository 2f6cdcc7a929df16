//! Forgetting UDP flows whose endpoint went away. UDP has no connection
//! to reset: without this, a client keeps sending to a dead endpoint as
//! long as its conntrack entry lives.

use crate::names::Family;
use crate::render::ConntrackTarget;
use crate::{Error, Result};
use std::net::IpAddr;
use std::process::Command;

/// Deletes conntrack entries.
pub trait Conntrack {
    /// Deletes the UDP entries whose original destination is `target`
    /// and whose reply comes from `endpoint`; returns how many went.
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: IpAddr) -> Result<usize>;
}

/// The `conntrack` tool (conntrack-tools), optionally in a named network
/// namespace.
#[derive(Clone, Debug, Default)]
pub struct ConntrackTool {
    netns: Option<String>,
}

impl ConntrackTool {
    /// In the current network namespace.
    pub fn new() -> Self {
        ConntrackTool::default()
    }

    /// In `/run/netns/<name>`.
    pub fn in_netns(name: &str) -> Self {
        ConntrackTool {
            netns: Some(name.to_owned()),
        }
    }

    /// The arguments of `conntrack` for one deletion.
    pub fn args(target: ConntrackTarget, endpoint: IpAddr) -> Vec<String> {
        let mut args: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        match target {
            ConntrackTarget::Address(addr) => {
                args.extend(["--orig-dst".into(), addr.to_string()]);
            }
            ConntrackTarget::NodePort(family, port) => {
                let f = match family {
                    Family::Ipv4 => "ipv4",
                    Family::Ipv6 => "ipv6",
                };
                args.extend([
                    "-f".into(),
                    f.into(),
                    "--orig-port-dst".into(),
                    port.to_string(),
                ]);
            }
        }
        args.extend(["--reply-src".into(), endpoint.to_string()]);
        args
    }
}

impl Conntrack for ConntrackTool {
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: IpAddr) -> Result<usize> {
        let args = ConntrackTool::args(target, endpoint);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "conntrack"]);
                c
            }
            None => Command::new("conntrack"),
        };
        let out = cmd.args(&args).output().map_err(|e| Error::Spawn {
            program: "conntrack".into(),
            message: e.to_string(),
        })?;
        // "N flow entries have been deleted." (exit status 1 when N is 0).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let deleted = stderr
            .split_whitespace()
            .zip(stderr.split_whitespace().skip(1))
            .find(|(_, w)| *w == "flow")
            .and_then(|(n, _)| n.parse::<usize>().ok());
        match deleted {
            Some(n) => Ok(n),
            None if out.status.success() => Ok(0),
            None => Err(Error::Spawn {
                program: "conntrack".into(),
                message: stderr.trim().to_owned(),
            }),
        }
    }
}

/// Records deletions instead of making them (tests, `portico local`
/// without root).
#[derive(Clone, Debug, Default)]
pub struct RecordingConntrack {
    /// Every deletion asked for, in order.
    pub deleted: Vec<(ConntrackTarget, IpAddr)>,
}

impl Conntrack for RecordingConntrack {
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: IpAddr) -> Result<usize> {
        self.deleted.push((target, endpoint));
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_name_the_service_address_or_node_port() {
        let ep: IpAddr = "10.244.1.5".parse().unwrap();
        assert_eq!(
            ConntrackTool::args(ConntrackTarget::Address("10.96.0.10".parse().unwrap()), ep)
                .join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --reply-src 10.244.1.5"
        );
        assert_eq!(
            ConntrackTool::args(
                ConntrackTarget::NodePort(Family::Ipv6, 30053),
                "fd00::5".parse().unwrap()
            )
            .join(" "),
            "-D -p udp -f ipv6 --orig-port-dst 30053 --reply-src fd00::5"
        );
    }
}
