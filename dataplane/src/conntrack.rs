//! Conntrack beyond the rules: forgetting UDP flows whose endpoint went
//! away (UDP has no connection to reset: without this, a client keeps
//! sending to a dead endpoint as long as its conntrack entry lives), and
//! the one conntrack sysctl the agent may set at start,
//! `nf_conntrack_tcp_be_liberal` (see the README's "Out-of-window TCP
//! segments").

use crate::names::Family;
use crate::render::ConntrackTarget;
use crate::{Error, Result};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Deletes conntrack entries.
pub trait Conntrack {
    /// Deletes the UDP entries whose original destination is `target`
    /// and whose reply comes from `endpoint` (address and port: an
    /// endpoint renumbered on the same address loses its old flows);
    /// returns how many went.
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: SocketAddr) -> Result<usize>;

    /// Deletes the UDP entries to `target` that were not translated (their
    /// reply comes from the original destination itself: made while no
    /// rule served it); returns how many went.
    fn delete_udp_untranslated(&mut self, target: ConntrackTarget) -> Result<usize>;
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
    pub fn args(target: ConntrackTarget, endpoint: SocketAddr) -> Vec<String> {
        let mut args = ConntrackTool::target_args(target);
        args.extend([
            "--reply-src".into(),
            endpoint.ip().to_string(),
            "--reply-port-src".into(),
            endpoint.port().to_string(),
        ]);
        args
    }

    /// The arguments of `conntrack` that delete the untranslated UDP
    /// entries to `target`: the reply comes from the address (or, for a
    /// NodePort, the port) that was asked for.
    pub fn untranslated_args(target: ConntrackTarget) -> Vec<String> {
        let mut args = ConntrackTool::target_args(target);
        match target {
            ConntrackTarget::Address(addr) => {
                args.extend(["--reply-src".into(), addr.to_string()]);
            }
            ConntrackTarget::NodePort(_, port) => {
                args.extend(["--reply-port-src".into(), port.to_string()]);
            }
        }
        args
    }

    fn target_args(target: ConntrackTarget) -> Vec<String> {
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
        args
    }

    /// Runs one `conntrack -D`; the number of entries it deleted.
    fn delete(&self, args: &[String]) -> Result<usize> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "conntrack"]);
                c
            }
            None => Command::new("conntrack"),
        };
        let out = cmd.args(args).output().map_err(|e| Error::Spawn {
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

impl Conntrack for ConntrackTool {
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: SocketAddr) -> Result<usize> {
        self.delete(&ConntrackTool::args(target, endpoint))
    }

    fn delete_udp_untranslated(&mut self, target: ConntrackTarget) -> Result<usize> {
        self.delete(&ConntrackTool::untranslated_args(target))
    }
}

/// Records deletions instead of making them (tests, and `portico
/// explain`, which never touches the node's flows).
#[derive(Clone, Debug, Default)]
pub struct RecordingConntrack {
    /// Every deletion asked for, in order.
    pub deleted: Vec<(ConntrackTarget, SocketAddr)>,
    /// Every deletion of untranslated entries asked for, in order.
    pub untranslated: Vec<ConntrackTarget>,
}

impl Conntrack for RecordingConntrack {
    fn delete_udp(&mut self, target: ConntrackTarget, endpoint: SocketAddr) -> Result<usize> {
        self.deleted.push((target, endpoint));
        Ok(0)
    }

    fn delete_udp_untranslated(&mut self, target: ConntrackTarget) -> Result<usize> {
        self.untranslated.push(target);
        Ok(0)
    }
}

/// Where a process finds the network sysctls of its own network
/// namespace.
pub const PROC_SYS_NET: &str = "/proc/sys/net";

/// `net.netfilter.nf_conntrack_tcp_be_liberal`, relative to
/// [`PROC_SYS_NET`].
pub const TCP_BE_LIBERAL: &str = "netfilter/nf_conntrack_tcp_be_liberal";

/// Turns on `net.netfilter.nf_conntrack_tcp_be_liberal` (kube-proxy's
/// `--conntrack-tcp-be-liberal`): conntrack stops marking out-of-window TCP
/// segments INVALID, so NAT keeps translating them. Writes only when the
/// value is not already 1, logs what it found and did, and returns the
/// value it found.
///
/// `proc_sys_net` is [`PROC_SYS_NET`], or the host's `/proc/sys/net`
/// mounted elsewhere where `/proc/sys` is read-only (a container's). The
/// kernel resolves the file in the network namespace of the calling
/// thread, whichever mount it is opened through.
pub fn set_tcp_be_liberal(proc_sys_net: &Path) -> Result<String> {
    let path = proc_sys_net.join(TCP_BE_LIBERAL);
    let error = |e: std::io::Error| {
        let hint = match e.kind() {
            ErrorKind::NotFound => " (no such sysctl: is the nf_conntrack module loaded?)",
            ErrorKind::ReadOnlyFilesystem => {
                " (read-only, as /proc/sys is in a container: mount the host's /proc/sys/net \
                 elsewhere and write there)"
            }
            ErrorKind::PermissionDenied => " (needs CAP_NET_ADMIN)",
            _ => "",
        };
        Error::Sysctl {
            path: path.display().to_string(),
            message: format!("{e}{hint}"),
        }
    };
    let previous = std::fs::read_to_string(&path).map_err(error)?;
    let previous = previous.trim().to_owned();
    if previous == "1" {
        tracing::info!(
            sysctl = "net.netfilter.nf_conntrack_tcp_be_liberal",
            value = 1,
            "conntrack sysctl already set"
        );
    } else {
        std::fs::write(&path, "1\n").map_err(error)?;
        tracing::info!(
            sysctl = "net.netfilter.nf_conntrack_tcp_be_liberal",
            value = 1,
            previous = %previous,
            "set conntrack sysctl"
        );
    }
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `/proc/sys/net` with the sysctl at `value` (`None`:
    /// without it).
    fn proc_sys_net(test: &str, value: Option<&str>) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("portico-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("netfilter")).unwrap();
        if let Some(v) = value {
            std::fs::write(dir.join(TCP_BE_LIBERAL), v).unwrap();
        }
        dir
    }

    #[test]
    fn tcp_be_liberal_is_written_only_when_it_is_off() {
        let dir = proc_sys_net("liberal-off", Some("0\n"));
        assert_eq!(set_tcp_be_liberal(&dir).unwrap(), "0");
        assert_eq!(
            std::fs::read_to_string(dir.join(TCP_BE_LIBERAL)).unwrap(),
            "1\n"
        );

        // Already on: left alone (a write would end the file with a newline).
        let dir = proc_sys_net("liberal-on", Some("1"));
        assert_eq!(set_tcp_be_liberal(&dir).unwrap(), "1");
        assert_eq!(
            std::fs::read_to_string(dir.join(TCP_BE_LIBERAL)).unwrap(),
            "1"
        );
    }

    #[test]
    fn a_missing_tcp_be_liberal_sysctl_is_an_error_that_says_why() {
        let dir = proc_sys_net("liberal-missing", None);
        let err = set_tcp_be_liberal(&dir).unwrap_err();
        assert_eq!(err.metric_label(), "sysctl");
        let msg = err.to_string();
        assert!(msg.contains("nf_conntrack_tcp_be_liberal"), "{msg}");
        assert!(msg.contains("nf_conntrack module"), "{msg}");
    }

    #[test]
    fn deletions_name_the_service_address_or_node_port() {
        let ep: SocketAddr = "10.244.1.5:8053".parse().unwrap();
        assert_eq!(
            ConntrackTool::args(ConntrackTarget::Address("10.96.0.10".parse().unwrap()), ep)
                .join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --reply-src 10.244.1.5 --reply-port-src 8053"
        );
        assert_eq!(
            ConntrackTool::args(
                ConntrackTarget::NodePort(Family::Ipv6, 30053),
                "[fd00::5]:53".parse().unwrap()
            )
            .join(" "),
            "-D -p udp -f ipv6 --orig-port-dst 30053 --reply-src fd00::5 --reply-port-src 53"
        );
        assert_eq!(
            ConntrackTool::untranslated_args(ConntrackTarget::Address(
                "10.96.0.10".parse().unwrap()
            ))
            .join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --reply-src 10.96.0.10"
        );
        assert_eq!(
            ConntrackTool::untranslated_args(ConntrackTarget::NodePort(Family::Ipv4, 30053))
                .join(" "),
            "-D -p udp -f ipv4 --orig-port-dst 30053 --reply-port-src 30053"
        );
    }
}
