#!/usr/bin/env bash
# Mutation testing of the pure modules (make mutation; not part of CI). mutmut 3 works in a scratch
# copy of the working tree (the checkout is never touched): it copies the sources into mutants/
# with every function behind a trampoline, runs the unit tests once to learn which tests reach
# which function, then runs only those tests against each mutant. It prints, per module, the
# share of mutants the tests kill. MUTATION_MODULES="names conditions" limits the run; the
# results and the surviving mutants' diffs are saved under artifacts/mutation/ (git-ignored).
# MUTATION_WORKDIR=dir keeps the scratch copy. Run again with the same dir after adding tests:
# mutmut mutates only the functions that changed, and the mutants not killed are tried again
# against the new tests (a killed mutant of an unchanged function stays killed).
#
# mutmut 3 mutates code inside functions and methods only (module constants and class bodies are
# not mutated) and maps the packages by their import names, so the scratch copy holds them in a
# src/ layout: operator/codingjob_operator -> src/codingjob_operator, and the agent's the same.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py="$repo/.venv/bin/python"
mutmut="$repo/.venv/bin/mutmut"
version=3.8.1
"$py" -m pip show mutmut 2>/dev/null | grep -qx "Version: $version" \
  || "$py" -m pip install -q "mutmut==$version"

declare -A source=(
  [names]=codingjob_operator/names.py
  [conditions]=codingjob_operator/conditions.py
  [status]=codingjob_operator/status.py
  [builders]=codingjob_operator/builders.py
  [classes]=codingjob_operator/classes.py
  [ziparchive]=codingjob_operator/ziparchive.py
  [pruning]=codingjob_agent/context/pruning.py
  [tokens]=codingjob_agent/context/tokens.py
)
modules=${MUTATION_MODULES:-names conditions status builders classes ziparchive pruning tokens}

# The unit tests of these modules. mutmut runs, for each mutant, only those of them that call the
# mutated function. Left out: the archive tests that write gigabytes, a million entries or
# 60 000 (behind the trampolines that one took 164 s, and it would run for every surviving
# mutant of the writer); smaller tests cover the same code paths.
tests=(
  tests/unit/operator/test_operator_names.py
  tests/unit/operator/test_operator_status.py
  tests/unit/operator/test_operator_status_forgery.py
  tests/unit/operator/test_operator_builders.py
  tests/unit/operator/test_operator_classes.py
  tests/unit/operator/test_security_properties.py
  tests/unit/operator/test_reconciler_paths.py
  tests/unit/archive/test_ziparchive.py
  tests/unit/archive/test_ziparchive_trees.py
  tests/unit/archive/test_ziparchive_layout.py
  tests/unit/archive/test_ziparchive_faults.py
  tests/unit/context/test_context_pruning.py
  tests/unit/context/test_context_pruning_search.py
  tests/unit/context/test_context_tokens.py
  tests/unit/context/test_context_token_overheads.py
)
deselect=(
  tests/unit/archive/test_ziparchive.py::test_files_beyond_4_gib_use_zip64
  tests/unit/archive/test_ziparchive.py::test_more_than_65535_entries_use_a_zip64_directory
  tests/unit/archive/test_ziparchive.py::test_entries_written_at_once_are_streamed_in_small_chunks
)

toml_list() { printf '"%s", ' "$@" | sed 's/, $//'; }
selection=("${tests[@]}")
for t in "${deselect[@]}"; do selection+=(--deselect "$t"); done

out="$repo/artifacts/mutation"
mkdir -p "$out"
run_mutmut() {
  # No bytecode files appear next to the mutated sources.
  PYTHONDONTWRITEBYTECODE=1 nice -n 19 "$mutmut" run --max-children "${MUTATION_JOBS:-2}" "$@"
}
not_killed() { grep -vE ': (killed|timeout|segfault)$' | sed 's/^ *//; s/: .*//'; }
if [ -n "${MUTATION_WORKDIR:-}" ] && [ -d "$MUTATION_WORKDIR/mutants" ]; then
  # Again: the current sources and tests replace those of the copy. mutmut mutates the functions
  # that changed (their mutants start untested); then every mutant not killed is tried again.
  work=$MUTATION_WORKDIR
  rm -rf "$work/tests" "$work/mutants/tests"
  git ls-files -co --exclude-standard -z tests | xargs -0 cp --parents -t "$work"
  cp -r operator/codingjob_operator/. "$work/src/codingjob_operator/"
  cp -r agent-image/codingjob_agent/. "$work/src/codingjob_agent/"
  cd "$work"
  # The test selection is this script's as it is now: a test file added to the list takes part.
  sed -i "s|^pytest_add_cli_args_test_selection = .*|pytest_add_cli_args_test_selection = [$(
    toml_list "${selection[@]}")]|" pyproject.toml
  # mutmut maps only new tests to the functions they reach; a test that was changed keeps its old
  # map, so the whole map is made again.
  rm -f mutants/mutmut-stats.json
  start=$(date +%s)
  if [ -f sample.txt ]; then
    # First the mutants of the functions that changed are made again (untested), so that a
    # sampled one killed before is on the list below.
    run_mutmut 'generate-only' >"$out/rerun.log" 2>&1 || true
    mapfile -t retry < <("$mutmut" results --all true | grep -F -f <(sed 's/$/:/' sample.txt) \
      | not_killed)
  else
    run_mutmut >"$out/rerun.log" 2>&1 || { tail -n 40 "$out/rerun.log" >&2; exit 1; }
    mapfile -t retry < <("$mutmut" results | not_killed)
  fi
  if [ "${#retry[@]}" -gt 0 ]; then
    run_mutmut "${retry[@]}" >>"$out/rerun.log" 2>&1 || { tail -n 40 "$out/rerun.log" >&2; exit 1; }
  fi
  echo "mutmut run again: $(($(date +%s) - start)) s (${#retry[@]} mutants tried again)" \
    | tee -a "$out/runtime.txt"
