//! `-o svg`: the path as a picture, laid out by layout-rs (a Graphviz-like
//! layered layout), left to right:
//!
//! ```text
//!  client ──> Service address ──> node (its chains) ──dnat──> Pod (address, node)
//!   (LAN)     (service network)        (LAN)                  (pod network)
//! ```
//!
//! Colours tell the networks apart: the LAN blue, the service network
//! yellow, the pod network green; what is refused or not ready is red.

use crate::{Action, Explanation};
use layout::adt::dag::NodeHandle;
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

const LAN: &str = "#dae8fc";
const SERVICE_NET: &str = "#fff2cc";
const POD_NET: &str = "#d5e8d4";
const TROUBLE: &str = "#f8cecc";
const DNS: &str = "#e1d5e7";

struct Picture {
    graph: VisualGraph,
}

impl Picture {
    fn box_(&mut self, text: &str, fill: &str, dashed: bool) -> NodeHandle {
        let look = StyleAttr::new(
            Color::fast(if dashed { "gray" } else { "black" }),
            if dashed { 1 } else { 2 },
            Color::from_name(fill),
            6,
            14,
        );
        let shape = ShapeKind::new_box(text);
        let size = get_shape_size(Orientation::LeftToRight, &shape, look.font_size, false);
        self.graph
            .add_node(Element::create(shape, look, Orientation::LeftToRight, size))
    }

    fn arrow(&mut self, from: NodeHandle, to: NodeHandle, text: &str, dashed: bool) {
        let style = if dashed {
            LineStyleKind::Dashed
        } else {
            LineStyleKind::Normal
        };
        let look = StyleAttr::new(Color::fast("black"), 2, None, 0, 12);
        let arrow = Arrow::new(
            LineEndKind::None,
            LineEndKind::Arrow,
            style,
            text,
            &look,
            &None,
            &None,
        );
        self.graph.add_edge(arrow, from, to);
    }
}

