#!/usr/bin/env bash
# Mutation testing of the pure modules (make mutation; not part of CI): mutmut changes one module
# at a time in a scratch copy of the working tree (the checkout is never touched), runs the unit
# tests that cover it against each mutant, and prints the share of mutants the tests kill.
# MUTATION_MODULES="names conditions" limits the run; survivors are saved under artifacts/mutation/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py="$repo/.venv/bin/python"
mutmut="$repo/.venv/bin/mutmut"
[ -x "$mutmut" ] || "$py" -m pip install -q 'mutmut==2.5.1'

# module -> the unit tests that cover it. mutmut counts only exit code 1 as a kill, so the runner
# maps every failure (a mutant that breaks the import is a collection error, exit code 2) to 1.
declare -A source=(
  [names]=operator/codingjob_operator/names.py
  [conditions]=operator/codingjob_operator/conditions.py
  [status]=operator/codingjob_operator/status.py
  [builders]=operator/codingjob_operator/builders.py
  [ziparchive]=operator/codingjob_operator/ziparchive.py
  [pruning]=agent-image/codingjob_agent/context/pruning.py
  [tokens]=agent-image/codingjob_agent/context/tokens.py
)
declare -A tests=(
  [names]="tests/unit/operator/test_operator_names.py tests/unit/operator/test_reconciler_paths.py"
  [conditions]="tests/unit/operator/test_operator_status.py tests/unit/operator/test_reconciler_paths.py"
  [status]="tests/unit/operator/test_operator_status.py tests/unit/operator/test_reconciler_paths.py"
  [builders]="tests/unit/operator/test_operator_builders.py tests/unit/operator/test_security_properties.py tests/unit/operator/test_reconciler_paths.py"
  [ziparchive]="tests/unit/archive/test_ziparchive.py tests/unit/archive/test_ziparchive_trees.py"
  [pruning]="tests/unit/context/test_context_pruning.py tests/unit/context/test_context_pruning_search.py"
  [tokens]="tests/unit/context/test_context_tokens.py"
)
modules=${MUTATION_MODULES:-names conditions pruning tokens status builders ziparchive}

work=$(mktemp -d -t codingjob-mutation.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work" 2>/dev/null || true
out="$repo/artifacts/mutation"
mkdir -p "$out"
cd "$work"
# The scratch copy's packages come before the checkout's editable installs.
export PYTHONPATH="$work/operator:$work/agent-image:$work"
# No bytecode files appear in the tests directory while mutmut watches its hash.
export PYTHONDONTWRITEBYTECODE=1

printf '%-12s %7s %7s %7s %7s\n' module mutants killed survived score
for m in $modules; do
  rm -f .mutmut-cache
  nice -n 10 "$mutmut" run --paths-to-mutate "${source[$m]}" --tests-dir tests/unit \
    --runner "bash -c '$py -m pytest -x -q -p no:cacheprovider ${tests[$m]} || exit 1'" \
    --no-progress --simple-output >"$out/$m.log" 2>&1 || true
  count() { "$mutmut" result-ids "$1" 2>/dev/null | wc -w; }
  # "suspicious" mutants were killed, only slowly; a timeout counts as killed too.
  killed=$(( $(count killed) + $(count suspicious) + $(count timeout) ))
  survived=$(count survived)
  total=$(( killed + survived ))
  score=$(awk -v k="$killed" -v t="$total" 'BEGIN { if (t) printf "%.1f%%", 100 * k / t; else printf "-" }')
  printf '%-12s %7d %7d %7d %7s\n' "$m" "$total" "$killed" "$survived" "$score" | tee -a "$out/scores.txt"
  for id in $("$mutmut" result-ids survived 2>/dev/null); do
    "$mutmut" show "$id"
  done >"$out/$m-survivors.diff" 2>&1 || true
done
