//! What `portico local` prints: tables in the shape of `kubectl get`, or
//! every object as YAML.

use crate::world::World;
use portico_controllers::k8s::{Service, is_headless, service_condition, service_type};
use portico_crds::names::CONDITION_CLUSTER_IP_ALLOCATED;
use std::io::{self, Write};

/// A table `portico local` can print (`--show`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Show {
    /// Services with their addresses (`kubectl get svc -o wide`).
    Services,
    /// EndpointSlices (`kubectl get endpointslices -o wide`).
    Endpointslices,
    /// IPPools with their addresses, usage and conditions (`kubectl get ippools`).
    Ippools,
    /// ClusterIPRanges with their usage and conditions (`kubectl get clusteripranges`).
    Clusteripranges,
    /// Events the reconcilers recorded (`kubectl get events`).
    Events,
}

/// The tables `--show` asks for, separated by a blank line.
pub fn tables(out: &mut impl Write, world: &World, show: &[Show]) -> io::Result<()> {
    for (i, what) in show.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        match what {
            Show::Services => services_table(out, world)?,
            Show::Endpointslices => endpoint_slices_table(out, world)?,
            Show::Ippools => ippools_table(out, world)?,
            Show::Clusteripranges => ranges_table(out, world)?,
            Show::Events => events_table(out, world)?,
        }
    }
    Ok(())
}

/// `kubectl get svc -A -o wide`, with every ClusterIP of dual-stack Services.
pub fn services_table(out: &mut impl Write, world: &World) -> io::Result<()> {
    let mut rows = vec![row(&[
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "SELECTOR",
    ])];
    for svc in world.services.sorted() {
        rows.push(vec![
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
            service_type(&svc).to_owned(),
            cluster_ip_column(&svc),
            external_ip_column(&svc),
            ports_column(&svc),
            selector_column(&svc),
        ]);
    }
    write_table(out, &rows)
}

/// `kubectl get endpointslices -A -o wide`, with each endpoint's pod and
/// conditions (`R` ready, `S` serving, `T` terminating) so a reader sees what
/// DNS and the dataplane will use.
pub fn endpoint_slices_table(out: &mut impl Write, world: &World) -> io::Result<()> {
    let mut rows = vec![row(&[
        "NAMESPACE",
        "NAME",
        "SERVICE",
        "ADDRESSTYPE",
        "PORTS",
        "ENDPOINTS",
    ])];
    for slice in world.endpoint_slices.sorted() {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(portico_catalog::labels::SERVICE_NAME))
            .cloned()
            .unwrap_or_else(|| "<none>".into());
        let ports: Vec<String> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| match &p.name {
                Some(n) if !n.is_empty() => format!(
                    "{n}:{}/{}",
                    p.port.unwrap_or_default(),
                    p.protocol.as_deref().unwrap_or("TCP")
                ),
                _ => format!(
                    "{}/{}",
                    p.port.unwrap_or_default(),
                    p.protocol.as_deref().unwrap_or("TCP")
                ),
            })
            .collect();
        let endpoints: Vec<String> = slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                let flags: String = [(c.ready, 'R'), (c.serving, 'S'), (c.terminating, 'T')]
                    .iter()
                    .filter(|(v, _)| *v == Some(true))
                    .map(|(_, f)| *f)
                    .collect();
                let who = e
                    .hostname
                    .clone()
                    .or_else(|| e.target_ref.as_ref().and_then(|r| r.name.clone()))
                    .unwrap_or_default();
                format!(
                    "{}({who},{})",
                    e.addresses.join("+"),
                    if flags.is_empty() { "-" } else { &flags }
                )
            })
            .collect();
        rows.push(vec![
            slice.metadata.namespace.clone().unwrap_or_default(),
            slice.metadata.name.clone().unwrap_or_default(),
            service,
            slice.address_type.clone(),
            if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            },
            if endpoints.is_empty() {
                "<unset>".into()
            } else {
                endpoints.join(",")
            },
        ]);
    }
    write_table(out, &rows)
}

