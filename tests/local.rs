//! The `portico local` binary on manifest files: the table users see, the
//! YAML they can feed to other tools, and the errors they get.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::process::{Command, Output};

fn portico(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const LAB: &[&str] = &[
    "local",
    "-f",
    "examples/lab.yaml",
    "--service-cluster-ip-range",
    "10.96.0.0/12",
    "--cluster-cidr",
    "20.96.0.0/12",
];

/// The table as rows of whitespace-separated cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn in_service_range(ip: &str) -> bool {
    let net: ipnet::IpNet = "10.96.0.0/12".parse().unwrap();
    net.contains(&ip.parse::<IpAddr>().unwrap())
}

#[test]
fn the_lab_prints_its_services_with_cluster_ips() {
    let out = portico(LAB);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = rows(&stdout(&out));
    assert_eq!(
        table[0],
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "SELECTOR"
        ]
    );
    let find = |name: &str| {
        table
            .iter()
            .find(|r| r[1] == name)
            .unwrap_or_else(|| panic!("{name} missing from {table:?}"))
            .clone()
    };
    let api = find("api-tester");
    assert_eq!(&api[..3], ["default", "api-tester", "ClusterIP"]);
    assert!(in_service_range(&api[3]), "{api:?}");
    assert_eq!(&api[4..], ["<none>", "80/TCP", "app=api-tester"]);

    let nodeport = find("api-tester-nodeport");
    assert_eq!(nodeport[2], "NodePort");
    assert!(in_service_range(&nodeport[3]));
    assert_eq!(nodeport[5], "80:31231/TCP");

    let lb = find("api-tester-lb");
    assert_eq!(lb[2], "LoadBalancer");
    assert!(in_service_range(&lb[3]));
    assert_eq!(
        lb[4..6],
        ["192.168.56.60", "80:31232/TCP"],
        "the first address of the lab pool"
    );

    assert_eq!(
        find("db")[2..6],
        ["ClusterIP", "None", "<none>", "5432/TCP"]
    );
    assert_eq!(
        find("ext-github")[2..5],
        ["ExternalName", "<none>", "github.com"]
    );
    assert_eq!(find("kubernetes")[2..4], ["ClusterIP", "10.96.0.1"]);

    let kubernetes = find("kubernetes");
    let ips: std::collections::BTreeSet<&String> = [&api[3], &nodeport[3], &lb[3], &kubernetes[3]]
        .into_iter()
        .collect();
    assert_eq!(ips.len(), 4, "every Service has its own address");
    assert_eq!(table.len(), 7, "header and six Services: {table:?}");
}

#[test]
fn yaml_output_carries_the_allocated_addresses() {
    let mut args = LAB.to_vec();
    args.extend(["-o", "yaml"]);
    let out = portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d.trim_start_matches("---\n")).unwrap())
        .collect();
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "api-tester")
        .unwrap();
    let ip = svc["spec"]["clusterIPs"][0].as_str().unwrap();
    assert!(in_service_range(ip));
    assert_eq!(svc["spec"]["ipFamilies"][0], "IPv4");
    assert_eq!(docs.iter().filter(|d| d["kind"] == "Node").count(), 3);
    assert_eq!(docs.iter().filter(|d| d["kind"] == "Pod").count(), 4);
}

