//! The binary's dataplane commands: `portico local --dataplane` programs
//! the lab's rules for one node in a network namespace of its own, `portico
//! node --dump` prints them and `--cleanup` removes them. Root tests run
//! for real when they can and must when `PORTICO_REQUIRE_ROOT_TESTS=1`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

const LAB: &[&str] = &[
    "local",
    "-f",
    "examples/lab.yaml",
    "--service-cluster-ip-range",
    "10.96.0.0/12",
    "--cluster-cidr",
    "20.96.0.0/12",
];

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace for one test, deleted on drop.
struct Netns(portico_testkit::Netns);

impl Netns {
    fn new() -> Option<Netns> {
        portico_testkit::ready_or_skip("this test", &["ip", "nft"])
            .then(|| Netns(portico_testkit::Netns::new("ptb", "")))
    }

    /// Runs portico in the namespace; a run that does not end within a
    /// minute is killed (exit status 124), so a hang fails the test.
    fn portico(&self, args: &[&str]) -> Output {
        self.portico_with(&[], args)
    }

    /// The same, with more environment variables.
    fn portico_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new("timeout")
            .args([
                "60",
                "ip",
                "netns",
                "exec",
                self.0.name(),
                env!("CARGO_BIN_EXE_portico"),
            ])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    }

    /// `net.netfilter.nf_conntrack_tcp_be_liberal` in the namespace.
    fn tcp_be_liberal(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.0.name(), "cat"])
            .arg("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    }
}

#[test]
fn local_dataplane_programs_the_node_and_node_dump_and_cleanup_follow() {
    for backend in ["nft", "netlink"] {
        programs_the_node_through(backend);
    }
}

/// `local --dataplane` through `backend`; `node --dump` (nft) sees it.
fn programs_the_node_through(backend: &str) {
    let Some(ns) = Netns::new() else { return };
    let mut args = LAB.to_vec();
    args.extend([
        "--dataplane",
        "--node-name",
        "k8s-worker1",
        "--dataplane-backend",
        backend,
    ]);
    let out = ns.portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dataplane: full sync"),
        "{}",
        stderr(&out)
    );

    let dump = ns.portico(&["node", "--dump"]);
    assert!(dump.status.success(), "{}", stderr(&dump));
    let rules = stdout(&dump);
    assert!(rules.contains("table ip portico"), "{rules}");
    // The NodePort answers on the worker's address from the manifests; the
    // LoadBalancer address and both api-tester pods are there.
    assert!(rules.contains("192.168.56.31"), "{rules}");
    assert!(rules.contains("192.168.56.60 . tcp . 80"), "{rules}");
    assert!(
        rules.contains("tcp . 31231 : goto nodeport-pick-masq-2"),
        "{rules}"
    );
    assert!(
        rules.contains("20.96.1.10 . 20.96.1.10"),
        "the local pod may hairpin: {rules}"
    );
    assert!(!rules.contains("20.96.2.10 . 20.96.2.10"), "{rules}");

    let clean = ns.portico(&["node", "--cleanup"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    let dump = ns.portico(&["node", "--dump"]);
    assert_eq!(stdout(&dump), "");
}

#[test]
fn local_dataplane_without_root_says_so_and_changes_nothing() {
    if !portico_dataplane::can_program_nftables() {
        let mut args = LAB.to_vec();
        args.extend(["--dataplane", "--node-name", "k8s-worker1"]);
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
        return;
    }
    // As root: drop to nobody with setpriv, when it exists.
    let Ok(out) = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_portico"))
        .args(LAB)
        .args(["--dataplane", "--node-name", "k8s-worker1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    else {
        eprintln!("skipping: setpriv is not installed");
        return;
    };
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
}

#[test]
fn dataplane_needs_a_node_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(LAB)
        .arg("--dataplane")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--node-name"), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["node"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--node-name"), "{}", stderr(&out));
}

