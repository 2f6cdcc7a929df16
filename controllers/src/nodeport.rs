//! NodePort allocation from `--service-node-port-range`, where Portico is
//! the API server (`portico local`). In a cluster kube-apiserver allocates
//! node ports and this reconciler does not run.
//!
//! ```text
//!   reset(all) / apply(svc) / delete(svc)
//!            │
//!            v
//!   ┌──────────── NodePortAllocator ─────────────┐
//!   │ held:    ns/name -> [30080, 30443, 32000]  │──> Vec<Write>
//!   │ holders: 30080 -> ns/name                  │   (spec apply, condition, Events)
//!   │ pool:    30000-32767, KEP-3668 static band │
//!   │ blocked: Services refused, retried on free │
//!   └────────────────────────────────────────────┘
//! ```
//!
//! As kube-apiserver does:
//! - `NodePort` and `LoadBalancer` Services (unless
//!   `allocateLoadBalancerNodePorts: false`) get a node port for each port;
//!   ports of one number with different protocols share one node port.
//! - A `LoadBalancer` Service with `externalTrafficPolicy: Local` gets a
//!   `healthCheckNodePort`.
//! - A requested port is taken when it is in range and free; otherwise the
//!   Service gets no node port at all, a Warning Event and the condition
//!   `portico.dev/NodePortAllocated=False`. The refused request leaves
//!   the spec (the Service holds none of it) and is kept in the annotation
//!   `portico.dev/requested-node-ports`, so it is asked again after a
//!   restart and granted once the port is free.
//! - On a relist, Services whose specs show ports are served first (oldest
//!   first), then those refused before, then the rest: a restart gives
//!   every Service the ports it had.

use crate::conditions::{Wanted, service_condition_writes};
use crate::k8s::KeyOf;
use crate::k8s::{Key, Service, service_type};
use crate::write::Write;
use portico_crds::names::{CONDITION_NODE_PORT_ALLOCATED, annotations, reasons};
use portico_ipam::{PortError, PortPool, PortRange};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Why a Service holds no node ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Another Service holds the port.
    Duplicate {
        /// The port.
        port: u16,
        /// Its holder.
        holder: Key,
    },
    /// The port is outside `--service-node-port-range`.
    OutOfRange {
        /// The port.
        port: u16,
        /// The range.
        range: PortRange,
    },
    /// No free port is left.
    Full {
        /// The range.
        range: PortRange,
    },
    /// The spec asks for something the API server refuses.
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl Problem {
    /// The Event and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Duplicate { .. } => reasons::DUPLICATE_NODE_PORT,
            Problem::OutOfRange { .. } => reasons::NODE_PORT_OUT_OF_RANGE,
            _ => reasons::NODE_PORT_NOT_ALLOCATED,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Duplicate { port, holder } => {
                write!(f, "node port {port} is already held by Service {holder}")
            }
            Problem::OutOfRange { port, range } => {
                write!(f, "node port {port} is outside the node port range {range}")
            }
            Problem::Full { range } => write!(f, "no free node port left in {range}"),
            Problem::Invalid { message } => f.write_str(message),
        }
    }
}

/// What a Service asks for: a node port per spec port (0: any) and a
/// health check node port (`None`: not needed; `Some(0)`: any).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    /// `(port, protocol, nodePort)` in spec order.
    ports: Vec<(i32, String, u16)>,
    health: Option<u16>,
}

/// The reconciler. See the module documentation.
pub struct NodePortAllocator {
    pool: PortPool,
    held: HashMap<Key, Vec<u16>>,
    holders: HashMap<u16, Key>,
    blocked: BTreeMap<Key, (Service, Problem)>,
}

impl NodePortAllocator {
    /// Every port of `range` free.
    pub fn new(range: PortRange) -> Self {
        NodePortAllocator {
            pool: PortPool::new(range),
            held: HashMap::new(),
            holders: HashMap::new(),
            blocked: BTreeMap::new(),
        }
    }

