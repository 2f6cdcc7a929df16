//! Who gets an external address and port that two Services claim.
//!
//! A Service claims `address:port/protocol` for each of its ports on each
//! of its `spec.externalIPs` and `status.loadBalancer.ingress` addresses.
//! Two Services that claim the same one cannot both have it: the node
//! dataplane gives it to the older Service (`creationTimestamp`, then
//! namespace and name: [`portico_catalog::Seniority`], the very order the
//! dataplane uses), and this index reports each Service that loses a claim
//! with a Warning Event, once per loss.
//!
//! ```text
//!  Services ──> claims (addr, proto, port) ──> claimants, oldest first
//!                                                 └─> losers: Warning Event
//! ```

use crate::k8s::KeyOf;
use crate::k8s::{Key, Service};
use crate::write::Write;
use portico_catalog::{Protocol, ProxyLabel, Seniority, ServiceInfo};
use portico_crds::names::lb_reasons;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One address, protocol and port.
type Claim = (IpAddr, Protocol, u16);

/// What one Service claims.
struct Claimant {
    svc: Arc<Service>,
    seniority: Seniority,
    claims: BTreeSet<Claim>,
}

/// The index. See the module documentation.
#[derive(Default)]
pub struct Claims {
    services: HashMap<Key, Claimant>,
    owners: HashMap<Claim, BTreeSet<Seniority>>,
    /// Claims each Service was last told it lost.
    reported: HashMap<Key, BTreeSet<Claim>>,
    dirty: BTreeSet<Key>,
}

impl Claims {
    /// Replaces every Service (a relist).
    pub fn reset<'a>(&mut self, services: impl IntoIterator<Item = &'a Service>) {
        let old: Vec<Key> = self.services.keys().cloned().collect();
        self.services.clear();
        self.owners.clear();
        self.dirty.extend(old);
        for svc in services {
            self.insert(svc, None);
        }
    }

    /// A Service was added or changed.
    pub fn apply(&mut self, svc: &Service) {
        self.remove(&Key::of(svc));
        self.insert(svc, None);
    }

    /// The LoadBalancer addresses LoadBalancer IPAM just decided for a
    /// Service it serves: they stand for its `status.loadBalancer`, which
    /// may still show what it held before.
    pub fn assigned(&mut self, svc: &Service, ips: &[IpAddr]) {
        self.remove(&Key::of(svc));
        self.insert(svc, Some(ips));
    }

    /// A Service was deleted.
    pub fn delete(&mut self, svc: &Service) {
        let key = Key::of(svc);
        self.remove(&key);
        self.reported.remove(&key);
        self.dirty.remove(&key);
    }

    /// The Services that claim the same address and port as another,
    /// oldest first.
    pub fn conflicts(&self) -> BTreeMap<Claim, Vec<Key>> {
        self.owners
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(c, o)| (*c, o.iter().map(to_key).collect()))
            .collect()
    }

    /// Warning Events for the Services that lost a claim since the last
    /// flush.
    pub fn flush(&mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(c) = self.services.get(&key) else {
                self.reported.remove(&key);
                continue;
            };
            let lost: BTreeMap<Claim, &Seniority> = c
                .claims
                .iter()
                .filter_map(|claim| {
                    let winner = self.owners.get(claim)?.first()?;
                    (winner != &c.seniority).then_some((*claim, winner))
                })
                .collect();
            let before = self.reported.remove(&key).unwrap_or_default();
            let new: Vec<String> = lost
                .iter()
                .filter(|(claim, _)| !before.contains(*claim))
                .map(|((ip, proto, port), winner)| {
                    let addr = std::net::SocketAddr::new(*ip, *port);
                    format!("{addr}/{} (Service {})", proto.as_str(), to_key(winner))
                })
                .collect();
            if !new.is_empty() {
                writes.push(Write::event(
                    c.svc.as_ref(),
                    true,
                    lb_reasons::ADDRESS_CLAIMED,
                    "Program",
                    format!(
                        "{} already claimed by an older Service, which keeps the traffic; this Service gets none there",
                        new.join(", ")
                    ),
                ));
            }
            if !lost.is_empty() {
                self.reported.insert(key, lost.into_keys().collect());
            }
        }
        writes
    }

    fn insert(&mut self, svc: &Service, ingress: Option<&[IpAddr]>) {
        // Most Services have no external address: they claim nothing, and
        // are not worth a full projection on every event.
        let external_ips = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.as_ref())
            .is_some_and(|ips| !ips.is_empty());
        let ingress_ips = match ingress {
            Some(ips) => !ips.is_empty(),
            None => svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| !i.is_empty()),
        };
        if !external_ips && !ingress_ips {
            return;
        }
        let mut info = ServiceInfo::from_service(svc);
        if let Some(ips) = ingress {
            info.load_balancer_ips = ips.to_vec();
        }
        if info.proxy != ProxyLabel::Default {
            // Not programmed by the default proxy: it claims nothing here.
            return;
        }
        let mut claims = BTreeSet::new();
        for ip in info.external_ips.iter().chain(&info.load_balancer_ips) {
            if info.cluster_ips.contains(ip) {
                continue;
            }
            for p in &info.ports {
                claims.insert((*ip, p.protocol, p.port));
            }
        }
        if claims.is_empty() {
            return;
        }
        let seniority = info.seniority();
        for claim in &claims {
            let owners = self.owners.entry(*claim).or_default();
            owners.insert(seniority.clone());
            self.dirty.extend(owners.iter().map(to_key));
        }
        let key = Key::of(svc);
        self.services.insert(
            key,
            Claimant {
                svc: Arc::new(svc.clone()),
                seniority,
                claims,
            },
        );
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.services.remove(key) else {
            return;
        };
        for claim in &old.claims {
            if let Some(owners) = self.owners.get_mut(claim) {
                owners.remove(&old.seniority);
                self.dirty.extend(owners.iter().map(to_key));
                if owners.is_empty() {
                    self.owners.remove(claim);
                }
            }
        }
        self.dirty.insert(key.clone());
    }
}

