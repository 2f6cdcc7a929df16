//! What LoadBalancer IPAM writes and reports: the Services' statuses and
//! conditions, the pools' statuses, and the metrics.

use super::*;

impl LbIpamController {
    /// Status writes for the pools whose status differs from what they show.
    pub(super) fn pool_writes(&self) -> Vec<Write> {
        let mut writes = Vec::new();
        for p in self.pools.values() {
            let status = self.pool_status(p);
            let current = p.obj.status.clone().unwrap_or_default();
            if same_pool_status(&status, &current) {
                continue;
            }
            let value = serde_json::to_value(&status).unwrap_or_default();
            writes.push(Write::Apply(Apply {
                target: Target {
                    kind: TargetKind::IPPool,
                    namespace: String::new(),
                    name: p.name(),
                },
                status: true,
                patch: json!({
                    "apiVersion": "portico.dev/v1alpha1",
                    "kind": "IPPool",
                    "metadata": { "name": p.name() },
                    "status": value,
                }),
            }));
        }
        writes
    }

    pub(super) fn pool_status(&self, p: &PoolState) -> IPPoolStatus {
        let previous = p
            .obj
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let condition = |type_: &str, status: bool, reason: &str, message: String| {
            crate::conditions::condition(
                previous,
                type_,
                status,
                reason,
                message,
                p.obj.metadata.generation,
            )
        };
        let usage = |family| {
            p.pool
                .as_ref()
                .filter(|pool| pool.families().any(|f| f == family))
                .map(|pool| {
                    let u = pool.usage(family);
                    FamilyUsage {
                        total: sat(u.size),
                        used: sat(u.used),
                        free: sat(u.free),
                    }
                })
        };
        let (ipv4, ipv6) = (usage(Family::V4), usage(Family::V6));
        let sum = |f: fn(&FamilyUsage) -> i64| {
            [ipv4, ipv6]
                .iter()
                .flatten()
                .map(f)
                .fold(0i64, i64::saturating_add)
        };
        let ready = match (&p.invalid, &p.conflict, p.spec().disabled) {
            (Some(e), _, _) => condition("Ready", false, "InvalidSpec", e.clone()),
            (None, Some(c), _) => condition(
                "Ready",
                false,
                "Conflict",
                format!("{c}; no new assignments"),
            ),
            (None, None, true) => condition(
                "Ready",
                false,
                "Disabled",
                "disabled: no new assignments; Services keep their addresses".to_owned(),
            ),
            (None, None, false) => condition(
                "Ready",
                true,
                "Ready",
                format!("{} addresses free", sum(|u| u.free)),
            ),
        };
        let conflict = match &p.conflict {
            Some(c) => condition("Conflict", true, "Overlap", c.clone()),
            None => condition(
                "Conflict",
                false,
                "NoOverlap",
                "its addresses overlap nothing".to_owned(),
            ),
        };
        IPPoolStatus {
            conditions: vec![ready, conflict],
            used: sum(|u| u.used),
            free: sum(|u| u.free),
            ipv4,
            ipv6,
        }
    }

    pub(super) fn publish_metrics(&self) {
        for p in self.pools.values() {
            let Some(pool) = p.pool.as_ref() else {
                continue;
            };
            for family in pool.families() {
                let u = pool.usage(family);
                for (state, value) in [("used", u.used), ("free", u.free)] {
                    self.metrics
                        .addresses
                        .get_or_create(&crate::metrics::PoolAddresses {
                            pool: p.name(),
                            family: family.to_string(),
                            state,
                        })
                        .set(value as f64);
                }
            }
        }
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        for p in self.problems.values() {
            *counts.entry(p.reason).or_default() += 1;
        }
        for reason in [
            lb_reasons::NO_MATCHING_POOL,
            lb_reasons::POOL_EXHAUSTED,
            lb_reasons::REQUESTED_IP_IN_USE,
            lb_reasons::REQUESTED_IP_NOT_IN_POOL,
            lb_reasons::POOL_IN_CONFLICT,
            lb_reasons::INVALID_REQUEST,
        ] {
            self.metrics
                .pending
                .get_or_create(&crate::metrics::PendingReason { reason })
                .set(counts.get(reason).copied().unwrap_or(0));
        }
    }
}

pub(super) fn same_pool_status(a: &IPPoolStatus, b: &IPPoolStatus) -> bool {
    a.used == b.used
        && a.free == b.free
        && a.ipv4 == b.ipv4
        && a.ipv6 == b.ipv6
        && condition_summaries(&a.conditions) == condition_summaries(&b.conditions)
}

pub(super) fn sat(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The condition the Service should show.
pub(super) fn wanted_condition(
    got: &[(IpAddr, String)],
    problem: Option<&Problem>,
) -> (&'static str, &'static str, String) {
    match problem {
        Some(p) => ("False", p.reason, p.message.clone()),
        None => ("True", lb_reasons::ALLOCATED, list(got)),
    }
}

pub(super) fn condition_is(
    svc: &Service,
    got: &[(IpAddr, String)],
    problem: Option<&Problem>,
) -> bool {
    let (status, reason, message) = wanted_condition(got, problem);
    service_condition(svc, CONDITION_IP_ALLOCATED)
        .is_some_and(|c| c.status == status && c.reason == reason && c.message == message)
}

pub(super) fn status_write(
    svc: &Service,
    got: &[(IpAddr, String)],
    problem: Option<&Problem>,
) -> Write {
    let (status, reason, message) = wanted_condition(got, problem);
    let condition = crate::conditions::condition(
        crate::conditions::service_conditions(svc),
        CONDITION_IP_ALLOCATED,
        status == "True",
        reason,
        message,
        svc.metadata.generation,
    );
    let ingress: Vec<_> = got
        .iter()
        .map(|(ip, _)| json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
        .collect();
    Write::apply_service_status(
        svc,
        json!({
            "loadBalancer": { "ingress": ingress },
            "conditions": [condition],
        }),
    )
}