#[test]
fn a_bad_document_is_reported_and_skipped_and_a_bad_request_gets_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {ports: nope}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: far}\nspec: {clusterIP: 10.200.0.1, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let out = portico(&["local", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("svc.yaml: document 1: skipped: invalid Service"),
        "{err}"
    );
    assert!(
        err.contains("warning: service default/far: ClusterIPOutOfRange: clusterIP 10.200.0.1 is outside every service range"),
        "{err}"
    );
    let table = rows(&stdout(&out));
    assert!(
        table
            .iter()
            .any(|r| r[1] == "good" && in_service_range(&r[3]))
    );
    assert!(table.iter().any(|r| r[1] == "far" && r[3] == "<none>"));
    assert!(!table.iter().any(|r| r[1] == "broken"));
}

#[test]
fn overlapping_service_and_pod_networks_stop_start_up_with_a_clear_message() {
    let out = portico(&[
        "local",
        "-f",
        "examples/lab.yaml",
        "--service-cluster-ip-range",
        "10.96.0.0/12",
        "--cluster-cidr",
        "10.100.0.0/16",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: --service-cluster-ip-range: service range 10.96.0.0/12 overlaps the pod network \
         10.100.0.0/16 (--cluster-cidr): pods and services must never share addresses"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = portico(&["local", "-f", "does/not/exist.yaml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does/not/exist.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn watch_reconciles_again_when_a_file_changes_and_keeps_given_addresses() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    let first =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
    std::fs::write(&file, first).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "local",
            "--watch",
            "--watch-interval",
            "50ms",
            "-f",
            file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait_for = |name: &str| -> Vec<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no row for {name}"));
            let cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if cells.get(1).map(String::as_str) == Some(name) {
                return cells;
            }
        }
    };
    let web_before = wait_for("web");
    std::fs::write(
        &file,
        format!("{first}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api}}\nspec: {{ports: [{{port: 8080}}]}}\n"),
    )
    .unwrap();
    // A modification time that differs even on coarse filesystems.
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    // Rows are sorted by name: api, kubernetes, web.
    let api = wait_for("api");
    let web_after = wait_for("web");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        web_before[3], web_after[3],
        "a reload keeps the address given before"
    );
    assert!(in_service_range(&api[3]));
    assert_ne!(api[3], web_after[3]);
}

#[test]
fn the_lab_shows_endpoint_slices_that_follow_the_selectors() {
    let mut args = LAB.to_vec();
    args.extend(["--show", "endpointslices"]);
    let out = portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = rows(&stdout(&out));
    assert_eq!(
        table[0],
        [
            "NAMESPACE",
            "NAME",
            "SERVICE",
            "ADDRESSTYPE",
            "PORTS",
            "ENDPOINTS"
        ]
    );
    let of = |svc: &str| -> Vec<String> {
        table
            .iter()
            .find(|r| r[2] == svc)
            .unwrap_or_else(|| panic!("no slice for {svc}: {table:?}"))
            .clone()
    };
    let api = of("api-tester");
    assert!(api[1].starts_with("api-tester-"), "{api:?}");
    assert_eq!(api[3..5], ["IPv4", "http:8080/TCP"]);
    assert_eq!(
        api[5],
        "20.96.1.10(api-tester-7b9c5d6f8-k2x4q,RS),20.96.2.10(api-tester-7b9c5d6f8-p7m2z,RS)"
    );
    assert_eq!(of("db")[5], "20.96.1.20(db-0,RS),20.96.2.20(db-1,RS)");
    assert!(
        !table
            .iter()
            .any(|r| r[2] == "ext-github" || r[2] == "kubernetes"),
        "no selector, no slices"
    );
    assert_eq!(table.len(), 5, "header and four slices: {table:?}");
}

#[test]
fn yaml_output_has_endpoint_slices_owned_by_their_services() {
    let mut args = LAB.to_vec();
    args.extend(["-o", "yaml"]);
    let out = portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<serde_json::Value> = stdout(&out)
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d.trim_start_matches("---\n")).unwrap())
        .collect();
    let db_svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "db")
        .unwrap();
    let slice = docs
        .iter()
        .find(|d| {
            d["kind"] == "EndpointSlice"
                && d["metadata"]["labels"]["kubernetes.io/service-name"] == "db"
        })
        .unwrap();
    assert_eq!(slice["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(slice["metadata"]["generateName"], "db-");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice.portico.dev"
    );
    assert_eq!(
        slice["metadata"]["labels"]["service.kubernetes.io/headless"],
        ""
    );
    assert_eq!(
        slice["metadata"]["ownerReferences"][0]["uid"],
        db_svc["metadata"]["uid"]
    );
    assert_eq!(slice["endpoints"][0]["hostname"], "db-0");
    assert_eq!(slice["endpoints"][0]["zone"], "lab-a");
    assert_eq!(slice["endpoints"][1]["zone"], "lab-b");
    assert_eq!(
        db_svc["spec"]["ipFamilies"][0], "IPv4",
        "headless Services get their family"
    );
}

