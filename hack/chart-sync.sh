#!/usr/bin/env bash
# Copies the CodingJob and CodingJobClass CRDs (crds/codingjob*.yaml, generated from the
# operator's models) into the
# chart's crds/ directory, so the chart installs exactly the CRD the operator was built for.
# tests/unit/chart checks that the two files are identical.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for name in codingjob codingjobclass; do
  src=crds/$name.yaml
  dst=charts/codingjob-operator/crds/$name.yaml
  [ -f "$src" ] || { echo "chart-sync: $src does not exist (generate it first)" >&2; exit 1; }
  if cmp -s "$src" "$dst"; then
    echo "chart-sync: $dst is up to date"
  else
    cp "$src" "$dst"
    echo "chart-sync: copied $src to $dst"
  fi
done
