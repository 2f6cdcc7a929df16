#!/usr/bin/env python3
"""Validates rendered chart manifests offline.

usage: check-chart.py KUBE_VERSION CRD_DIR RENDERED.yaml [--expect-defaults] [--portico=BIN]

- every Kubernetes object against the JSON schemas of KUBE_VERSION
  (kubernetes-validate, strict: unknown fields are errors);
- Portico's own objects (IPPool, ...) against the openAPIV3Schema of the
  CRDs in CRD_DIR;
- the chart's promises: least privilege for the node agent (no host path
  but /proc/sys/net, for --conntrack-tcp-be-liberal), probes on every
  component, the webhook's safety settings, the DNS server told its own
  Service's address, and (with --expect-defaults) the defaults the
  documentation states;
- with --portico=BIN, that the portico binary accepts every container's
  arguments and environment (the command line is parsed up to `--help`).

Exits 1 on the first kind of failure, after printing every failure found.
"""

import glob
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

# Kinds from other projects' CRDs: no schema ships offline.
FOREIGN = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def crd_schemas(crd_dir):
    schemas = {}
    for path in sorted(glob.glob(f"{crd_dir}/*.yaml")):
        with open(path) as f:
            crd = yaml.safe_load(f)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def validate_all(objects, kube_version, schemas):
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in schemas:
            try:
                jsonschema.Draft7Validator(schemas[key]).validate(obj)
            except jsonschema.ValidationError as e:
                fail(f"{name_of(obj)} does not match its CRD: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        if key in FOREIGN:
            print(f"note {name_of(obj)}: {key[0]} has no offline schema; checked for shape only")
            if "spec" not in obj:
                fail(f"{name_of(obj)} has no spec")
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name_of(obj)} against Kubernetes {kube_version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{name_of(obj)}: no schema for {key} in Kubernetes {kube_version}")


def containers(obj):
    return obj["spec"]["template"]["spec"]["containers"]


def check_promises(objects, expect_defaults):
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    for workload in by_kind.get("Deployment", []) + by_kind.get("DaemonSet", []):
        for c in containers(workload):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    fail(f"{name_of(workload)}: container {c['name']} has no {probe}")
            if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                fail(f"{name_of(workload)}: container {c['name']} may escalate privileges")

    for ds in by_kind.get("DaemonSet", []):
        spec = ds["spec"]["template"]["spec"]
        if not spec.get("hostNetwork"):
            fail(f"{name_of(ds)}: the node agent must use the host network")
        caps = containers(ds)[0]["securityContext"]["capabilities"]
        if caps.get("drop") != ["ALL"] or sorted(caps.get("add", [])) != ["NET_ADMIN", "NET_RAW"]:
            fail(f"{name_of(ds)}: capabilities must be exactly NET_ADMIN and NET_RAW, got {caps}")
        if containers(ds)[0]["securityContext"].get("privileged"):
            fail(f"{name_of(ds)}: must not be privileged")
        # The one host path: the node's network sysctls, for
        # --conntrack-tcp-be-liberal, mounted where --proc-sys-net says.
        args = containers(ds)[0]["args"]
        host_paths = {v["name"]: v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
        if set(host_paths.values()) - {"/proc/sys/net"}:
            fail(f"{name_of(ds)}: the only host path may be /proc/sys/net, got {host_paths}")
        mounts = {m["name"]: m["mountPath"] for m in containers(ds)[0].get("volumeMounts", [])}
        for name in host_paths:
            if f"--proc-sys-net={mounts.get(name)}" not in args:
                fail(f"{name_of(ds)}: /proc/sys/net is mounted at {mounts.get(name)}, but the args say {args}")
        if ("--conntrack-tcp-be-liberal" in args) != bool(host_paths):
            fail(f"{name_of(ds)}: --conntrack-tcp-be-liberal needs the host's /proc/sys/net, and only it")
        if expect_defaults:
            if spec.get("priorityClassName") != "system-node-critical":
                fail(f"{name_of(ds)}: priorityClassName must be system-node-critical")
            if {"operator": "Exists"} not in spec.get("tolerations", []):
                fail(f"{name_of(ds)}: must tolerate every taint")
            if "--conntrack-tcp-be-liberal" not in args:
                fail(f"{name_of(ds)}: nf_conntrack_tcp_be_liberal must be on by default, as in upstream CI")

    for dep in by_kind.get("Deployment", []):
        component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in containers(dep):
            sc = c["securityContext"]
            if not sc.get("runAsNonRoot") or sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"{name_of(dep)}: {component} must run as non-root without capabilities")
        if expect_defaults and dep["spec"]["replicas"] != 2:
            fail(f"{name_of(dep)}: default replicas must be 2")
        if component == "controller" and expect_defaults:
            args = containers(dep)[0]["args"]
            if "--leader-elect=true" not in args:
                fail(f"{name_of(dep)}: leader election must be on with 2 replicas")

    for hook in by_kind.get("MutatingWebhookConfiguration", []):
        for w in hook["webhooks"]:
            if w.get("sideEffects") != "None":
                fail(f"{name_of(hook)}: sideEffects must be None")
            if expect_defaults and w.get("failurePolicy") != "Ignore":
                fail(f"{name_of(hook)}: the default failurePolicy must be Ignore")
            if w.get("timeoutSeconds", 10) > 10:
                fail(f"{name_of(hook)}: the timeout must be short")
            cc = w["clientConfig"]
            if "caBundle" not in cc and "cert-manager.io/inject-ca-from" not in hook["metadata"].get("annotations", {}):
                fail(f"{name_of(hook)}: no caBundle and no cert-manager injection")

    # The DNS server answers ns.dns.<zone> with its own Service's address.
    dns_ips = {s["spec"]["clusterIP"] for s in by_kind.get("Service", []) if s["metadata"]["labels"].get("app.kubernetes.io/component") == "dns" and s["spec"].get("clusterIP") not in (None, "None")}
    for dep in by_kind.get("Deployment", []):
        if dep["metadata"]["labels"]["app.kubernetes.io/component"] != "dns":
            continue
        given = {a.split("=", 1)[1] for a in containers(dep)[0]["args"] if a.startswith("--dns-service-ip=")}
        if given != dns_ips:
            fail(f"{name_of(dep)}: --dns-service-ip {sorted(given)} is not the DNS Service's clusterIP {sorted(dns_ips)}")

    if expect_defaults:
        dns = [s for s in by_kind.get("Service", []) if s["metadata"]["labels"].get("app.kubernetes.io/component") == "dns" and s["spec"].get("clusterIP") != "None"]
        if len(dns) != 1 or dns[0]["spec"].get("clusterIP") != "10.96.0.10":
            fail("the DNS Service must default to ClusterIP 10.96.0.10")
        if not by_kind.get("PodDisruptionBudget"):
            fail("the DNS Deployment needs a PodDisruptionBudget")

    # Least privilege: exactly the verbs each component calls (the table of
    # docs/install.md), no wildcard anywhere, no secrets read by anyone.
    for role in by_kind.get("ClusterRole", []) + by_kind.get("Role", []):
        component = role["metadata"]["labels"].get("app.kubernetes.io/component")
        allowed = CALLS.get((component, role["kind"]))
        if allowed is None:
            fail(f"{name_of(role)}: no table of the calls of component {component}")
            continue
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    extra = set(rule.get("verbs", [])) - allowed.get((group, resource), set())
                    if extra:
                        fail(f"{name_of(role)}: {group or 'core'}/{resource}: {sorted(extra)} granted but never called")
    for role in by_kind.get("ClusterRole", []) + by_kind.get("Role", []):
        for rule in role.get("rules", []):
            if "*" in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []):
                fail(f"{name_of(role)}: wildcard in {rule}")
            if "secrets" in rule.get("resources", []):
                fail(f"{name_of(role)}: must not read Secrets")