#[test]
fn node_and_local_dataplane_set_tcp_be_liberal_in_their_namespace_when_asked() {
    let Some(asked) = Netns::new() else { return };
    let host =
        || std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").unwrap();
    let host_before = host();
    let mut args = LAB.to_vec();
    args.extend(["--dataplane", "--node-name", "k8s-worker1"]);

    let not_asked = Netns::new().unwrap();
    let out = not_asked.portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(not_asked.tcp_be_liberal(), "0", "left as it is");

    args.push("--conntrack-tcp-be-liberal");
    assert_eq!(asked.tcp_be_liberal(), "0");
    let out = asked.portico(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(asked.tcp_be_liberal(), "1");
    assert!(
        stderr(&out).contains("nf_conntrack_tcp_be_liberal"),
        "what was set is logged: {}",
        stderr(&out)
    );

    // `portico node` sets it before it connects to the cluster (there is
    // none here, so it stops there).
    let node = Netns::new().unwrap();
    let out = node.portico_with(
        &[
            ("KUBECONFIG", "/nonexistent"),
            ("PORTICO_CONNTRACK_TCP_BE_LIBERAL", "true"),
        ],
        &["node", "--node-name", "k8s-worker1"],
    );
    assert!(!out.status.success());
    assert_eq!(node.tcp_be_liberal(), "1", "{}", stderr(&out));

    assert_eq!(host(), host_before, "other namespaces keep theirs");
}

#[test]
fn a_tcp_be_liberal_that_cannot_be_set_stops_the_start_and_says_why() {
    let Some(ns) = Netns::new() else { return };
    for args in [
        &["node", "--node-name", "k8s-worker1"][..],
        &[LAB, &["--dataplane", "--node-name", "k8s-worker1"]].concat(),
    ] {
        let args = [
            args,
            &["--conntrack-tcp-be-liberal", "--proc-sys-net=/nonexistent"],
        ]
        .concat();
        let out = ns.portico_with(&[("KUBECONFIG", "/nonexistent")], &args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("--conntrack-tcp-be-liberal"), "{err}");
        assert!(
            err.contains("/nonexistent/netfilter/nf_conntrack_tcp_be_liberal"),
            "{err}"
        );
        assert!(err.contains("nf_conntrack module"), "{err}");
    }
    let dump = ns.portico(&["node", "--dump"]);
    assert_eq!(stdout(&dump), "", "nothing was programmed");
}

const HEALTH_CHECKS: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {conditions: [{type: Ready, status: 'True'}], addresses: [{type: InternalIP, address: 192.168.56.31}]}
---
apiVersion: v1
kind: Service
metadata: {name: ready}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32001
  selector: {app: ready}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: draining}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32002
  selector: {app: draining}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Pod
metadata: {name: ready-1, labels: {app: ready}}
spec: {nodeName: node-a, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 20.96.1.10, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: draining-1, labels: {app: draining}, deletionTimestamp: '2026-01-01T00:00:00Z'}
spec: {nodeName: node-a, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 20.96.1.11, conditions: [{type: Ready, status: 'True'}]}
";

/// `portico local --dataplane` serves the `healthCheckNodePort`s as `portico
/// node` does. Upstream's "should fail health check node port if there are
/// only terminating endpoints": a node whose only local endpoint is
/// terminating answers 503, one with a ready endpoint 200.
#[test]
fn local_dataplane_health_check_node_ports_fail_with_only_terminating_endpoints() {
    use std::io::BufRead as _;
    let Some(ns) = Netns::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hc.yaml");
    std::fs::write(&file, HEALTH_CHECKS).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.0.name(), env!("CARGO_BIN_EXE_portico")])
        .args(["local", "-f", file.to_str().unwrap()])
        .args(["--service-cluster-ip-range", "10.96.0.0/12"])
        .args(["--cluster-cidr", "20.96.0.0/12"])
        .args(["--dataplane", "--node-name", "node-a"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("serving healthCheckNodePorts") => break line,
            Some(Ok(_)) => {}
            other => {
                let _ = child.kill();
                panic!("portico local --dataplane stopped before serving: {other:?}");
            }
        }
    };
    assert!(
        serving.contains("32001") && serving.contains("32002"),
        "{serving}"
    );
    let get = |port: u16| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.0.name(), "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = get(32001);
    let draining = get(32002);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert!(ready.contains("\"localEndpoints\":1"), "{ready}");
    assert!(draining.starts_with("HTTP/1.0 503"), "{draining}");
    assert!(draining.contains("\"localEndpoints\":0"), "{draining}");
}

#[test]
fn local_watch_retries_a_failed_sync_as_a_full_one_and_keeps_running() {
    let Some(ns) = Netns::new() else { return };
    // An nft without its interactive mode (so every transaction runs in
    // `nft -f -`) that refuses the first one.
    let dir = tempfile::tempdir().unwrap();
    let nft = dir.path().join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = \"-i\" ] && exit 1\n\
             if [ \"$1\" = \"-f\" ] && [ ! -e {0}/failed ]; then\n\
             touch {0}/failed; echo 'Error: injected' >&2; exit 1\n\
             fi\n\
             exec {1} \"$@\"\n",
            dir.path().display(),
            String::from_utf8(
                Command::new("sh")
                    .args(["-c", "command -v nft"])
                    .output()
                    .unwrap()
                    .stdout
            )
            .unwrap()
            .trim()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&nft).status().unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut args = LAB.to_vec();
    // The failure is injected through the nft program.
    args.extend([
        "--dataplane",
        "--node-name",
        "k8s-worker1",
        "--watch",
        "--dataplane-backend",
        "nft",
    ]);
    let mut child = Command::new("timeout")
        .args([
            "60",
            "ip",
            "netns",
            "exec",
            ns.0.name(),
            env!("CARGO_BIN_EXE_portico"),
        ])
        .args(&args)
        .env("PATH", path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("dataplane: full sync");
        seen.push(line);
        if done {
            break;
        }
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let failed = seen
        .iter()
        .position(|l| l.starts_with("dataplane: sync failed (1 in a row)"));
    assert!(
        failed.is_some()
            && seen
                .last()
                .is_some_and(|l| l.starts_with("dataplane: full sync")),
        "{seen:#?}"
    );
    assert!(running, "the watch goes on: {seen:#?}");
}
