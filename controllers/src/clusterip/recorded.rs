//! kube-apiserver's IPAddress objects (KEP-1880): addresses recorded for
//! Services that may not be in the watch yet, never handed to another.

use super::*;

impl ClusterIpController {
    /// Replaces every `networking.k8s.io/v1` IPAddress (a relist).
    pub fn reset_ip_addresses<'a>(&mut self, objects: impl IntoIterator<Item = &'a IPAddress>) {
        let old: Vec<IpAddr> = self.recorded.keys().copied().collect();
        self.recorded = objects.into_iter().filter_map(recorded_service).collect();
        for ip in old {
            if !self.recorded.contains_key(&ip) {
                self.free_if_unused(ip);
            }
        }
        self.remark_recorded();
    }

    /// An IPAddress was added or changed.
    pub fn apply_ip_address(&mut self, object: &IPAddress) {
        if let Some((ip, key)) = recorded_service(object) {
            self.recorded.insert(ip, key);
            self.remark_recorded();
        }
    }

    /// An IPAddress was deleted.
    pub fn delete_ip_address(&mut self, object: &IPAddress) {
        if let Some((ip, _)) = recorded_service(object)
            && self.recorded.remove(&ip).is_some()
        {
            self.free_if_unused(ip);
        }
    }

    /// Whether the address is marked taken in its range.
    pub(super) fn pool_has(&self, ip: IpAddr) -> bool {
        self.ranges
            .iter()
            .any(|r| r.cidr.contains(&ip) && r.pool.is_allocated(ip))
    }

    /// Frees an address no Service holds and nothing keeps taken.
    pub(super) fn free_if_unused(&mut self, ip: IpAddr) {
        let kept = self.holders.contains_key(&ip)
            || self.quarantine.contains_key(&ip)
            || self.sub.parked.contains(&ip)
            || self.pending.values().any(|(_, ips)| ips.contains(&ip));
        if !kept {
            self.sub.release(ip);
            if let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(&ip)) {
                r.pool.release(ip);
            }
        }
    }

    /// Marks the recorded addresses no Service holds yet as taken.
    pub(super) fn remark_recorded(&mut self) {
        for ip in self.recorded.keys() {
            if !self.holders.contains_key(ip)
                && let Some(r) = self.ranges.iter_mut().find(|r| r.cidr.contains(ip))
            {
                let _ = r.pool.allocate_ip(*ip);
                self.sub.mark(*ip);
            }
        }
    }
}

/// The address and Service an IPAddress object records (its name is the
/// address; its parent the Service).
pub(super) fn recorded_service(object: &IPAddress) -> Option<(IpAddr, Key)> {
    let ip: IpAddr = object.metadata.name.as_deref()?.parse().ok()?;
    let parent = &object.spec.as_ref()?.parent_ref;
    (parent.resource == "services").then(|| {
        (
            ip,
            Key::new(
                parent.namespace.clone().unwrap_or_default(),
                parent.name.clone(),
            ),
        )
    })
}