else
  if [ -n "${MUTATION_WORKDIR:-}" ]; then
    work=$MUTATION_WORKDIR
    mkdir -p "$work"
  else
    work=$(mktemp -d -t codingjob-mutation.XXXXXX)
    trap 'rm -rf "$work"' EXIT
  fi
  git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work" 2>/dev/null || true
  mkdir -p "$work/src"
  mv "$work/operator/codingjob_operator" "$work/agent-image/codingjob_agent" "$work/src/"
  cd "$work"

  only=()
  for m in $modules; do only+=("src/${source[$m]}"); done
  # Everything else the tests read (samples, chart, golden files) comes along into mutants/.
  mapfile -t extra < <(find . -mindepth 1 -maxdepth 1 ! -name src ! -name tests ! -name .git \
    ! -name pyproject.toml -printf '%P\n' | sort)
  cat >>pyproject.toml <<EOF

[tool.mutmut]
source_paths = ["src/"]
only_mutate = [$(toml_list "${only[@]}")]
also_copy = [$(toml_list "${extra[@]}")]
pytest_add_cli_args_test_selection = [$(toml_list "${selection[@]}")]
pytest_add_cli_args = ["-p", "no:cacheprovider"]
EOF

  start=$(date +%s)
  if [ -n "${MUTATION_SAMPLE:-}" ]; then
    # MUTATION_SAMPLE=N: N mutants per module, drawn with a fixed seed (a full run of all eight
    # modules takes hours on two loaded cores). A name that matches no mutant makes mutmut
    # generate the mutants and map the tests, then stop; the draw is made from that list.
    run_mutmut 'generate-only' >"$out/run.log" 2>&1 || true
    "$mutmut" results --all true >all.txt
    [ -s all.txt ] || { tail -n 40 "$out/run.log" >&2; exit 1; }
    for m in $modules; do
      prefix=$(echo "${source[$m]%.py}" | tr / .)
      grep -F "    $prefix.x" all.txt | sed 's/^ *//; s/: .*//' \
        | shuf -n "$MUTATION_SAMPLE" --random-source=<(yes) || true
    done >sample.txt
    cp sample.txt "$out/sample.txt"
    mapfile -t sample <sample.txt
    run_mutmut "${sample[@]}" >>"$out/run.log" 2>&1 || { tail -n 40 "$out/run.log" >&2; exit 1; }
  else
    run_mutmut >"$out/run.log" 2>&1 || { tail -n 40 "$out/run.log" >&2; exit 1; }
  fi
  echo "mutmut run: $(($(date +%s) - start)) s for: $modules" | tee "$out/runtime.txt"
fi

"$mutmut" results --all true >"$out/results.txt"
printf '%-12s %7s %7s %8s %8s %7s\n' module mutants killed survived no-tests score \
  | tee "$out/scores.txt"
for m in $modules; do
  prefix=$(echo "${source[$m]%.py}" | tr / .)
  lines=$(grep -F "    $prefix.x" "$out/results.txt" || true)
  if [ -f sample.txt ]; then
    lines=$(grep -F -f <(sed 's/$/:/' sample.txt) <<<"$lines" || true)
  fi
  count() { grep -c ": $1\$" <<<"$lines" || true; }
  # A timeout or a crash of the test process is a kill: the tests noticed the change.
  killed=$(( $(count killed) + $(count timeout) + $(count segfault) ))
  survived=$(( $(count survived) + $(count suspicious) ))
  notests=$(count "no tests")
  total=$(( $(grep -c . <<<"$lines" || true) ))
  score=$(awk -v k="$killed" -v t="$total" 'BEGIN { if (t) printf "%.1f%%", 100 * k / t; else printf "-" }')
  printf '%-12s %7d %7d %8d %8d %7s\n' "$m" "$total" "$killed" "$survived" "$notests" "$score" \
    | tee -a "$out/scores.txt"
  for name in $(grep -E ': (survived|suspicious|no tests)$' <<<"$lines" | sed 's/^ *//; s/: .*//'); do
    "$mutmut" show "$name"
  done >"$out/$m-survivors.diff" 2>&1 || true
done
