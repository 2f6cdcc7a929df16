//! Allocate mode: the addresses a Service asks for or needs, taken from
//! the service ranges, and the spec and status writes that show them.

use super::*;
use crate::k8s::KeyOf;

impl ClusterIpController {
    /// Allocate: all the addresses the Service needs, or none.
    pub(super) fn allocate(
        &mut self,
        svc: &Service,
        key: &Key,
        previous: &[IpAddr],
    ) -> Result<Vec<IpAddr>, Problem> {
        let mut stated = requested_cluster_ips(svc)
            .iter()
            .map(|s| parse_ip(s))
            .collect::<Result<Vec<_>, _>>()?;
        if stated.is_empty() {
            stated = previous.to_vec();
        }
        let plan = self.plan(svc, &stated)?;
        let allow_reserved = (key.namespace.as_str(), key.name.as_str()) == KUBERNETES_SERVICE;
        let mut got: Vec<IpAddr> = Vec::new();
        for (family, wanted) in plan {
            let result = match wanted {
                // A range created later does not take addresses away from
                // Services that hold them already.
                Some(ip) => match self.sub.allows(&key.namespace, ip).or_else(|e| {
                    if previous.contains(&ip) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }) {
                    Ok(()) => self.claim(ip, key, allow_reserved).map(|()| ip),
                    Err(message) => Err(Problem::InvalidSpec { message }),
                },
                None => self.allocate_dynamic(family, key),
            };
            match result {
                Ok(ip) => got.push(ip),
                Err(p) => {
                    self.release_all(&got);
                    return Err(p);
                }
            }
        }
        Ok(got)
    }