/// `kubectl get ippools`, with the conditions spelled out so a reader sees
/// at once which pool is full, disabled or in conflict, and why.
pub fn ippools_table(out: &mut impl Write, world: &World) -> io::Result<()> {
    let mut rows = vec![row(&[
        "NAME",
        "ADDRESSES",
        "USED",
        "FREE",
        "READY",
        "MESSAGE",
    ])];
    for pool in world.ippools.sorted() {
        let status = pool.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        rows.push(vec![
            pool.metadata.name.clone().unwrap_or_default(),
            pool.spec.addresses.join(","),
            status.used.to_string(),
            status.free.to_string(),
            ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
            ready.map(|c| c.message.clone()).unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)
}

/// `kubectl get clusteripranges`, with the Ready message.
pub fn ranges_table(out: &mut impl Write, world: &World) -> io::Result<()> {
    let mut rows = vec![row(&[
        "NAME",
        "CIDR",
        "NAMESPACES",
        "USED",
        "FREE",
        "READY",
        "MESSAGE",
    ])];
    for r in world.clusteripranges.sorted() {
        let status = r.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let selector = r
            .spec
            .namespace_selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        rows.push(vec![
            r.metadata.name.clone().unwrap_or_default(),
            r.spec.cidr.clone(),
            if selector.is_empty() {
                "<expressions>".into()
            } else {
                selector
            },
            status.used.to_string(),
            status.free.to_string(),
            ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
            ready.map(|c| c.message.clone()).unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)
}

/// `kubectl get events -A`, in the order they were recorded.
pub fn events_table(out: &mut impl Write, world: &World) -> io::Result<()> {
    let mut rows = vec![row(&["NAMESPACE", "TYPE", "REASON", "OBJECT", "MESSAGE"])];
    for e in &world.events {
        let r = &e.regarding;
        rows.push(vec![
            r.namespace.clone().unwrap_or_default(),
            if e.warning { "Warning" } else { "Normal" }.to_owned(),
            e.reason.clone(),
            format!(
                "{}/{}",
                r.kind.as_deref().unwrap_or("").to_lowercase(),
                r.name.as_deref().unwrap_or("")
            ),
            e.note.clone(),
        ]);
    }
    write_table(out, &rows)
}

/// Every object, as multi-document YAML (namespaces, nodes, services,
/// endpoint slices, IP pools, pods).
pub fn yaml(out: &mut impl Write, world: &World) -> anyhow::Result<()> {
    // Each document is written as it is made: the whole output of a large
    // world is never held at once.
    fn doc(out: &mut impl Write, obj: &impl serde::Serialize) -> anyhow::Result<()> {
        let doc = serde_saphyr::to_string(obj)?;
        write!(out, "---\n{doc}")?;
        if !doc.ends_with('\n') {
            writeln!(out)?;
        }
        Ok(())
    }
    for o in world.namespaces.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.nodes.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.services.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.endpoint_slices.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.ippools.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.clusteripranges.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.l2announcements.sorted() {
        doc(out, o.as_ref())?;
    }
    for o in world.pods.iter() {
        doc(out, &o)?;
    }
    Ok(())
}

/// Warning Events go to stderr, whatever is printed on stdout.
pub fn warnings(world: &World) {
    for e in world.events.iter().filter(|e| e.warning) {
        let r = &e.regarding;
        let name = match r.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => format!("{ns}/{}", r.name.as_deref().unwrap_or("")),
            _ => r.name.clone().unwrap_or_default(),
        };
        eprintln!(
            "warning: {} {name}: {}: {}",
            r.kind.as_deref().unwrap_or("").to_lowercase(),
            e.reason,
            e.note
        );
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn cluster_ip_column(svc: &Service) -> String {
    if service_type(svc) == "ExternalName" {
        return "<none>".into();
    }
    if is_headless(svc) {
        return "None".into();
    }
    if service_condition(svc, CONDITION_CLUSTER_IP_ALLOCATED).is_some_and(|c| c.status == "False") {
        return "<none>".into();
    }
    let ips = portico_controllers::k8s::stated_cluster_ips(svc);
    if ips.is_empty() {
        "<pending>".into()
    } else {
        ips.join(",")
    }
}

fn external_ip_column(svc: &Service) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    if service_type(svc) == "ExternalName" {
        return spec.external_name.unwrap_or_else(|| "<none>".into());
    }
    let mut ips: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default();
    ips.extend(spec.external_ips.unwrap_or_default());
    match (ips.is_empty(), service_type(svc)) {
        (false, _) => ips.join(","),
        (true, "LoadBalancer") => "<pending>".into(),
        (true, _) => "<none>".into(),
    }
}

fn ports_column(svc: &Service) -> String {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|np| *np != 0) {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_column(svc: &Service) -> String {
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return "<none>".into();
    }
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
