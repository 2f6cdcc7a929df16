//! `-o text`: the explanation for a person, in the shape of `kubectl
//! describe`.

use crate::Explanation;
use std::fmt::Write as _;

fn or_none(v: &[String]) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.join(",")
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The explanation as text.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let svc = &e.service;
    let _ = writeln!(s, "Service:          {}/{}", svc.namespace, svc.name);
    let _ = writeln!(s, "Type:             {}", svc.type_);
    if let Some(name) = &svc.external_name {
        let _ = writeln!(s, "External name:    {name}");
    }
    let _ = writeln!(s, "ClusterIPs:       {}", or_none(&svc.cluster_ips));
    if !svc.external_ips.is_empty() {
        let _ = writeln!(s, "External IPs:     {}", svc.external_ips.join(","));
    }
    if !svc.load_balancer_ips.is_empty() || svc.type_ == "LoadBalancer" {
        let _ = writeln!(s, "LoadBalancer IPs: {}", or_none(&svc.load_balancer_ips));
        let _ = writeln!(
            s,
            "Announced by:     {}",
            e.announcer.as_deref().unwrap_or("<none>")
        );
    }
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| {
            let name = if p.name.is_empty() {
                String::new()
            } else {
                format!("{} ", p.name)
            };
            let node = p
                .node_port
                .map(|n| format!(", NodePort {n}"))
                .unwrap_or_default();
            format!("{name}{}/{} → {}{node}", p.port, p.protocol, p.target_port)
        })
        .collect();
    let _ = writeln!(s, "Ports:            {}", or_none(&ports));
    let _ = writeln!(s, "Node:             {}", e.node);
    let _ = writeln!(s, "From:             {}", e.from);
    s.push_str("\nDNS:\n");
    if e.dns.is_empty() {
        s.push_str("  <none>\n");
    }
    for a in &e.dns {
        let _ = writeln!(s, "  {} {} → {}", a.name, a.type_, a.answers.join(", "));
    }
    s.push_str("\nEndpoints:\n");
    if e.endpoints.is_empty() {
        s.push_str("  <none>\n");
    } else {
        let rows: Vec<[String; 7]> = e
            .endpoints
            .iter()
            .map(|ep| {
                [
                    ep.address.clone(),
                    ep.pod.clone().unwrap_or_else(|| "<none>".into()),
                    ep.node.clone().unwrap_or_else(|| "<none>".into()),
                    ep.zone.clone().unwrap_or_else(|| "<none>".into()),
                    yes(ep.ready).into(),
                    yes(ep.serving).into(),
                    yes(ep.terminating).into(),
                ]
            })
            .collect();
        let head = [
            "ADDRESS",
            "POD",
            "NODE",
            "ZONE",
            "READY",
            "SERVING",
            "TERMINATING",
        ];
        let widths: Vec<usize> = (0..7)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or_default()
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut l = String::from("  ");
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}   ", w = widths[i]);
                }
            }
            l.trim_end().to_owned()
        };
        let _ = writeln!(s, "{}", line(head.to_vec()));
        for r in &rows {
            let _ = writeln!(s, "{}", line(r.iter().map(String::as_str).collect()));
        }
    }
    s.push_str("\nPath:\n");
    for (i, p) in e.path.iter().enumerate() {
        let _ = writeln!(s, "  {:>2}. {:<28} {}", i + 1, p.step, p.detail);
    }
    let v = &e.verdict;
    let _ = writeln!(
        s,
        "\nVerdict:          {}{}{}",
        v.action.as_str(),
        if v.endpoints.is_empty() {
            String::new()
        } else {
            format!(" → {}", v.endpoints.join(", "))
        },
        if v.masquerade { " (masqueraded)" } else { "" }
    );
    s.push_str("\nProblems:\n");
    if e.problems.is_empty() {
        s.push_str("  <none>\n");
    }
    for p in &e.problems {
        let _ = writeln!(s, "  - {p}");
    }
    s
}
