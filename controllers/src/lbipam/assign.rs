//! How a Service gets its addresses: kept, requested, shared under a
//! sharing key, or the lowest free one of the best pool.

use super::*;

impl LbIpamController {
    /// Works out the Service's addresses, family by family. `before` is what
    /// it held (none of it released yet).
    pub(super) fn assign(
        &mut self,
        svc: &Service,
        key: &Key,
        before: Held,
    ) -> (Held, Option<Problem>) {
        let spec = svc.spec.clone().unwrap_or_default();
        let (requested, families) = match request(svc) {
            Ok(r) => r,
            Err(p) => {
                for (ip, _) in &before {
                    self.release(*ip, key);
                }
                return (Vec::new(), Some(p));
            }
        };
        let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
        let required = |i: usize| i == 0 || policy == "RequireDualStack";

        // A dual-stack Service takes both addresses from one pool, as with
        // MetalLB: the first family's pool is the only one for the second.
        let mut got: Held = Vec::new();
        let mut problem = None;
        let mut kept: Vec<IpAddr> = Vec::new();
        for (i, family) in families.iter().copied().enumerate() {
            let wanted = requested
                .iter()
                .copied()
                .find(|ip| Family::of(*ip) == family);
            let first_pool = got.first().map(|(_, pool)| pool.clone());
            let same_pool = |pool: &str| first_pool.as_deref().is_none_or(|f| f == pool);
            if let Some((ip, pool)) = before.iter().find(|(ip, _)| Family::of(*ip) == family)
                && wanted.is_none_or(|w| w == *ip)
                && same_pool(pool)
                && self.may_keep(svc, *ip, pool)
                && self.compatible(svc, key, *ip).is_ok()
            {
                got.push((*ip, pool.clone()));
                kept.push(*ip);
                continue;
            }
            let result = match (wanted, first_pool.as_deref()) {
                (Some(ip), first) => self.claim(svc, key, ip).and_then(|(ip, pool)| {
                    match first.filter(|f| *f != pool) {
                        Some(f) => {
                            self.release(ip, key);
                            Err(Problem::new(
                                lb_reasons::INVALID_REQUEST,
                                format!(
                                    "requested {ip} is in pool {pool}, and the Service's other address in pool {f}; a dual-stack Service takes both from one pool"
                                ),
                            ))
                        }
                        None => Ok((ip, pool)),
                    }
                }),
                (None, Some(first)) => self.share_or_allocate(svc, key, family, Within::Pool(first)),
                (None, None) if families.len() > 1 => {
                    match self.share_or_allocate(svc, key, family, Within::Serving(&families)) {
                        Err(_) if policy != "RequireDualStack" => {
                            self.share_or_allocate(svc, key, family, Within::Any)
                        }
                        r => r,
                    }
                }
                (None, None) => self.share_or_allocate(svc, key, family, Within::Any),
            };
            match result {
                Ok(pool) => got.push(pool),
                Err(p) if required(i) => {
                    problem.get_or_insert(p);
                }
                Err(_) => {}
            }
        }
        // Release what is not kept (what was just claimed is already held).
        for (ip, _) in &before {
            if !kept.contains(ip) && !got.iter().any(|(g, _)| g == ip) {
                self.release(*ip, key);
            }
        }
        if problem.is_some() && policy == "RequireDualStack" {
            for (ip, _) in got.drain(..) {
                self.release(ip, key);
            }
        }
        (got, problem)
    }

