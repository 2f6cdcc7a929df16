//! The binary's dataplane commands: `portico local --dataplane` programs
//! the lab's rules for one node in a network namespace of its own, `portico
//! node --dump` prints them and `--cleanup` removes them. Root tests run
//! for real when they can and must when `PORTICO_REQUIRE_ROOT_TESTS=1`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

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
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let required = std::env::var("PORTICO_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
        let name = format!(
            "ptb{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = portico_dataplane::can_program_nftables()
            && Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("nft").arg("--version").output().is_ok();
        if ok {
            return Some(Netns(name));
        }
        let why = "needs root, `ip` and `nft`";
        assert!(
            !required,
            "PORTICO_REQUIRE_ROOT_TESTS=1 but this test {why}"
        );
        eprintln!("skipping: this test {why}");
        None
    }

    /// Runs portico in the namespace.
    /// Runs portico in the namespace; a run that does not end within a
    /// minute is killed (exit status 124), so a hang fails the test.
    fn portico(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([
                "60",
                "ip",
                "netns",
                "exec",
                &self.0,
                env!("CARGO_BIN_EXE_portico"),
            ])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn local_dataplane_programs_the_node_and_node_dump_and_cleanup_follow() {
    let Some(ns) = Netns::new() else { return };
    let mut args = LAB.to_vec();
    args.extend(["--dataplane", "--node-name", "k8s-worker1"]);
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
    args.extend(["--dataplane", "--node-name", "k8s-worker1", "--watch"]);
    let mut child = Command::new("timeout")
        .args([
            "60",
            "ip",
            "netns",
            "exec",
            &ns.0,
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