fn to_key(s: &Seniority) -> Key {
    Key::new(s.key.namespace.clone(), s.key.name.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::k8s::{ObjectMeta, ServicePort, ServiceSpec, Time};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    /// A Service created at `created` (seconds) with one TCP port and
    /// external IPs.
    fn mk_svc(name: &str, created: i64, port: i32, external: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                )),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port,
                    ..Default::default()
                }]),
                external_ips: Some(external.iter().map(|s| (*s).to_owned()).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn with_ingress(mut svc: Service, ip: &str) -> Service {
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        svc
    }

    /// (Service name, note) of each Warning Event.
    fn warnings(writes: &[Write]) -> Vec<(String, String)> {
        writes
            .iter()
            .map(|w| match w {
                Write::Event(e) => {
                    assert!(e.warning);
                    assert_eq!(e.reason, lb_reasons::ADDRESS_CLAIMED);
                    (e.regarding.name.clone().unwrap(), e.note.clone())
                }
                other => panic!("not an Event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_newer_of_two_services_on_one_external_ip_and_port_is_warned_once() {
        let older = mk_svc("zz-older", 1_000, 80, &["203.0.113.50"]);
        let newer = mk_svc("aa-newer", 2_000, 80, &["203.0.113.50"]);
        let mut c = Claims::default();
        c.reset([&newer, &older]);
        let w = warnings(&c.flush());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].0, "aa-newer");
        assert!(
            w[0].1
                .contains("203.0.113.50:80/TCP (Service default/zz-older)"),
            "{}",
            w[0].1
        );
        assert!(c.flush().is_empty(), "said once");
        c.apply(&newer);
        assert!(c.flush().is_empty(), "an unchanged loss is not said again");
        assert_eq!(
            c.conflicts().into_values().next().unwrap(),
            [
                Key::new("default", "zz-older"),
                Key::new("default", "aa-newer")
            ]
        );

        // The older goes: the newer has it, nobody is warned; the older
        // comes back later, newer than the other now, and is warned.
        c.delete(&older);
        assert!(c.flush().is_empty());
        assert!(c.conflicts().is_empty());
        c.apply(&mk_svc("zz-older", 3_000, 80, &["203.0.113.50"]));
        let w = warnings(&c.flush());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "zz-older");
    }

    #[test]
    fn services_on_one_address_with_other_ports_do_not_conflict() {
        let a = mk_svc("a", 1_000, 80, &["203.0.113.50"]);
        let b = with_ingress(mk_svc("b", 2_000, 443, &[]), "203.0.113.50");
        let mut c = Claims::default();
        c.reset([&a, &b]);
        assert!(c.flush().is_empty());
        assert!(c.conflicts().is_empty());
    }

    #[test]
    fn a_load_balancer_address_and_an_external_ip_on_one_port_conflict() {
        let lb = with_ingress(mk_svc("lb", 1_000, 80, &[]), "192.168.56.60");
        let ext = mk_svc("ext", 2_000, 80, &["192.168.56.60"]);
        let mut c = Claims::default();
        c.apply(&lb);
        c.apply(&ext);
        let w = warnings(&c.flush());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "ext");
        assert!(w[0].1.contains("192.168.56.60:80/TCP (Service default/lb)"));
    }

    #[test]
    fn a_service_another_proxy_owns_claims_nothing() {
        let mut other = mk_svc("other", 1_000, 80, &["203.0.113.50"]);
        other.metadata.labels = Some(
            [(
                portico_catalog::labels::SERVICE_PROXY_NAME.to_owned(),
                "other-proxy".to_owned(),
            )]
            .into(),
        );
        let mine = mk_svc("mine", 2_000, 80, &["203.0.113.50"]);
        let mut c = Claims::default();
        c.reset([&other, &mine]);
        assert!(c.flush().is_empty());
    }
}