    /// Makes random choices reproducible (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.pool = self.pool.with_seed(seed);
        self
    }

    /// The Service that holds a port.
    pub fn holder(&self, port: u16) -> Option<&Key> {
        self.holders.get(&port)
    }

    /// The ports a Service holds (node ports and health check port).
    pub fn held(&self, key: &Key) -> &[u16] {
        self.held.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// The problem of a Service, if it has one.
    pub fn problem(&self, key: &Key) -> Option<&Problem> {
        self.blocked.get(key).map(|(_, p)| p)
    }

    /// Rebuilds from every Service (a relist or a start): those that ask
    /// for ports by number first, oldest first, then the others.
    pub fn reset<'a>(&mut self, services: impl IntoIterator<Item = &'a Service>) -> Vec<Write> {
        for port in self.holders.keys().copied().collect::<Vec<_>>() {
            self.pool.release(port);
        }
        self.held.clear();
        self.holders.clear();
        let reported: BTreeMap<Key, Problem> = std::mem::take(&mut self.blocked)
            .into_iter()
            .map(|(k, (_, p))| (k, p))
            .collect();
        let mut ordered: Vec<(&Service, Result<Request, Problem>)> =
            services.into_iter().map(|s| (s, request(s))).collect();
        // Ports the specs show were held before (a restart): those first;
        // then requests refused before; then the rest.
        ordered.sort_by_cached_key(|(s, r)| {
            let shows = stated(s).is_ok_and(|r| !describe(&r).is_empty());
            let asks = r.as_ref().is_ok_and(|r| !describe(r).is_empty());
            (
                !shows,
                !asks,
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                Key::of(*s),
            )
        });
        let mut writes = Vec::new();
        for (svc, _) in ordered {
            let key = Key::of(svc);
            writes.extend(self.evaluate(svc, reported.get(&key)));
        }
        writes
    }

    /// A Service was added or changed.
    pub fn apply(&mut self, svc: &Service) -> Vec<Write> {
        let key = Key::of(svc);
        let reported = self.blocked.remove(&key).map(|(_, p)| p);
        let released = self.release(&key);
        let mut writes = self.evaluate(svc, reported.as_ref());
        if released {
            writes.extend(self.retry_blocked(&key));
        }
        writes
    }

    /// A Service was deleted: its ports are free, and Services that waited
    /// for them are served.
    pub fn delete(&mut self, svc: &Service) -> Vec<Write> {
        let key = Key::of(svc);
        self.blocked.remove(&key);
        if self.release(&key) {
            self.retry_blocked(&key)
        } else {
            Vec::new()
        }
    }

    fn release(&mut self, key: &Key) -> bool {
        let ports = self.held.remove(key).unwrap_or_default();
        for port in &ports {
            self.holders.remove(port);
            self.pool.release(*port);
        }
        !ports.is_empty()
    }

    fn retry_blocked(&mut self, skip: &Key) -> Vec<Write> {
        let keys: Vec<Key> = self
            .blocked
            .keys()
            .filter(|k| *k != skip)
            .cloned()
            .collect();
        let mut writes = Vec::new();
        for key in keys {
            if let Some((svc, problem)) = self.blocked.remove(&key) {
                writes.extend(self.evaluate(&svc, Some(&problem)));
            }
        }
        writes
    }

    /// Works out the ports of `svc`, records them and returns the writes.
    /// `reported`: the problem already reported for it.
    fn evaluate(&mut self, svc: &Service, reported: Option<&Problem>) -> Vec<Write> {
        let key = Key::of(svc);
        let result = request(svc).and_then(|r| self.allocate(&key, &r).map(|got| (r, got)));
        let was_blocked = reported.is_some();
        let mut writes = Vec::new();
        match result {
            Ok((_, got)) => {
                let held: Vec<u16> = got
                    .ports
                    .iter()
                    .map(|p| p.2)
                    .chain(got.health)
                    .filter(|p| *p != 0)
                    .collect();
                if !shows(svc, &got) {
                    writes.push(Write::apply_service(svc, spec_patch(&got)));
                    let list = describe(&got);
                    if !list.is_empty() {
                        writes.push(Write::event(
                            svc,
                            false,
                            reasons::NODE_PORT_ALLOCATED,
                            "Allocate",
                            format!("allocated node ports {list}"),
                        ));
                    }
                }
                writes.extend(condition(svc, None, was_blocked));
                let mut unique = held;
                unique.sort_unstable();
                unique.dedup();
                for port in &unique {
                    self.holders.insert(*port, key.clone());
                }
                if !unique.is_empty() {
                    self.held.insert(key, unique);
                }
            }
            Err(problem) => {
                writes.extend(condition(svc, Some(&problem), was_blocked));
                if reported != Some(&problem) {
                    writes.push(Write::event(
                        svc,
                        true,
                        problem.reason(),
                        "Allocate",
                        problem.to_string(),
                    ));
                }
                writes.extend(refusal_writes(svc));
                self.blocked.insert(key, (svc.clone(), problem));
            }
        }
        writes
    }

    /// Takes what `r` asks for, or nothing. Returns the request filled in.
    fn allocate(&mut self, key: &Key, r: &Request) -> Result<Request, Problem> {
        let mut taken: Vec<u16> = Vec::new();
        let result = self.fill(key, r, &mut taken);
        if result.is_err() {
            for port in taken {
                self.pool.release(port);
            }
        }
        result
    }

    fn fill(&mut self, key: &Key, r: &Request, taken: &mut Vec<u16>) -> Result<Request, Problem> {
        let mut out = r.clone();
        // The health check port a Service names is taken first, so that a
        // random choice for one of its ports never takes it.
        let health = match out.health {
            Some(p) if p != 0 => Some(self.take(key, p, taken)?),
            other => other,
        };
        // One node port per port number, whatever the protocols. The
        // ports asked for by number are taken first, then the others.
        let mut by_number: HashMap<i32, u16> = HashMap::new();
        for i in 0..out.ports.len() {
            let (number, _, asked) = out.ports[i].clone();
            if asked == 0 {
                continue;
            }
            let port = match by_number.get(&number).copied() {
                Some(shared) if shared == asked => shared,
                _ => self.take(key, asked, taken)?,
            };
            by_number.entry(number).or_insert(port);
        }
        for i in 0..out.ports.len() {
            let (number, _, asked) = out.ports[i].clone();
            let port = match (by_number.get(&number).copied(), asked) {
                (_, asked) if asked != 0 => asked,
                (Some(shared), _) => shared,
                (None, _) => self.take_any(taken)?,
            };
            by_number.entry(number).or_insert(port);
            out.ports[i].2 = port;
        }
        out.health = match health {
            None => None,
            Some(0) => Some(self.take_any(taken)?),
            Some(p) => Some(p),
        };
        Ok(out)
    }

    fn take(&mut self, key: &Key, port: u16, taken: &mut Vec<u16>) -> Result<u16, Problem> {
        if taken.contains(&port) {
            return Err(Problem::Invalid {
                message: format!("node port {port} is asked for twice"),
            });
        }
        if let Some(holder) = self.holders.get(&port).filter(|h| *h != key) {
            return Err(Problem::Duplicate {
                port,
                holder: holder.clone(),
            });
        }
        match self.pool.allocate_port(port) {
            Ok(()) => {
                taken.push(port);
                Ok(port)
            }
            Err(PortError::OutOfRange { port, range }) => Err(Problem::OutOfRange { port, range }),
            Err(_) => Err(Problem::Invalid {
                message: format!("node port {port} cannot be allocated"),
            }),
        }
    }

    fn take_any(&mut self, taken: &mut Vec<u16>) -> Result<u16, Problem> {
        let port = self.pool.allocate().map_err(|_| Problem::Full {
            range: self.pool.range(),
        })?;
        taken.push(port);
        Ok(port)
    }
}