#[test]
fn pools_show_usage_and_conflicts_and_services_say_why_they_wait() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lb.yaml");
    std::fs::write(
        &file,
        "apiVersion: portico.dev/v1alpha1\nkind: IPPool\nmetadata: {name: tiny}\nspec: {addresses: [192.168.56.60/31]}\n---\n\
         apiVersion: portico.dev/v1alpha1\nkind: IPPool\nmetadata: {name: clash}\nspec: {addresses: [10.96.100.0/24]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let out = portico(&[
        "local",
        "-f",
        file.to_str().unwrap(),
        "--show",
        "services,ippools",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let table = rows(&text);
    let external = |name: &str| {
        table
            .iter()
            .find(|r| r.get(1).map(String::as_str) == Some(name))
            .unwrap()[4]
            .clone()
    };
    assert_eq!(external("a"), "192.168.56.60");
    assert_eq!(external("b"), "192.168.56.61");
    assert_eq!(external("c"), "<pending>");
    assert!(
        text.contains("tiny    192.168.56.60/31   2      0      True    0 addresses free"),
        "{text}"
    );
    assert!(
        text.contains("clash   10.96.100.0/24     0      256    False   its addresses 10.96.100.0/24 overlap the service range 10.96.0.0/12; no new assignments"),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: service default/c: PoolExhausted: no free IPv4 address left in pool tiny"
        ),
        "{err}"
    );
    assert!(err.contains("warning: ippool clash: PoolConflict"), "{err}");
}

/// Whether `dig` is there (in CI it must be).
fn have_dig() -> bool {
    portico_testkit::tools_or_skip("this test (make deps installs bind9-dnsutils)", &["dig"])
}