    /// The families a Service needs, in order, each with the address it asks for.
    pub(super) fn plan(
        &self,
        svc: &Service,
        stated: &[IpAddr],
    ) -> Result<Vec<(Family, Option<IpAddr>)>, Problem> {
        let invalid = |message: String| Problem::InvalidSpec { message };
        let spec = svc.spec.clone().unwrap_or_default();
        let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
        let families = spec
            .ip_families
            .unwrap_or_default()
            .iter()
            .map(|f| match f.as_str() {
                "IPv4" => Ok(Family::V4),
                "IPv6" => Ok(Family::V6),
                other => Err(invalid(format!(
                    "ipFamilies: {other:?} is not a family (IPv4 or IPv6)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
            return Err(invalid(format!(
                "ipFamilies {families:?}: give each family at most once"
            )));
        }
        if stated.len() > 2 || (stated.len() == 2 && Family::of(stated[0]) == Family::of(stated[1]))
        {
            return Err(invalid(format!(
                "clusterIPs {stated:?}: give at most one address per family"
            )));
        }
        for (i, (ip, fam)) in stated.iter().zip(&families).enumerate() {
            if Family::of(*ip) != *fam {
                return Err(invalid(format!(
                    "clusterIPs[{i}] {ip} is {} but ipFamilies[{i}] is {fam}",
                    Family::of(*ip)
                )));
            }
        }
        let configured: Vec<Family> = self.ranges.iter().map(|r| r.family).collect();
        let Some(primary) = families
            .first()
            .copied()
            .or_else(|| stated.first().map(|ip| Family::of(*ip)))
            .or_else(|| configured.first().copied())
        else {
            return Err(invalid("no service range is configured".to_owned()));
        };
        let secondary = match primary {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let asks_two = families.len() > 1 || stated.len() > 1;
        let wanted = match policy {
            "SingleStack" if asks_two => {
                return Err(invalid(
                    "ipFamilyPolicy SingleStack allows one family, but the Service names two"
                        .to_owned(),
                ));
            }
            "SingleStack" => vec![primary],
            "PreferDualStack" if asks_two || configured.contains(&secondary) => {
                vec![primary, secondary]
            }
            "PreferDualStack" => vec![primary],
            "RequireDualStack" => vec![primary, secondary],
            other => {
                return Err(invalid(format!(
                    "ipFamilyPolicy {other:?} is not SingleStack, PreferDualStack or RequireDualStack"
                )));
            }
        };
        wanted
            .into_iter()
            .map(|family| {
                if !configured.contains(&family) {
                    return Err(Problem::FamilyNotConfigured { family });
                }
                Ok((
                    family,
                    stated.iter().copied().find(|ip| Family::of(*ip) == family),
                ))
            })
            .collect()
    }

    /// Marks `ip` as held by `key`.
    pub(super) fn claim(
        &mut self,
        ip: IpAddr,
        key: &Key,
        allow_reserved: bool,
    ) -> Result<(), Problem> {
        // Quarantine keeps addresses from dynamic allocation only: asking
        // for one by name (or the API server handing it out) takes it.
        if !self.holders.contains_key(&ip)
            && let Some(owner) = self.recorded.get(&ip)
        {
            if owner != key {
                return Err(Problem::Duplicate {
                    ip,
                    holder: owner.clone(),
                });
            }
            if self.pool_has(ip) {
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                return Ok(());
            }
        }
        if !self.holders.contains_key(&ip)
            && (self.quarantine.remove(&ip).is_some() || self.sub.parked.remove(&ip))
        {
            self.holders.insert(ip, key.clone());
            self.sub.mark(ip);
            return Ok(());
        }
        if let Some(holder) = self.holders.get(&ip) {
            let holder = holder.clone();
            return Err(if &holder == key {
                Problem::InvalidSpec {
                    message: format!("clusterIPs lists {ip} twice"),
                }
            } else {
                Problem::Duplicate { ip, holder }
            });
        }
        let Some(range) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) else {
            return Err(Problem::OutOfRange { ip });
        };
        let result = match range.pool.allocate_ip(ip) {
            Err(AllocError::Reserved { .. }) if allow_reserved => {
                range.pool.allocate_reserved_ip(ip)
            }
            other => other,
        };
        match result {
            Ok(()) => {
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                Ok(())
            }
            Err(AllocError::OutOfRange { .. }) | Err(AllocError::Reserved { .. }) => {
                Err(Problem::Reserved { ip })
            }
            Err(e) => Err(Problem::InvalidSpec {
                message: format!("clusterIP {ip}: {e}"),
            }),
        }
    }

    pub(super) fn allocate_dynamic(
        &mut self,
        family: Family,
        key: &Key,
    ) -> Result<IpAddr, Problem> {
        // Stable addresses: a re-created Service gets its previous address
        // back while it is free (or quarantined for this very Service), and
        // still allowed to its namespace.
        let previous = self
            .remembered
            .get(key)
            .and_then(|ips| ips.iter().copied().find(|ip| Family::of(*ip) == family))
            .filter(|ip| self.sub.allows(&key.namespace, *ip).is_ok());
        if let Some(ip) = previous
            && !self.holders.contains_key(&ip)
        {
            let ours = self.quarantine.get(&ip).is_some_and(|q| &q.owner == key);
            let parked = self.sub.parked.contains(&ip);
            let free = !self.quarantine.contains_key(&ip)
                && !parked
                && self
                    .ranges
                    .iter_mut()
                    .find(|r| r.cidr.contains(&ip))
                    .is_some_and(|r| r.pool.allocate_ip(ip).is_ok());
            if ours || parked || free {
                self.quarantine.remove(&ip);
                self.sub.parked.remove(&ip);
                self.holders.insert(ip, key.clone());
                self.sub.mark(ip);
                if let Some(ips) = self.remembered.get_mut(key) {
                    ips.retain(|i| *i != ip);
                }
                return Ok(ip);
            }
        }
        let Some(range_idx) = self.ranges.iter().position(|r| r.family == family) else {
            return Err(Problem::FamilyNotConfigured { family });
        };

        // The namespace's own ranges, if any select it: only from those.
        let selected = self.sub.selecting(&key.namespace, family);
        if !selected.is_empty() {
            for i in &selected {
                while let Ok(ip) = self.sub.valid[*i].pool.allocate(family) {
                    let main = &mut self.ranges[range_idx].pool;
                    if main.allocate_ip(ip).is_ok() || self.sub.parked.remove(&ip) {
                        self.holders.insert(ip, key.clone());
                        return Ok(ip);
                    }
                    // Taken in the main range already (kept marked here too).
                }
            }
            return Err(Problem::RangeFull {
                range: self.sub.valid[selected[0]].cidr,
            });
        }

        // Other namespaces: anywhere but inside a range.
        loop {
            let range = &mut self.ranges[range_idx];
            let ip = range
                .pool
                .allocate(family)
                .map_err(|_| Problem::RangeFull { range: range.cidr })?;
            if self.sub.containing(ip).is_some() {
                self.sub.parked.insert(ip);
                continue;
            }
            self.holders.insert(ip, key.clone());
            return Ok(ip);
        }
    }

    /// In allocate mode: the spec and status writes that make the Service
    /// show what it holds (or why it holds nothing).
    /// `was_blocked`: the Service had problems, so a `False` condition was
    /// written even if `svc` does not show it yet.
    pub(super) fn allocation_writes(
        &self,
        svc: &Service,
        held: &[IpAddr],
        problem: Option<&Problem>,
        was_blocked: bool,
    ) -> Vec<Write> {
        if problem.is_some() {
            let mut writes = condition_writes(svc, problem, was_blocked);
            let stated = stated_cluster_ips(svc);
            if !stated.is_empty() {
                // The Service holds none of what it asked for: no address
                // is shown (so none is answered in DNS or programmed), and
                // the request is kept aside.
                writes.push(Write::annotate_service(
                    &Key::of(svc).namespace,
                    &Key::of(svc).name,
                    &BTreeMap::from([(
                        annotations::REQUESTED_CLUSTER_IPS.to_owned(),
                        stated.join(","),
                    )]),
                ));
                writes.push(Write::apply_service(
                    svc,
                    json!({ "clusterIP": "", "clusterIPs": [] }),
                ));
            }
            return writes;
        }
        let mut writes = Vec::new();
        let spec = svc.spec.clone().unwrap_or_default();
        let ips: Vec<String> = held.iter().map(ToString::to_string).collect();
        let families: Vec<String> = held.iter().map(|ip| Family::of(*ip).to_string()).collect();
        let policy = spec
            .ip_family_policy
            .clone()
            .unwrap_or_else(|| "SingleStack".to_owned());
        let unchanged = spec.cluster_ip.as_deref() == ips.first().map(String::as_str)
            && spec.cluster_ips.as_deref() == Some(ips.as_slice())
            && spec.ip_families.as_deref() == Some(families.as_slice())
            && spec.ip_family_policy.as_deref() == Some(policy.as_str());
        if !unchanged {
            writes.push(Write::apply_service(
                svc,
                json!({
                    "clusterIP": ips.first(),
                    "clusterIPs": ips,
                    "ipFamilies": families,
                    "ipFamilyPolicy": policy,
                }),
            ));
            let stated = stated_cluster_ips(svc);
            if stated != ips {
                writes.push(Write::event(
                    svc,
                    false,
                    reasons::CLUSTER_IP_ALLOCATED,
                    "Allocate",
                    format!("allocated ClusterIPs {}", ips.join(", ")),
                ));
            }
        }
        writes.extend(condition_writes(svc, None, was_blocked));
        writes
    }

    /// In allocate mode, headless Services get no address but, as from the
    /// API server, their `ipFamilies` and `ipFamilyPolicy` (which decide the
    /// address types of their EndpointSlices). Without a selector the
    /// policy defaults to `RequireDualStack`, and the families need no
    /// service range (see [`Self::selectorless_families`]).
    pub(super) fn headless_families(
        &mut self,
        svc: &Service,
        key: Key,
        reported: &[Problem],
    ) -> Vec<Write> {
        let spec = svc.spec.clone().unwrap_or_default();
        let selectorless = spec.selector.as_ref().is_none_or(|s| s.is_empty());
        let policy = spec.ip_family_policy.clone().unwrap_or_else(|| {
            if selectorless {
                "RequireDualStack".to_owned()
            } else {
                "SingleStack".to_owned()
            }
        });
        let mut probe = svc.clone();
        probe
            .spec
            .get_or_insert_with(Default::default)
            .ip_family_policy = Some(policy.clone());
        let was_blocked = !reported.is_empty();
        let mut writes = Vec::new();
        let planned = if selectorless {
            self.selectorless_families(&probe)
        } else {
            self.plan(&probe, &[])
                .map(|plan| plan.iter().map(|(f, _)| *f).collect())
        };
        match planned {
            Ok(planned) => {
                let families: Vec<String> = planned.iter().map(ToString::to_string).collect();
                if spec.ip_families.as_deref() != Some(families.as_slice())
                    || spec.ip_family_policy.as_deref() != Some(policy.as_str())
                {
                    writes.push(Write::apply_service(
                        svc,
                        json!({ "ipFamilies": families, "ipFamilyPolicy": policy }),
                    ));
                }
                writes.extend(condition_writes(svc, None, was_blocked));
            }
            Err(p) => {
                writes.extend(condition_writes(svc, Some(&p), was_blocked));
                if !reported.contains(&p) {
                    writes.push(Write::event(
                        svc,
                        true,
                        p.reason(),
                        "Allocate",
                        p.to_string(),
                    ));
                }
                self.blocked.insert(
                    key,
                    Blocked {
                        svc: svc.clone(),
                        problems: vec![p],
                    },
                );
            }
        }
        writes
    }
}

impl ClusterIpController {
    /// The families of a headless Service without a selector (endpoints
    /// kept by hand), as the API server's `initIPFamilyFields` gives them:
    /// the stated ones, else the cluster's first; and unless the policy is
    /// `SingleStack`, the other family too, whatever ranges the cluster
    /// has (no address is allocated, so none is needed). What is malformed
    /// is refused as for any Service.
    fn selectorless_families(&self, probe: &Service) -> Result<Vec<Family>, Problem> {
        let refused = || {
            self.plan(probe, &[])
                .map(|plan| plan.iter().map(|(f, _)| *f).collect())
        };
        let spec = probe.spec.clone().unwrap_or_default();
        let mut families = Vec::new();
        for f in spec.ip_families.iter().flatten() {
            match f.as_str() {
                "IPv4" => families.push(Family::V4),
                "IPv6" => families.push(Family::V6),
                _ => return refused(),
            }
        }
        if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
            return refused();
        }
        let policy = spec
            .ip_family_policy
            .as_deref()
            .unwrap_or("RequireDualStack");
        match policy {
            "SingleStack" if families.len() > 1 => return refused(),
            "SingleStack" | "PreferDualStack" | "RequireDualStack" => {}
            _ => return refused(),
        }
        if families.is_empty() {
            families.push(self.ranges.first().map_or(Family::V4, |r| r.family));
        }
        if policy != "SingleStack" && families.len() < 2 {
            families.push(match families[0] {
                Family::V4 => Family::V6,
                Family::V6 => Family::V4,
            });
        }
        Ok(families)
    }
}

/// The condition that says whether a Service got its ClusterIPs: `False`
/// with the problem, or back to `True` once a problem is gone. Nothing is
/// written for Services that never had a problem.
pub(super) fn condition_writes(
    svc: &Service,
    problem: Option<&Problem>,
    was_blocked: bool,
) -> Vec<Write> {
    service_condition_writes(
        svc,
        Wanted {
            type_: CONDITION_CLUSTER_IP_ALLOCATED,
            problem: problem.map(|p| (p.reason(), p.to_string())),
            ok: ("Allocated", "the Service holds its ClusterIPs"),
            was_blocked,
        },
    )
}

/// The ClusterIPs a Service asks for: those it states, else those it was
/// refused before (kept in `portico.dev/requested-cluster-ips`).
pub(super) fn requested_cluster_ips(svc: &Service) -> Vec<String> {
    let stated = stated_cluster_ips(svc);
    if !stated.is_empty() {
        return stated;
    }
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::REQUESTED_CLUSTER_IPS))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr, Problem> {
    s.parse().map_err(|_| Problem::InvalidSpec {
        message: format!("clusterIP {s:?} is not an IP address"),
    })
}