/// What a Service asks for, as kube-apiserver reads it: what its spec
/// names, else what it was refused before (the annotation).
fn request(svc: &Service) -> Result<Request, Problem> {
    let spec = svc.spec.as_ref();
    let type_ = service_type(svc);
    let annotated = requested_annotation(svc);
    let Request { mut ports, health } = stated(svc)?;
    for (port, protocol, asked) in &mut ports {
        if *asked == 0 {
            *asked = annotated
                .get(&format!("{port}/{protocol}"))
                .copied()
                .unwrap_or(0);
        }
    }
    let node_ports = match type_ {
        "NodePort" => true,
        "LoadBalancer" => spec.and_then(|s| s.allocate_load_balancer_node_ports) != Some(false),
        _ => false,
    };
    if !node_ports {
        if let Some((i, p)) = ports.iter().enumerate().find(|(_, p)| p.2 != 0)
            && type_ != "LoadBalancer"
        {
            return Err(Problem::Invalid {
                message: format!(
                    "spec.ports[{i}].nodePort {}: may not be used when type is {type_}",
                    p.2
                ),
            });
        }
        // A LoadBalancer without automatic node ports keeps those asked
        // for, and gets no others.
        ports.retain(|p| p.2 != 0);
    }
    let needs_health = type_ == "LoadBalancer"
        && spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let health_asked = health.or_else(|| annotated.get(HEALTH).copied());
    if let Some(h) = health_asked.filter(|_| !needs_health) {
        return Err(Problem::Invalid {
            message: format!(
                "healthCheckNodePort {h}: may only be set when type is LoadBalancer and externalTrafficPolicy is Local"
            ),
        });
    }
    let health = needs_health.then(|| health_asked.unwrap_or(0));
    Ok(Request { ports, health })
}

