//! `portico explain` as a user runs it: on the lab's manifests, each
//! output, and a clear error with a non-zero exit for an unknown target.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn explain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("explain")
        .args(args)
        .args(["-f", "examples/lab.yaml", "--cluster-cidr", "20.96.0.0/12"])
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_lab_load_balancer_is_explained_as_json_text_and_svg() {
    let o = explain(&[
        "default/api-tester-lb",
        "--node",
        "k8s-worker1",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["service"]["loadBalancerIPs"][0], "192.168.56.60");
    assert_eq!(v["destination"], "192.168.56.60:80/tcp");
    assert_eq!(v["verdict"]["action"], "dnat");
    assert_eq!(
        v["verdict"]["endpoints"],
        serde_json::json!(["20.96.1.10:8080", "20.96.2.10:8080"])
    );
    assert_eq!(v["problems"], serde_json::json!([]));
    // Nothing but the answer on stdout, no log lines on stderr.
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = explain(&[
        "api-tester.default",
        "--from",
        "default/api-tester-7b9c5d6f8-k2x4q",
    ]);
    let text = stdout(&o);
    assert!(o.status.success());
    assert!(text.contains("Node:             k8s-worker1"), "{text}");
    assert!(
        text.contains("Verdict:          dnat → 20.96.1.10:8080, 20.96.2.10:8080"),
        "{text}"
    );

    let o = explain(&["192.168.56.60:80/tcp", "-o", "svg"]);
    assert!(o.status.success());
    let svg = stdout(&o);
    assert!(svg.starts_with("<?xml") && svg.contains("<svg "), "{svg}");
    assert!(svg.contains("default/api-tester-lb"));
}

#[test]
fn an_unknown_target_is_an_error_naming_it() {
    for (target, says) in [
        ("default/nope", "error: no Service default/nope"),
        ("10.1.2.3:99", "error: no Service holds 10.1.2.3:99"),
        ("nope", "error: \"nope\" is not a target"),
    ] {
        let o = explain(&[target]);
        assert_eq!(o.status.code(), Some(1), "{target}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(says), "{target}: {stderr}");
        assert!(o.stdout.is_empty());
    }
}
