#!/usr/bin/env bash
# Fails when a generated file differs from what is committed: the CRD YAML in
# crds/ and charts/portico/crds/ must be exactly what `portico crds`
# generates now.
set -euo pipefail
bin=${1:-target/debug/portico}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" crds --out-dir "$tmp"
generated=$(cd "$tmp" && ls -1 ./*.yaml 2>/dev/null | sort || true)
status=0
for dir in crds charts/portico/crds; do
  committed=$( (cd "$dir" 2>/dev/null && ls -1 ./*.yaml 2>/dev/null) | sort || true)
  if [ "$committed" != "$generated" ]; then
    echo "$dir/: the set of CRD files differs from 'portico crds' (run 'make crds'):"
    diff <(echo "$committed") <(echo "$generated") || true
    status=1
  fi
  for f in "$tmp"/*.yaml; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    if ! diff -u "$dir/$name" "$f" >/dev/null 2>&1; then
      diff -u "$dir/$name" "$f" || true
      echo "$dir/$name is stale (run 'make crds')"
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "generated files are up to date ($(echo "$generated" | grep -c . || true) CRDs in crds/ and charts/portico/crds/)"
exit $status