const HEALTH: &str = "healthCheckNodePort";

/// The ports kept in `portico.dev/requested-node-ports`:
/// `80/TCP=30080,healthCheckNodePort=32000`.
fn requested_annotation(svc: &Service) -> HashMap<String, u16> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::REQUESTED_NODE_PORTS))
        .map(|v| {
            v.split(',')
                .filter_map(|item| {
                    let (what, port) = item.trim().split_once('=')?;
                    Some((what.trim().to_owned(), port.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `80/TCP=30080,...` of what a Service asks for by number.
fn describe(r: &Request) -> String {
    r.ports
        .iter()
        .filter(|p| p.2 != 0)
        .map(|(port, proto, np)| format!("{port}/{proto}={np}"))
        .chain(
            r.health
                .filter(|h| *h != 0)
                .map(|h| format!("{HEALTH}={h}")),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// The spec fields that carry `r`.
fn spec_patch(r: &Request) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = r
        .ports
        .iter()
        .map(|(port, proto, np)| json!({ "port": port, "protocol": proto, "nodePort": np }))
        .collect();
    let mut spec = json!({ "ports": ports });
    if let Some(h) = r.health {
        spec["healthCheckNodePort"] = json!(h);
    }
    spec
}

/// A refused Service holds no node port: the ports it named leave its spec
/// (0 is "none" in the API) and are kept in the annotation.
fn refusal_writes(svc: &Service) -> Vec<Write> {
    let Ok(asked) = stated(svc) else {
        return Vec::new();
    };
    let list = describe(&asked);
    if list.is_empty() {
        return Vec::new();
    }
    let key = Key::of(svc);
    let cleared = Request {
        ports: asked
            .ports
            .iter()
            .map(|(p, proto, _)| (*p, proto.clone(), 0))
            .collect(),
        health: asked.health.map(|_| 0),
    };
    vec![
        Write::annotate_service(
            &key.namespace,
            &key.name,
            &BTreeMap::from([(annotations::REQUESTED_NODE_PORTS.to_owned(), list)]),
        ),
        Write::apply_service(svc, spec_patch(&cleared)),
    ]
}

/// Whether the spec already shows the ports of `got`.
fn shows(svc: &Service, got: &Request) -> bool {
    let Ok(spec) = stated(svc) else {
        return false;
    };
    got.health == spec.health
        && got.ports.iter().all(|(port, proto, np)| {
            spec.ports
                .iter()
                .any(|(p, pr, n)| p == port && pr == proto && n == np)
        })
}

/// The ports the spec itself names (not the annotation), whatever the
/// type: a node port per port (0: none) and the health check port.
fn stated(svc: &Service) -> Result<Request, Problem> {
    let spec = svc.spec.as_ref();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            let asked = p.node_port.unwrap_or(0);
            let asked = u16::try_from(asked).map_err(|_| Problem::Invalid {
                message: format!("spec.ports[{i}].nodePort {asked} is not a port"),
            })?;
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
            Ok((p.port, protocol, asked))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let health = spec
        .and_then(|s| s.health_check_node_port)
        .filter(|h| *h != 0)
        .map(|h| {
            u16::try_from(h).map_err(|_| Problem::Invalid {
                message: format!("healthCheckNodePort {h} is not a port"),
            })
        })
        .transpose()?;
    Ok(Request { ports, health })
}

fn condition(svc: &Service, problem: Option<&Problem>, was_blocked: bool) -> Vec<Write> {
    service_condition_writes(
        svc,
        Wanted {
            type_: CONDITION_NODE_PORT_ALLOCATED,
            problem: problem.map(|p| (p.reason(), p.to_string())),
            ok: ("Allocated", "the Service holds its node ports"),
            was_blocked,
        },
    )
}

#[cfg(test)]
mod tests;