    /// Takes a requested address.
    pub(super) fn claim(
        &mut self,
        svc: &Service,
        key: &Key,
        ip: IpAddr,
    ) -> Result<(IpAddr, String), Problem> {
        let Some(pool) = self.pools.values().find(|p| p.contains(ip)) else {
            return Err(Problem::new(
                lb_reasons::REQUESTED_IP_NOT_IN_POOL,
                format!("requested {ip} is in no pool"),
            ));
        };
        let name = pool.name();
        if !self.may_use(svc, pool, Some(ip)) {
            return Err(Problem::new(
                lb_reasons::REQUESTED_IP_NOT_IN_POOL,
                format!("requested {ip} is in pool {name}, which does not serve this Service"),
            ));
        }
        if let Some(c) = &pool.conflict {
            return Err(Problem::new(
                lb_reasons::POOL_IN_CONFLICT,
                format!("requested {ip} is in pool {name}, which is in conflict: {c}"),
            ));
        }
        let shared = self.holders.get(&ip).is_some_and(|h| !h.is_empty());
        if shared {
            self.compatible(svc, key, ip).map_err(|(holder, why)| {
                Problem::new(
                    lb_reasons::REQUESTED_IP_IN_USE,
                    format!("requested {ip} is held by Service {holder}, and {why}"),
                )
            })?;
        } else {
            if pool.spec().disabled {
                return Err(Problem::new(
                    lb_reasons::POOL_EXHAUSTED,
                    format!(
                        "requested {ip} is in pool {name}, which is disabled for new assignments"
                    ),
                ));
            }
            let result = self
                .pools
                .get_mut(&name)
                .and_then(|p| p.pool.as_mut())
                .map(|p| p.allocate_ip(ip));
            match result {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(Problem::new(
                        lb_reasons::REQUESTED_IP_NOT_IN_POOL,
                        format!("requested {ip}: {e}"),
                    ));
                }
                None => {
                    return Err(Problem::new(
                        lb_reasons::REQUESTED_IP_NOT_IN_POOL,
                        format!("requested {ip} is in no pool"),
                    ));
                }
            }
        }
        self.add_holder(ip, key);
        Ok((ip, name))
    }

    /// Shares an address under the Service's sharing key, or takes the
    /// lowest free address of the best pool.
    pub(super) fn share_or_allocate(
        &mut self,
        svc: &Service,
        key: &Key,
        family: Family,
        within: Within<'_>,
    ) -> Result<(IpAddr, String), Problem> {
        if let Some(sharing) = annotation(svc, annotations::SHARING_KEY) {
            let mut partners: Vec<(IpAddr, String)> = self
                .held
                .iter()
                .filter(|(k, _)| k.namespace == key.namespace && *k != key)
                .filter(|(k, _)| {
                    self.services
                        .get(*k)
                        .and_then(|s| annotation(s, annotations::SHARING_KEY))
                        == Some(sharing)
                })
                .flat_map(|(_, h)| h.iter().cloned())
                .filter(|(ip, _)| Family::of(*ip) == family)
                .collect();
            partners.sort();
            partners.dedup();
            for (ip, pool) in partners {
                let usable = self
                    .pools
                    .get(&pool)
                    .is_some_and(|p| within.admits(p) && self.may_use(svc, p, None));
                if usable && self.compatible(svc, key, ip).is_ok() {
                    self.add_holder(ip, key);
                    return Ok((ip, pool));
                }
            }
        }
        let mut candidates: Vec<&PoolState> = self
            .pools
            .values()
            .filter(|p| {
                p.pool
                    .as_ref()
                    .is_some_and(|pool| pool.families().any(|f| f == family))
            })
            .filter(|p| self.may_use(svc, p, None))
            .collect();
        if candidates.is_empty() {
            return Err(Problem::new(
                lb_reasons::NO_MATCHING_POOL,
                format!(
                    "no pool serves {family} addresses to this Service{}",
                    self.why_no_pool(svc)
                ),
            ));
        }
        candidates.retain(|p| within.admits(p));
        if candidates.is_empty() {
            return Err(Problem::new(
                lb_reasons::NO_MATCHING_POOL,
                match within {
                    Within::Pool(pool) => format!(
                        "pool {pool}, which gave the Service's other address, has no {family} addresses for it"
                    ),
                    _ => "no pool serves both families to this dual-stack Service, with a free address of each".to_owned(),
                },
            ));
        }
        candidates.sort_by_key(|p| pool_order(p));
        let (usable, blocked): (Vec<&PoolState>, Vec<&PoolState>) =
            candidates.into_iter().partition(|p| p.assigns());
        let names: Vec<String> = usable.iter().map(|p| p.name()).collect();
        let blocked: Vec<(String, Option<String>)> = blocked
            .iter()
            .map(|p| (p.name(), p.conflict.clone()))
            .collect();
        for name in &names {
            let ip = self
                .pools
                .get_mut(name)
                .and_then(|p| p.pool.as_mut())
                .and_then(|p| p.allocate(family).ok());
            if let Some(ip) = ip {
                self.add_holder(ip, key);
                return Ok((ip, name.clone()));
            }
        }
        if names.is_empty() {
            let why: Vec<String> = blocked
                .iter()
                .map(|(name, conflict)| match conflict {
                    Some(c) => format!("pool {name} is in conflict ({c})"),
                    None => format!("pool {name} is disabled"),
                })
                .collect();
            let reason = if blocked.iter().any(|(_, c)| c.is_some()) {
                lb_reasons::POOL_IN_CONFLICT
            } else {
                lb_reasons::POOL_EXHAUSTED
            };
            return Err(Problem::new(
                reason,
                format!("no pool can assign an {family} address: {}", why.join("; ")),
            ));
        }
        Err(Problem::new(
            lb_reasons::POOL_EXHAUSTED,
            format!(
                "no free {family} address left in pool{} {}",
                if names.len() > 1 { "s" } else { "" },
                names.join(", ")
            ),
        ))
    }
}

