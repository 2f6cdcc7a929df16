//! The first packet through the node's rules: the node agent renders them
//! (as `portico node` programs them) into the in-memory nftables, and the
//! tracer follows the packet, once per random draw it meets.

use crate::target::From;
use crate::{Action, ChosenNode, Cluster, Error, Resolved, Step, Verdict};
use portico_agent::NodeAgent;
use portico_dataplane::trace::{self, Origin, Outcome, Packet};
use portico_dataplane::{MemoryNft, RecordingConntrack};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// The most outcomes traced (one per combination of random draws).
const MAX_OUTCOMES: usize = 1024;

pub(crate) struct Traced {
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    /// What is wrong with the node's agent.
    pub problems: Vec<String>,
}

fn step(step: impl Into<String>, detail: impl Into<String>) -> Step {
    Step {
        step: step.into(),
        detail: detail.into(),
    }
}

fn proto(r: &Resolved) -> &'static str {
    portico_dataplane::names::proto(r.protocol)
}

/// Which chains and sets differ between two views (a few of them).
fn differences(a: &portico_dataplane::RulesView, b: &portico_dataplane::RulesView) -> String {
    let mut out = Vec::new();
    for (family, ta) in &a.tables {
        let tb = b.tables.get(family);
        for (name, c) in &ta.chains {
            if tb.and_then(|t| t.chains.get(name)) != Some(c) {
                out.push(format!("chain {family} {name}"));
            }
        }
        for (name, set) in &ta.sets {
            if tb.and_then(|t| t.sets.get(name)) != Some(set) {
                out.push(format!("set {family} {name}"));
            }
        }
    }
    for (family, tb) in &b.tables {
        let ta = a.tables.get(family);
        for name in tb.chains.keys() {
            if ta.is_none_or(|t| !t.chains.contains_key(name)) {
                out.push(format!("chain {family} {name}"));
            }
        }
    }
    out.sort();
    out.dedup();
    let more = out.len().saturating_sub(5);
    out.truncate(5);
    let mut text = out.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// The node's rules, rendered by its agent.
pub(crate) fn rules(cluster: &Cluster<'_>, node: &str) -> Result<MemoryNft, Error> {
    let agent = NodeAgent::synced_once(
        node,
        cluster.net,
        &cluster.settings,
        (MemoryNft::new(), RecordingConntrack::default()),
        cluster.world.agent_changes(),
    )
    .map_err(|e| Error::Rules {
        node: node.to_owned(),
        message: format!("{e:#}"),
    })?;
    Ok(agent.proxier().backend().clone())
}

/// Where the first packet of a connection to the target goes from
/// `source` on `node`, and the rules it meets.
pub(crate) fn trace(
    cluster: &Cluster<'_>,
    node: &ChosenNode,
    r: &Resolved,
    source: &From,
) -> Result<Traced, Error> {
    let Some(dst) = r.dst else {
        return Ok(direct(r));
    };
    let mut problems = Vec::new();
    let (nft, origin) = match cluster.live {
        Some(ask) => match ask(&node.name) {
            Ok(live) => {
                // The kernel's own rules when the agent could read them
                // back; else what it says it installed.
                let held = live.kernel.as_ref().unwrap_or(&live.rules);
                if let Some(kernel) = &live.kernel
                    && kernel != &live.rules
                {
                    problems.push(format!(
                        "node {}'s kernel does not hold what its agent installed ({}): the rules traced are the kernel's",
                        node.name,
                        differences(&live.rules, kernel)
                    ));
                }
                let nft =
                    portico_dataplane::MemoryNft::from_view(held).map_err(|e| Error::Rules {
                        node: node.name.clone(),
                        message: e.to_string(),
                    })?;
                if !live.programmed {
                    problems.push(format!(
                        "node {}'s agent has not synced yet: its kernel may hold no rules at all",
                        node.name
                    ));
                }
                if live.failed_syncs > 0 {
                    problems.push(format!(
                        "node {}'s agent has failed its last {} syncs: the kernel holds the rules of the last one that succeeded (its log says why)",
                        node.name, live.failed_syncs
                    ));
                }
                let pending = if live.pending {
                    "; changes wait for its next sync"
                } else {
                    ""
                };
                let whose = if live.kernel.is_some() {
                    "the rules node {}'s kernel holds (GET /rules: read back over netlink by its agent)"
                } else {
                    "the rules node {}'s agent has installed (GET /rules)"
                };
                (nft, format!("{}{pending}", whose.replace("{}", &node.name)))
            }
            Err(e) => (
                rules(cluster, &node.name)?,
                format!(
                    "rendered from the cluster's objects as node {} would program them: its agent did not answer ({e})",
                    node.name
                ),
            ),
        },
        None => (
            rules(cluster, &node.name)?,
            format!(
                "rendered from the objects as `portico node` programs them on node {}",
                node.name
            ),
        ),
    };
    let src = match source.origin {
        Origin::Node => node
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .unwrap_or(source.ip),
        Origin::Remote => source.ip,
    };
    let packet = Packet {
        src,
        dst,
        protocol: r.protocol,
        origin: source.origin,
        local: node.addresses.clone(),
    };
    let outcomes =
        trace::every_outcome(&nft, &packet, MAX_OUTCOMES).map_err(|message| Error::Rules {
            node: node.name.clone(),
            message,
        })?;
    let family = if dst.is_ipv4() { "ip" } else { "ip6" };
    let mut steps = vec![
        step("rules", origin),
        step(
            "packet",
            format!(
                "{src} → {dst}/{}: the first packet of a connection, from {}, meets the rules of node {}",
                proto(r),
                source.label,
                node.name
            ),
        ),
    ];
    if let Some((_, hits)) = outcomes.first() {
        steps.extend(
            hits.iter()
                .map(|h| step(format!("nft {family} portico {}", h.chain), h.rule.clone())),
        );
    }
    let verdict = verdict(outcomes.iter().map(|(o, _)| *o));
    steps.push(step("verdict", describe(&verdict, outcomes.len())));
    Ok(Traced {
        steps,
        verdict,
        problems,
    })
}

/// A Service without a virtual address (headless, or a pod's own name):
/// DNS gives the endpoints and the client connects to them, untouched.
fn direct(r: &Resolved) -> Traced {
    if crate::is_external_name(&r.svc) {
        return Traced {
            steps: vec![step(
                "packet",
                "an ExternalName Service has no address and no rules: DNS answers a CNAME, and the client connects wherever the target resolves",
            )],
            verdict: Verdict {
                action: Action::Accept,
                endpoints: Vec::new(),
                masquerade: false,
            },
            problems: Vec::new(),
        };
    }
    let answered: BTreeSet<IpAddr> = r
        .dns
        .iter()
        .flat_map(|a| a.answers.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    let port = target_port(r);
    let endpoints: Vec<String> = answered
        .iter()
        .map(|ip| SocketAddr::new(*ip, port).to_string())
        .collect();
    Traced {
        steps: vec![
            step(
                "packet",
                "a headless Service has no virtual address: DNS answers the endpoints' addresses and the client connects to one of them; no NAT rule is met",
            ),
            step(
                "verdict",
                format!("accept: straight to {}", endpoints.join(" or ")),
            ),
        ],
        verdict: Verdict {
            action: Action::Accept,
            endpoints,
            masquerade: false,
        },
        problems: Vec::new(),
    }
}

/// The first port's target port, when it is a number (a name is resolved
/// per pod; the Service port stands for it here).
fn target_port(r: &Resolved) -> u16 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = r
        .svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref()?.first().cloned());
    port.and_then(|p| match p.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(n).ok(),
        Some(IntOrString::String(_)) | None => u16::try_from(p.port).ok(),
    })
    .unwrap_or_default()
}

