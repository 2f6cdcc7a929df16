#!/usr/bin/env python3
"""Scale benchmark of the whole `portico local` pipeline (what `make bench` runs).

usage: bench-local.py PORTICO_BIN [SIZES...]

For each size N (default 5000 and 50000) it writes a manifest of N Services,
each selecting one ready pod on node `node-a`, and runs

  portico local -f MANIFEST -o yaml          (load, reconcile, print)
  portico local -f MANIFEST --dataplane ...  (the same, then a full nft sync,
                                              in a network namespace of its own;
                                              root only)

reporting wall time and peak resident memory of each run, and the ratio of
the largest size to the smallest (near-linear cost means a ratio close to
the ratio of the sizes).
"""

import os
import subprocess
import sys
import tempfile
import time


def manifest(n: int) -> str:
    docs = [
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n"
        "status: {conditions: [{type: Ready, status: 'True'}], "
        "addresses: [{type: InternalIP, address: 192.168.56.31}]}\n"
    ]
    for i in range(n):
        ip = f"20.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\n"
            f"spec: {{selector: {{app: app-{i}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        )
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, labels: {{app: app-{i}}}}}\n"
            f"spec: {{nodeName: node-a, containers: [{{name: c, image: x}}]}}\n"
            f"status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
        )
    return "---\n".join(docs)


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own
    rusage, from wait4)."""
    start = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    took = time.monotonic() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, cmd)
    return took, usage.ru_maxrss / 1024


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    binary = os.path.abspath(sys.argv[1])
    sizes = sorted(int(s) for s in sys.argv[2:]) or [5000, 50000]
    net = ["--service-cluster-ip-range", "10.96.0.0/12", "--cluster-cidr", "20.96.0.0/12"]
    root = os.geteuid() == 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = os.path.join(tmp, f"s{n}.yaml")
            with open(path, "w") as f:
                f.write(manifest(n))
            t, rss = run([binary, "local", "-f", path, "-o", "yaml", *net])
            results[(n, "yaml")] = t
            print(f"local -o yaml      {n:>6} Services: {t:6.2f} s, peak RSS {rss:6.0f} MiB", flush=True)
            if root:
                ns = f"portico-bench-{os.getpid()}"
                subprocess.run(["ip", "netns", "add", ns], check=True)
                try:
                    t, rss = run(
                        ["ip", "netns", "exec", ns, binary, "local", "-f", path, *net,
                         "--dataplane", "--node-name", "node-a"]
                    )
                finally:
                    subprocess.run(["ip", "netns", "del", ns], check=False)
                results[(n, "dataplane")] = t
                print(f"local --dataplane  {n:>6} Services: {t:6.2f} s, peak RSS {rss:6.0f} MiB", flush=True)
    lo, hi = sizes[0], sizes[-1]
    if lo != hi:
        for kind in ("yaml", "dataplane"):
            if (lo, kind) in results:
                ratio = results[(hi, kind)] / results[(lo, kind)]
                print(f"{kind}: {hi} / {lo} Services cost {ratio:.1f}x (sizes {hi / lo:.0f}x)")
    if not root:
        print("(--dataplane runs skipped: they need root)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
