//! The cluster zone, as `portico dns` serves it, asked in process.

use crate::{Cluster, DnsAnswer, Error, Resolve, Resolved};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use portico_catalog::Key;
use portico_dns::{Dns, DnsConfig};
use std::net::IpAddr;

/// The zone of the cluster's objects.
pub(crate) struct Zone {
    dns: Dns,
    apex: String,
}

impl Zone {
    pub fn new(cluster: &Cluster<'_>) -> Result<Zone, Error> {
        let config = DnsConfig {
            zone: cluster.zone.clone(),
            ..DnsConfig::default()
        };
        let dns = Dns::new(config).map_err(|e| Error::Unknown(format!("the DNS zone: {e}")))?;
        dns.reset(&portico_local::catalog(cluster.world));
        dns.mark_synced();
        Ok(Zone {
            dns,
            apex: cluster.zone.trim_end_matches('.').to_ascii_lowercase(),
        })
    }

    pub fn apex(&self) -> &str {
        &self.apex
    }

    /// A name as a client's search path completes it: `web.shop` and
    /// `web.shop.svc` are under `svc.<zone>`.
    pub fn expand(&self, name: &str) -> String {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name == self.apex || name.ends_with(&format!(".{}", self.apex)) {
            name
        } else if name.ends_with(".svc") {
            format!("{name}.{}", self.apex)
        } else {
            format!("{name}.svc.{}", self.apex)
        }
    }

    /// The Service a name in the zone belongs to, and whether the name is
    /// one of its pods' (`db-0.db.shop.svc.<zone>`).
    pub fn service_of(&self, fqdn: &str) -> Option<(Key, bool)> {
        let rest = fqdn.strip_suffix(&format!(".svc.{}", self.apex))?;
        let labels: Vec<&str> = rest.split('.').collect();
        match labels.as_slice() {
            [name, ns] => Some((Key::new(*ns, *name), false)),
            [_, name, ns] => Some((Key::new(*ns, *name), true)),
            _ => None,
        }
    }

    /// One question to the zone.
    pub fn ask(&self, name: &str, t: RecordType) -> DnsAnswer {
        let answers = self.answers(name, t).unwrap_or_else(|rcode| vec![rcode]);
        DnsAnswer {
            name: name.to_owned(),
            type_: t.to_string(),
            answers,
        }
    }

    /// The records of a question, or the response code when it failed.
    fn answers(&self, name: &str, t: RecordType) -> Result<Vec<String>, String> {
        let qname = Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())?;
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(qname, t));
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let Some(response) = self.dns.answer_in_zone(&bytes) else {
            return Err("not in the zone".into());
        };
        let m = Message::from_vec(&response).map_err(|e| e.to_string())?;
        match m.metadata.response_code {
            ResponseCode::NoError => Ok(m
                .answers
                .iter()
                .map(|r| r.data.to_string().trim_end_matches('.').to_owned())
                .collect()),
            ResponseCode::NXDomain => Err("NXDOMAIN".into()),
            other => Err(other.to_string()),
        }
    }

    /// A and AAAA of a name: the families that have records, or the one
    /// answer that says why none do.
    pub fn ask_addresses(&self, fqdn: &str) -> Vec<DnsAnswer> {
        let both = [
            self.ask(fqdn, RecordType::A),
            self.ask(fqdn, RecordType::AAAA),
        ];
        let found: Vec<DnsAnswer> = both
            .iter()
            .filter(|a| !a.answers.is_empty() && a.answers[0] != "NXDOMAIN")
            .cloned()
            .collect();
        if !found.is_empty() {
            return found;
        }
        let [a, _] = both;
        if a.answers.is_empty() {
            vec![DnsAnswer {
                answers: vec!["NODATA".into()],
                ..a
            }]
        } else {
            vec![a]
        }
    }

    /// What the zone answers for the Service's own name (when the target
    /// did not come by name).
    pub fn service_answers(&self, r: &Resolved) -> Vec<DnsAnswer> {
        if !r.dns.is_empty() {
            return Vec::new();
        }
        let fqdn = format!("{}.{}.svc.{}", r.key.name, r.key.namespace, self.apex);
        if crate::is_external_name(&r.svc) {
            vec![self.ask(&fqdn, RecordType::CNAME)]
        } else {
            self.ask_addresses(&fqdn)
        }
    }

    /// Where an ExternalName Service's target resolves (in the zone, or
    /// through `resolve`); `None` for other Services.
    pub fn external_name(
        &self,
        svc: &Service,
        resolve: Resolve<'_>,
    ) -> Option<Result<Vec<IpAddr>, String>> {
        if !crate::is_external_name(svc) {
            return None;
        }
        let spec = svc.spec.as_ref()?;
        let target = spec
            .external_name
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if target.is_empty() {
            return Some(Err("it has no externalName".into()));
        }
        if target == self.apex || target.ends_with(&format!(".{}", self.apex)) {
            let mut ips = Vec::new();
            for t in [RecordType::A, RecordType::AAAA] {
                match self.answers(&target, t) {
                    Ok(a) => ips.extend(a.iter().filter_map(|s| s.parse::<IpAddr>().ok())),
                    Err(rcode) => return Some(Err(rcode)),
                }
            }
            return Some(if ips.is_empty() {
                Err("NODATA".into())
            } else {
                Ok(ips)
            });
        }
        Some(resolve(&target).and_then(|ips| {
            if ips.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(ips)
            }
        }))
    }
}
