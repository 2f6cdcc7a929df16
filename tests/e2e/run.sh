#!/usr/bin/env bash
# make e2e: creates a kind cluster without kube-proxy, builds and loads
# Portico's images, replaces CoreDNS, installs the chart with an IPPool on
# kind's Docker network, and runs the end-to-end tests (tests/e2e.rs).
#
# PORTICO_E2E_CLUSTER  cluster name (default portico-e2e)
# PORTICO_E2E_KEEP=1   keep the cluster afterwards (default: delete it)
# PORTICO_E2E_REUSE=1  use an existing cluster of that name
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${PORTICO_E2E_CLUSTER:-portico-e2e}
TAG=e2e

need() {
  command -v "$1" >/dev/null && return
  echo "make e2e needs $1, which is not installed: $2" >&2
  exit 1
}
need docker "install Docker (https://docs.docker.com/engine/install/)"
need kind "install kind v0.27 or later (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/)"
docker info >/dev/null 2>&1 || { echo "make e2e needs a running Docker daemon (docker info fails)" >&2; exit 1; }

. scripts/tools.sh
fetch_helms
HELM=$HELM4

if [ "${PORTICO_E2E_REUSE:-}" = 1 ] && kind get clusters | grep -qx "$CLUSTER"; then
  echo "reusing kind cluster $CLUSTER"
else
  kind create cluster --name "$CLUSTER" --config tests/e2e/kind.yaml --wait 0s
fi
if [ "${PORTICO_E2E_KEEP:-}" != 1 ]; then
  trap 'kind delete cluster --name "$CLUSTER"' EXIT
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

make image IMAGE=portico NODE_IMAGE=portico-node TAG=$TAG
kind load docker-image --name "$CLUSTER" portico:$TAG portico-node:$TAG
for img in busybox:1.36; do
  docker image inspect "$img" >/dev/null 2>&1 || docker pull "$img"
  kind load docker-image --name "$CLUSTER" "$img"
done

# Portico's DNS takes over CoreDNS's Service name and address.
kubectl -n kube-system delete deployment coredns --ignore-not-found
kubectl -n kube-system delete service kube-dns --ignore-not-found

# LoadBalancer addresses from the top of kind's Docker network, as for
# MetalLB on kind: 172.18.0.0/16 gives 172.18.255.200-172.18.255.250.
subnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -v : | grep . | head -1)
prefix=$(echo "$subnet" | cut -d. -f1-2)
LB_RANGE="$prefix.255.200-$prefix.255.250"
echo "kind network $subnet: IPPool e2e = $LB_RANGE"

values=$(mktemp)
cat >"$values" <<VALUES
image: {repository: portico, tag: $TAG, pullPolicy: Never}
nodeImage: {repository: portico-node, tag: $TAG, pullPolicy: Never}
kubernetesServiceHost: $CLUSTER-control-plane
kubernetesServicePort: "6443"
serviceClusterIPRange: 10.96.0.0/12
clusterCIDR: 20.96.0.0/12
dns:
  service: {name: kube-dns, clusterIP: 10.96.0.10}
ipPools:
  - name: e2e
    spec:
      addresses: ["$LB_RANGE"]
l2Announcements:
  - name: e2e
    spec:
      ipPools: [e2e]
VALUES
"$HELM" upgrade --install portico charts/portico --namespace kube-system \
  -f "$values" --wait --timeout 10m
rm -f "$values"
kubectl -n kube-system get pods -l app.kubernetes.io/name=portico -o wide
"$HELM" test portico --namespace kube-system --logs

PORTICO_E2E_LB_RANGE=$LB_RANGE \
  cargo test --test e2e -- --ignored --test-threads=1