/// The verdict of every outcome: where it may go, and how.
fn verdict(outcomes: impl Iterator<Item = Outcome>) -> Verdict {
    let mut to: BTreeSet<SocketAddr> = BTreeSet::new();
    let (mut masquerade, mut reject, mut drop) = (false, false, false);
    for o in outcomes {
        match o {
            Outcome::Dnat {
                to: t,
                masquerade: m,
            } => {
                to.insert(t);
                masquerade |= m;
            }
            Outcome::Reject => reject = true,
            Outcome::Drop => drop = true,
            Outcome::Pass => {}
        }
    }
    let action = if !to.is_empty() {
        Action::Dnat
    } else if reject {
        Action::Reject
    } else if drop {
        Action::Drop
    } else {
        Action::Accept
    };
    Verdict {
        action,
        endpoints: to.iter().map(ToString::to_string).collect(),
        masquerade,
    }
}

fn describe(v: &Verdict, draws: usize) -> String {
    let masq = if v.masquerade {
        "; masqueraded (its source becomes the node's address)"
    } else {
        ""
    };
    match v.action {
        Action::Dnat if v.endpoints.len() == 1 => format!("dnat to {}{masq}", v.endpoints[0]),
        Action::Dnat => format!(
            "dnat to one of {} at random, per connection ({} draws traced): {}{masq}",
            v.endpoints.len(),
            draws,
            v.endpoints.join(", ")
        ),
        Action::Reject => {
            "reject: the connection is refused (TCP reset or ICMP unreachable)".into()
        }
        Action::Drop => "drop: the packet is dropped silently".into(),
        Action::Accept => "accept: no rule matches, the packet goes on untouched".into(),
    }
}

/// The node answering ARP/NDP for the Service's LoadBalancer address (the
/// target's, else its first), as every agent plans it.
pub(crate) fn announcer(cluster: &Cluster<'_>, r: &Resolved) -> Option<String> {
    use portico_agent::l2;
    let world = cluster.world;
    let announcements = world.l2announcements.sorted();
    if announcements.is_empty() {
        return None;
    }
    let ingress: Vec<IpAddr> = crate::ingress(&r.svc)
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ip = r
        .dst
        .map(|d| d.ip())
        .filter(|ip| ingress.contains(ip))
        .or_else(|| ingress.first().copied())?;
    let catalog = portico_local::catalog(world);
    let plan = l2::plan(
        announcements.iter().map(AsRef::as_ref),
        world.ippools.sorted().iter().map(AsRef::as_ref),
        world.services.sorted().iter().map(AsRef::as_ref),
        world.nodes.sorted().iter().map(AsRef::as_ref),
        &catalog,
        &|n| l2::is_live(n, "", None),
    );
    plan.addresses.get(&ip).and_then(|p| p.owner.clone())
}