/// Starts `portico <args> --dns` on a free loopback port and returns once
/// it says it answers (its first answers are in place by then).
fn serve_dns(args: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .args([
            "--dns",
            "--dns-listen",
            &listen,
            "--upstream",
            "127.0.0.1:1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("serving DNS on") => break,
            Some(Ok(_)) => {}
            other => {
                let _ = child.kill();
                panic!("portico local --dns stopped before answering: {other:?}");
            }
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

fn dig_at(port: u16, opts: &[&str], name: &str, kind: &str) -> String {
    let out = Command::new("dig")
        .args(["+time=1", "+tries=1", "-p", &port.to_string(), "@127.0.0.1"])
        .args(opts)
        .args([name, kind])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn local_serves_cluster_dns_for_the_lab() {
    if !have_dig() {
        return;
    }
    let mut args = LAB.to_vec();
    args.extend(["--dns-service-ip", "10.96.0.10"]);
    let (mut child, port) = serve_dns(&args);
    let dig_with = |opts: &[&str], name: &str, kind: &str| dig_at(port, opts, name, kind);
    let dig = |name: &str, kind: &str| dig_with(&["+short"], name, kind);
    let api = dig("api-tester.default.svc.cluster.local", "A");
    let headless = dig("db.default.svc.cluster.local", "A");
    let srv = dig("_postgres._tcp.db.default.svc.cluster.local", "SRV");
    let cname = dig("ext-github.default.svc.cluster.local", "CNAME");
    // The apex NS with its glue, over UDP and TCP; the name server itself.
    let ns = ["+notcp", "+tcp"].map(|t| {
        dig_with(
            &[t, "+noall", "+answer", "+additional", "+nottlid"],
            "cluster.local",
            "NS",
        )
    });
    let ns_a = dig("ns.dns.cluster.local", "A");
    let ns_aaaa = dig_with(&["+noall", "+comments"], "ns.dns.cluster.local", "AAAA");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(in_service_range(&api), "{api}");
    assert_eq!(
        headless.lines().collect::<Vec<_>>(),
        ["20.96.1.20", "20.96.2.20"]
    );
    assert_eq!(
        srv.lines().collect::<Vec<_>>(),
        [
            "0 50 5432 db-0.db.default.svc.cluster.local.",
            "0 50 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(cname, "github.com.");
    for ns in ns {
        let lines: Vec<Vec<&str>> = ns.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines,
            [
                ["cluster.local.", "IN", "NS", "ns.dns.cluster.local."],
                ["ns.dns.cluster.local.", "IN", "A", "10.96.0.10"]
            ],
            "{ns}"
        );
    }
    assert_eq!(ns_a, "10.96.0.10");
    // No IPv6 address given: NODATA, not NXDOMAIN.
    assert!(ns_aaaa.contains("status: NOERROR"), "{ns_aaaa}");
    assert!(ns_aaaa.contains("ANSWER: 0"), "{ns_aaaa}");
}

#[test]
fn a_cluster_ip_range_gives_its_namespaces_their_block() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ranges.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {team: a}}\n---\n\
         apiVersion: portico.dev/v1alpha1\nkind: ClusterIPRange\nmetadata: {name: team-a}\n\
         spec: {cidr: 10.96.16.0/20, namespaceSelector: {matchLabels: {team: a}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: team-a}\nspec: {ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    let out = portico(&[
        "local",
        "-f",
        file.to_str().unwrap(),
        "--show",
        "services,clusteripranges",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let table = rows(&text);
    let block: ipnet::IpNet = "10.96.16.0/20".parse().unwrap();
    let api = table
        .iter()
        .find(|r| r.get(1).map(String::as_str) == Some("api"))
        .unwrap();
    assert!(block.contains(&api[3].parse::<IpAddr>().unwrap()), "{text}");
    let other = table
        .iter()
        .find(|r| r.get(1).map(String::as_str) == Some("other"))
        .unwrap();
    assert!(
        !block.contains(&other[3].parse::<IpAddr>().unwrap()),
        "{text}"
    );
    assert!(
        text.contains(
            "team-a   10.96.16.0/20   team=a       1      4095   True    4095 addresses free"
        ),
        "{text}"
    );
}

const REFUSED: &str = "\
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.20, selector: {app: a}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {clusterIP: 10.96.0.20, selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {clusterIP: 172.16.0.5, ports: [{port: 80}]}
";

/// A Service refused the address it asked for (held by another, or in no
/// range) holds it nowhere: not in the output, not in DNS, not after a
/// restart from that output.
#[test]
fn a_refused_cluster_ip_is_shown_answered_and_kept_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.yaml");
    std::fs::write(&path, REFUSED).unwrap();
    let file = path.to_str().unwrap();
    let net = ["--service-cluster-ip-range", "10.96.0.0/12"];
    let o = portico(&[&["local", "-f", file, "-o", "yaml"][..], &net].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml = stdout(&o);
    assert_eq!(
        yaml.matches("- \"10.96.0.20\"").count()
            + yaml.matches("clusterIP: \"10.96.0.20\"").count(),
        2,
        "only a shows 10.96.0.20 (clusterIP and clusterIPs):\n{yaml}"
    );
    assert!(!yaml.contains("clusterIP: \"172.16.0.5\""), "{yaml}");

    // A restart from the output: the same holder, the same refusals.
    let restart = dir.path().join("restart.yaml");
    std::fs::write(&restart, &yaml).unwrap();
    let o = portico(&[&["local", "-f", restart.to_str().unwrap()][..], &net].concat());
    let table = rows(&stdout(&o));
    let ip_of = |name: &str| {
        table
            .iter()
            .find(|r| r[1] == name)
            .map(|r| r[3].clone())
            .unwrap()
    };
    assert_eq!(ip_of("a"), "10.96.0.20");
    assert_eq!(ip_of("b"), "<none>");
    assert_eq!(ip_of("c"), "<none>");
    let warnings = stderr(&o);
    assert!(warnings.contains("DuplicateClusterIP"), "{warnings}");
    assert!(warnings.contains("ClusterIPOutOfRange"), "{warnings}");

    if !have_dig() {
        return;
    }
    let (mut child, port) = serve_dns(&[&["local", "-f", file][..], &net].concat());
    let dig = |name: &str| dig_at(port, &["+short"], name, "A");
    let (a, b, c) = (
        dig("a.default.svc.cluster.local"),
        dig("b.default.svc.cluster.local"),
        dig("c.default.svc.cluster.local"),
    );
    let ptr = dig_at(port, &["+short"], "20.0.96.10.in-addr.arpa", "PTR");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(a, "10.96.0.20");
    assert_eq!(b, "", "b holds no address");
    assert_eq!(c, "", "c holds no address");
    assert_eq!(ptr, "a.default.svc.cluster.local.");
}