/// The picture of an explanation, as an SVG document.
pub fn render(e: &Explanation) -> String {
    let mut p = Picture {
        graph: VisualGraph::new(Orientation::LeftToRight),
    };
    let svc = &e.service;
    let client = p.box_(
        &format!("client:\n{}", e.from.replace(" (", "\n(")),
        LAN,
        false,
    );

    // DNS, when it answered.
    let answered: Vec<String> = e
        .dns
        .iter()
        .map(|a| format!("{} {}\n→ {}", a.name, a.type_, a.answers.join(", ")))
        .collect();
    if !answered.is_empty() {
        let dns = p.box_(&format!("cluster DNS\n{}", answered.join("\n")), DNS, false);
        p.arrow(client, dns, "asks", true);
    }

    // The address the packet is sent to.
    let dst = e.destination.clone().unwrap_or_default();
    let kind = if svc
        .load_balancer_ips
        .iter()
        .any(|ip| dst.starts_with(ip.as_str()))
    {
        "LoadBalancer address"
    } else if svc
        .external_ips
        .iter()
        .any(|ip| dst.starts_with(ip.as_str()))
    {
        "external IP"
    } else if svc.cluster_ips.iter().any(|ip| dst.contains(ip.as_str())) {
        "ClusterIP"
    } else if dst.is_empty() {
        "no virtual address"
    } else {
        "NodePort"
    };
    let networks = if kind == "ClusterIP" {
        format!("\nservice network {}", e.networks.service.join(", "))
    } else {
        String::new()
    };
    let service = p.box_(
        &format!(
            "Service {}/{} ({})\n{kind} {dst}{networks}",
            svc.namespace, svc.name, svc.type_
        ),
        SERVICE_NET,
        false,
    );
    p.arrow(client, service, "connects", false);

    // The node and the chains the packet met.
    let mut chains: Vec<&str> = Vec::new();
    for s in &e.path {
        if let Some(chain) = s.step.strip_prefix("nft ") {
            let chain = chain.rsplit(' ').next().unwrap_or(chain);
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
    }
    let verdict = &e.verdict;
    let rules = if chains.is_empty() {
        p.box_(&format!("node {}\n(no NAT rule)", e.node), LAN, true)
    } else {
        p.box_(
            &format!("node {}\nnftables: {}", e.node, chains.join("\n→ ")),
            LAN,
            false,
        )
    };
    p.arrow(service, rules, "", false);
    if let Some(a) = &e.announcer {
        let l2 = p.box_(
            &format!(
                "node {a}\nanswers ARP/NDP for\n{}",
                svc.load_balancer_ips.join(", ")
            ),
            LAN,
            false,
        );
        p.arrow(l2, service, "announces", true);
    }

    // Where it goes.
    match verdict.action {
        Action::Dnat | Action::Accept => {
            let mut shown = 0;
            for ep in &e.endpoints {
                let reached = verdict.endpoints.iter().find(|v| {
                    v.rsplit_once(':')
                        .map(|(ip, _)| ip.trim_matches(['[', ']']))
                        == Some(ep.address.as_str())
                });
                let label = format!(
                    "{}\n{}\non node {}\npod network {}",
                    ep.pod.as_deref().unwrap_or("endpoint"),
                    reached.cloned().unwrap_or_else(|| ep.address.clone()),
                    ep.node.as_deref().unwrap_or("?"),
                    e.networks.pods.join(", ")
                );
                let ready = ep.ready && !ep.terminating;
                let b = p.box_(&label, if ready { POD_NET } else { TROUBLE }, !ready);
                if reached.is_some() {
                    let how = match (verdict.action, verdict.masquerade) {
                        (Action::Dnat, true) => "dnat + masquerade",
                        (Action::Dnat, false) => "dnat",
                        _ => "direct",
                    };
                    p.arrow(rules, b, how, false);
                    shown += 1;
                } else {
                    p.arrow(rules, b, "not ready", true);
                }
            }
            // Endpoints reached that no slice lists (an ExternalName's).
            if shown == 0 && !verdict.endpoints.is_empty() {
                let b = p.box_(&verdict.endpoints.join("\n"), POD_NET, false);
                p.arrow(rules, b, verdict.action.as_str(), false);
            }
        }
        Action::Reject | Action::Drop => {
            let b = p.box_(
                &format!(
                    "{}\n{}",
                    verdict.action.as_str().to_uppercase(),
                    e.problems.first().map(String::as_str).unwrap_or("")
                ),
                TROUBLE,
                false,
            );
            p.arrow(rules, b, verdict.action.as_str(), false);
        }
    }
    if !e.problems.is_empty() && matches!(verdict.action, Action::Dnat | Action::Accept) {
        let b = p.box_(
            &format!("problems\n{}", e.problems.join("\n")),
            TROUBLE,
            true,
        );
        p.arrow(service, b, "", true);
    }

    let mut writer = SVGWriter::new();
    p.graph.do_it(false, false, false, &mut writer);
    let svg = fit(&writer.finalize());
    // A title, so that a browser's tab and a screen reader name it.
    let title = format!(
        "<title>portico explain {}/{}: {}</title>\n",
        svc.namespace,
        svc.name,
        verdict.action.as_str()
    );
    match svg.find("xmlns=\"http://www.w3.org/2000/svg\">\n") {
        Some(i) => {
            let at = i + "xmlns=\"http://www.w3.org/2000/svg\">\n".len();
            format!("{}{}{}", &svg[..at], escape(&title), &svg[at..])
        }
        None => svg,
    }
}

/// The number in `attr="…"` of a tag.
fn attr(tag: &str, name: &str) -> Option<f64> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &tag[at..];
    rest[..rest.find('"')?].trim().parse().ok()
}

/// Sizes the canvas to the boxes drawn: layout-rs grows it by each text's
/// length, downwards too, which leaves a large empty page.
fn fit(svg: &str) -> String {
    let (mut width, mut height) = (0f64, 0f64);
    for tag in svg.split("<rect").skip(1) {
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        if let (Some(x), Some(y), Some(w), Some(h)) = (
            attr(tag, "x"),
            attr(tag, "y"),
            attr(tag, "width"),
            attr(tag, "height"),
        ) {
            width = width.max(x + w);
            height = height.max(y + h);
        }
    }
    let Some(start) = svg.find("<svg ") else {
        return svg.to_owned();
    };
    let Some(end) = svg[start..].find(" xmlns=").map(|i| start + i) else {
        return svg.to_owned();
    };
    let (w, h) = ((width + 20.0).ceil(), (height + 20.0).ceil());
    format!(
        "{}<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"{}",
        &svg[..start],
        &svg[end..]
    )
}

/// Escapes the title's text (its tags are ours).
fn escape(title: &str) -> String {
    let inner = title
        .trim_start_matches("<title>")
        .trim_end_matches("</title>\n")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<title>{inner}</title>\n")
}