/// The order in which pools are tried for a Service, as MetalLB's
/// allocator tries them: the pools that select Services (by label or
/// namespace; `may_use` has kept only those that select this one) before
/// the pools for every Service; within each, the lowest priority first,
/// with 0 (unset) after every set priority; then the name.
fn pool_order(p: &PoolState) -> (bool, bool, i32, String) {
    let spec = p.spec();
    let selects = spec.service_selector.is_some() || spec.namespace_selector.is_some();
    (!selects, spec.priority == 0, spec.priority, p.name())
}

/// The addresses a Service asks for and the families it needs, in order;
/// refused as MetalLB refuses them: a requested family the Service does
/// not have, or one address for a dual-stack Service.
fn request(svc: &Service) -> Result<(Vec<IpAddr>, Vec<Family>), Problem> {
    let requested = requested_ips(svc)?;
    let mut families: Vec<Family> = svc
        .spec
        .iter()
        .flat_map(|s| s.ip_families.iter().flatten())
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if families.is_empty() {
        families = requested.iter().map(|ip| Family::of(*ip)).collect();
    }
    if families.is_empty() {
        families.push(Family::V4);
    }
    let invalid = |message: String| Err(Problem::new(lb_reasons::INVALID_REQUEST, message));
    if let Some(ip) = requested
        .iter()
        .find(|ip| !families.contains(&Family::of(**ip)))
    {
        return invalid(format!(
            "requested {ip} is {}, which the Service's ipFamilies do not include",
            Family::of(*ip)
        ));
    }
    if !requested.is_empty() && requested.len() < families.len() {
        return invalid(format!(
            "requested {} but the Service is dual-stack; ask for one address of each family",
            list_ips(&requested)
        ));
    }
    Ok((requested, families))
}

/// Which pools an address may come from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Within<'a> {
    /// Any pool the Service may use.
    Any,
    /// This pool only (a dual-stack Service's second address).
    Pool(&'a str),
    /// Pools that have a free address of each of these families (a
    /// dual-stack Service's first address).
    Serving(&'a [Family]),
}

impl Within<'_> {
    fn admits(&self, p: &PoolState) -> bool {
        match self {
            Within::Any => true,
            Within::Pool(name) => p.name() == *name,
            Within::Serving(families) => p
                .pool
                .as_ref()
                .is_some_and(|pool| families.iter().all(|f| pool.usage(*f).free > 0)),
        }
    }
}

fn list_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
