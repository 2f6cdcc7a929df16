#!/usr/bin/env bash
# Fails when a generated file differs from what is committed: the CRD YAML in
# crds/ must be exactly what `portico crds` generates now.
set -euo pipefail
bin=${1:-target/debug/portico}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" crds --out-dir "$tmp"
status=0
committed=$(cd crds && ls -1 ./*.yaml 2>/dev/null | sort || true)
generated=$(cd "$tmp" && ls -1 ./*.yaml 2>/dev/null | sort || true)
if [ "$committed" != "$generated" ]; then
  echo "crds/: the set of CRD files differs from 'portico crds' (run 'make crds'):"
  diff <(echo "$committed") <(echo "$generated") || true
  status=1
fi
for f in "$tmp"/*.yaml; do
  [ -e "$f" ] || continue
  name=$(basename "$f")
  if ! diff -u "crds/$name" "$f"; then
    echo "crds/$name is stale (run 'make crds')"
    status=1
  fi
done
[ $status -eq 0 ] && echo "generated files are up to date ($(echo -n "$generated" | grep -c . || true) CRDs)"
exit $status