# What each component calls, by (API group, resource): the verbs its
# ClusterRole or Role may grant, and no more.
WATCH = {"list", "watch"}
CALLS = {
    ("controller", "ClusterRole"): {
        ("", "services"): WATCH,
        ("", "pods"): WATCH,
        ("", "nodes"): WATCH,
        ("", "namespaces"): WATCH,
        ("", "services/status"): {"patch"},
        ("discovery.k8s.io", "endpointslices"): WATCH | {"create", "update", "delete"},
        ("networking.k8s.io", "ipaddresses"): WATCH,
        ("portico.dev", "ippools"): WATCH,
        ("portico.dev", "clusteripranges"): WATCH,
        ("portico.dev", "ippools/status"): {"patch"},
        ("portico.dev", "clusteripranges/status"): {"patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    },
    ("controller", "Role"): {
        ("coordination.k8s.io", "leases"): {"get", "create", "patch"},
        ("", "pods"): {"patch"},
    },
    ("node", "ClusterRole"): {
        ("", "services"): WATCH | {"patch"},
        ("discovery.k8s.io", "endpointslices"): WATCH,
        ("", "nodes"): WATCH,
        ("portico.dev", "l2announcements"): WATCH,
        ("portico.dev", "ippools"): WATCH,
        ("portico.dev", "l2announcements/status"): {"patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    },
    ("dns", "ClusterRole"): {
        ("", "services"): WATCH,
        ("", "namespaces"): WATCH,
        ("discovery.k8s.io", "endpointslices"): WATCH,
        ("", "pods"): WATCH,
    },
}


def check_command_lines(objects, portico):
    for obj in objects:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in containers(obj):
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            argv = [portico] + c["args"] + ["--help"]
            run = subprocess.run(argv, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                fail(f"{name_of(obj)}: portico refuses {c['args']}: {run.stderr.strip()}")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        sys.exit(__doc__)
    kube_version, crd_dir, rendered = args
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    if not objects:
        sys.exit(f"{rendered}: nothing rendered")
    validate_all(objects, kube_version, crd_schemas(crd_dir))
    check_promises(objects, "--expect-defaults" in sys.argv)
    for a in sys.argv[1:]:
        if a.startswith("--portico="):
            check_command_lines(objects, a.split("=", 1)[1])
    if failures:
        print(f"{rendered}: {len(failures)} failure(s)")
        sys.exit(1)
    print(f"{rendered}: {len(objects)} objects valid for Kubernetes {kube_version}")


if __name__ == "__main__":
    main()
