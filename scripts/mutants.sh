#!/usr/bin/env bash
# The project's mutation check: plants each one-line bug listed in tests/mutants.txt, rebuilds,
# runs the tests the list names for it, and reports which bugs the tests catch.
#
#   scripts/mutants.sh [options] [ID...]      (no ID: every mutant of the list)
#     --full          run the whole ctest for a mutant its own tests let survive
#     --from-head     mutate HEAD's files, not the working tree's (when others' unfinished
#                     work in the tree does not build)
#     --with PATH     with --from-head: this file of the working tree instead of HEAD's
#                     (repeatable: a change of your own, tested before it is committed)
#     --check         only say whether each mutant still applies (no build, no test)
#     --no-baseline   skip the run of every selected test on the unmutated build (it also
#                     writes the PyTorch reference outputs that the mutant runs then reuse)
#     --list FILE     another list (default tests/mutants.txt)
#     -j N            build and ctest jobs (default 2)
#
# The working tree is never touched. The tracked files (and untracked ones git does not ignore)
# are copied into build-mutants/src (only files that changed since the last run are rewritten,
# so later runs rebuild incrementally), mutated there one at a time, built in
# build-mutants/build and restored after each mutant. Results: the table printed at the end,
# also in build-mutants/report.txt; each mutant's test log in build-mutants/logs/.
#
# A mutant is killed when a selected test fails (or times out); it survives when they all
# pass; one whose text is not found exactly once is reported as "no longer applies"; one that
# fails to build is reported as such (the list should hold bugs that compile). Mutants the
# list marks `equivalent:` are checked to apply but not run. Exit status 0 only when every
# mutant run was killed and every one applied.
set -euo pipefail
{  # bash reads a script as it runs: the braces make it read all of this one before it starts,
   # so an edit or a checkout of this file during a run does not change the run.

root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
list=$root/tests/mutants.txt
full=0 from_head=0 check_only=0 baseline=1 jobs=2
ids=() overlay=()
while [ $# -gt 0 ]; do
  case $1 in
    --full) full=1 ;;
    --from-head) from_head=1 ;;
    --with) overlay+=("$2"); shift ;;
    --check) check_only=1 ;;
    --no-baseline) baseline=0 ;;
    --list) list=$(realpath "$2"); shift ;;
    -j) jobs=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "mutants.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ids+=("$1") ;;
  esac
  shift
done

scratch=$root/build-mutants
src=$scratch/src
build=$scratch/build
stage_head() {  # folder: HEAD's files, with the --with files of the working tree over them
  git -C "$root" archive HEAD | tar -x -C "$1"
  local path
  for path in "${overlay[@]}"; do
    mkdir -p "$1/$(dirname "$path")"
    cp "$root/$path" "$1/$path"
  done
}
temporary=()
mutated_file=""
restore() {  # puts the mutated file back as it was copied
  if [ -n "$mutated_file" ]; then
    cp "$scratch/original" "$src/$mutated_file"
    mutated_file=""
  fi
}
cleanup() {
  restore
  [ ${#temporary[@]} -eq 0 ] || rm -rf "${temporary[@]}"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
if [ $check_only = 1 ]; then
  # Reads the files where they are (HEAD's in a temporary folder): no lock, no copy.
  src=$root
  if [ $from_head = 1 ]; then
    src=$(mktemp -d)
    temporary+=("$src")
    stage_head "$src"
  fi
else
  # One run at a time per scratch folder: a second would mutate the files under the first.
  mkdir -p "$scratch/logs"
  exec 9> "$scratch/lock"
  flock -n 9 || { echo "mutants.sh: another run holds $scratch/lock" >&2; exit 2; }
fi

# --- The list: blocks of "key: value" lines, a blank line between mutants -------------------
# Fields: id, file, from (the exact text, found exactly once), to, tests (ctest -R regex),
# why, and optionally equivalent (why no test can see it; then it is not run).
parsed=$(mktemp)
temporary+=("$parsed")
python3 - "$list" > "$parsed" << 'EOF'
import sys
keys = ("id", "file", "from", "to", "tests", "why", "equivalent")
blocks, block = [], {}
for number, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    line = line.rstrip("\n")
    if line.startswith("#"):
        continue
    if not line.strip():
        if block: blocks.append(block)
        block = {}
        continue
    key, sep, value = line.partition(": ")
    if not sep or key not in keys:
        sys.exit(f"{sys.argv[1]}:{number}: expected one of {', '.join(keys)} then ': '")
    if key in block:
        sys.exit(f"{sys.argv[1]}:{number}: '{key}' given twice in one mutant")
    block[key] = value
if block: blocks.append(block)
seen = set()
for b in blocks:
    missing = [k for k in ("id", "file", "from", "to", "why") if k not in b]
    if "tests" not in b and "equivalent" not in b: missing.append("tests or equivalent")
    if missing: sys.exit(f"mutant {b.get('id', '?')}: missing {', '.join(missing)}")
    if b["id"] in seen: sys.exit(f"mutant {b['id']}: id used twice")
    if any("\x1f" in v for v in b.values()): sys.exit(f"mutant {b['id']}: control character")
    seen.add(b["id"])
    print("\x1f".join(b.get(k, "") for k in keys))  # a separator no field holds
EOF

if [ ${#overlay[@]} -gt 0 ] && [ $from_head = 0 ]; then
  echo "mutants.sh: --with needs --from-head" >&2
  exit 2
fi
if [ ${#ids[@]} -gt 0 ]; then
  for id in "${ids[@]}"; do
    cut -d $'\x1f' -f1 "$parsed" | grep -qxF -- "$id" || { echo "mutants.sh: no mutant '$id' in $list" >&2; exit 2; }
  done
fi
selected() {  # is mutant $1 among those asked for?
  [ ${#ids[@]} -eq 0 ] && return 0
  local id
  for id in "${ids[@]}"; do [ "$id" = "$1" ] && return 0; done
  return 1
}

# --- Copy the sources into the scratch folder ------------------------------------------------
# Only files whose bytes differ are rewritten (a new mtime: ninja rebuilds what depends on
# them); files gone from the tree are removed.
sync_sources() {
  local from=$root staged=""
  if [ $from_head = 1 ]; then
    staged=$scratch/head
    rm -rf "$staged" && mkdir -p "$staged"
    stage_head "$staged"
    from=$staged
  fi
  python3 - "$root" "$from" "$src" "$from_head" << 'EOF'
import filecmp, os, shutil, subprocess, sys
root, origin, dest, from_head = sys.argv[1:]
if from_head == "1":  # every file staged from HEAD
    files = [os.path.relpath(os.path.join(folder, n), origin).encode()
             for folder, _, names in os.walk(origin) for n in names]
else:
    files = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout.split(b"\0")
wanted = set()
for name in (f.decode() for f in files if f):
    source = os.path.join(origin, name)
    if not os.path.isfile(source):  # deleted in the working tree
        continue
    wanted.add(name)
    target = os.path.join(dest, name)
    if os.path.isfile(target) and filecmp.cmp(source, target, shallow=False):
        continue
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copymode(source, target)
for folder, _, names in os.walk(dest):
    for n in names:
        path = os.path.join(folder, n)
        if os.path.relpath(path, dest) not in wanted:
            os.remove(path)
EOF
  [ -z "$staged" ] || rm -rf "$staged"
}

# --- Planting one mutant ---------------------------------------------------------------------
# Prints how often `from` occurs in the file (0 when the file is missing); with "apply",
# replaces it when it occurs exactly once.
occurrences() {  # file from to [apply]
  python3 - "$@" << 'EOF'
import sys
path, old, new = sys.argv[1:4]
try:
    text = open(path, encoding="utf-8").read()
except FileNotFoundError:
    print(0); sys.exit()
count = text.count(old)
print(count)
if count == 1 and len(sys.argv) > 4:
    open(path, "w", encoding="utf-8").write(text.replace(old, new))
EOF
}

# The build targets a test regex needs: the executables its ctest commands run.
targets_for() {  # regex
  (cd "$build" && ctest --show-only=json-v1 -R "$1") | python3 -c '
import json, os, sys
build = sys.argv[1]
names = set()
for test in json.load(sys.stdin).get("tests", []):
    for arg in test.get("command", []):
        if arg.startswith(build + "/") and os.access(arg, os.X_OK) and os.path.isfile(arg):
            names.add(os.path.basename(arg))
print(" ".join(sorted(names)))' "$build"
}

# Runs ctest; prints the names of the tests that failed. Status 0: all passed.
run_tests() {  # log regex [extra ctest args...]
  local log=$1 regex=$2
  shift 2
  local args=(--output-on-failure --no-tests=error -j "$jobs" --timeout 600 "$@")
  [ -n "$regex" ] && args+=(-R "$regex")
  if (cd "$build" && nice -n 10 ctest "${args[@]}") > "$log" 2>&1; then return 0; fi
  sed -n '/The following tests FAILED:/,$p' "$log" | grep -E '^\s+[0-9]+ - ' |
    sed -E 's/^\s+[0-9]+ - //; s/  # GetParam\(\) = [^(]*/ /' | tr '\n' ';' | sed 's/;$//'
  return 1
}

test_numbers() {  # regex: the numbers of the ctest tests it selects, one a line
  (cd "$build" && ctest -N -R "$1") | sed -nE 's/^ *Test +#([0-9]+):.*/\1/p'
}

build_targets() {  # log [targets...]
  local log=$1
  shift
  local args=()
  [ $# -gt 0 ] && args=(--target "$@")
  nice -n 10 cmake --build "$build" -j "$jobs" "${args[@]}" > "$log" 2>&1
}

# --- Applicability of every selected mutant --------------------------------------------------
[ $check_only = 1 ] || sync_sources
report=$scratch/report.txt
[ $check_only = 1 ] && report=/dev/null
: > "$report"
line() { printf '%-42s %-22s %s\n' "$1" "$2" "$3" | tee -a "$report"; }
declare -a run_ids=() run_files=() run_from=() run_to=() run_tests_of=()
not_applying=0 equivalent=0
while IFS=$'\x1f' read -r id file from to tests why equiv; do
  selected "$id" || continue
  count=$(occurrences "$src/$file" "$from" "$to")
  if [ "$count" != 1 ]; then
    line "$id" "NO LONGER APPLIES" "'$from' found $count times in $file"
    not_applying=$((not_applying + 1))
  elif [ -n "$equiv" ]; then
    line "$id" "equivalent (not run)" "$equiv"
    equivalent=$((equivalent + 1))
  else
    run_ids+=("$id") run_files+=("$file") run_from+=("$from") run_to+=("$to")
    run_tests_of+=("$tests")
  fi
done < "$parsed"
if [ $check_only = 1 ]; then
  echo "${#run_ids[@]} to run, $equivalent equivalent, $not_applying no longer apply"
  [ $not_applying = 0 ]
  exit
fi

# --- Build, baseline, mutants ----------------------------------------------------------------
start=$(date +%s)
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_BENCH=OFF \
    > "$scratch/logs/configure.log" 2>&1 || { echo "configure failed: $scratch/logs/configure.log"; exit 1; }
fi
echo "building the unmutated tree in $build (in full the first time, then what changed)"
build_targets "$scratch/logs/build-unmutated.log" ||
  { echo "the unmutated tree does not build: $scratch/logs/build-unmutated.log"; exit 1; }

# A regex that selects nothing would make every mutant look killed (ctest fails) or survive.
# The baseline runs the union by test number: one regex of them all could pass the
# parentheses CMake's regexes allow.
union=""
for i in "${!run_ids[@]}"; do
  numbers=$(test_numbers "${run_tests_of[$i]}")
  if [ -z "$numbers" ]; then
    echo "mutant ${run_ids[$i]}: no test matches '${run_tests_of[$i]}'" >&2
    exit 2
  fi
  union+="$numbers"$'\n'
done
union=$(echo "$union" | sort -nu | { grep . || true; } | tr '\n' ',' | sed 's/,$//')
fixtures=()
if [ $baseline = 1 ] && [ ${#run_ids[@]} -gt 0 ]; then
  echo "baseline: the selected tests on the unmutated build"
  if ! failed=$(run_tests "$scratch/logs/baseline.log" "" -I "0,0,0,$union"); then
    echo "baseline fails (a mutant's kill would mean nothing): ${failed:-ctest failed};" \
      "see $scratch/logs/baseline.log"
    exit 1
  fi
  fixtures=(-FA '.*')  # the reference outputs are written: mutants need not rerun the scripts
fi

killed=0 survived=0 broken=0
for i in "${!run_ids[@]}"; do
  id=${run_ids[$i]} file=${run_files[$i]} tests=${run_tests_of[$i]}
  t0=$(date +%s)
  cp "$src/$file" "$scratch/original"
  mutated_file=$file
  occurrences "$src/$file" "${run_from[$i]}" "${run_to[$i]}" apply > /dev/null
  # shellcheck disable=SC2046  # one word per target
  if ! build_targets "$scratch/logs/$id.build.log" $(targets_for "$tests"); then
    restore
    line "$id" "DOES NOT BUILD" "see logs/$id.build.log"
    broken=$((broken + 1))
    continue
  fi
  if failed=$(run_tests "$scratch/logs/$id.log" "$tests" "${fixtures[@]}" --stop-on-failure); then
    status="SURVIVED" detail="its tests: $tests"
    if [ $full = 1 ]; then
      build_targets "$scratch/logs/$id.build.log"
      # Every test, their fixtures' setup included (the baseline wrote only its tests' ones).
      if failed=$(run_tests "$scratch/logs/$id.full.log" ""); then
        detail="the whole suite passes"
      else
        status="killed by --full" detail="only by: $failed (widen its tests)"
      fi
    fi
  elif [ -n "$failed" ]; then
    status="killed" detail="$failed"
  else
    status="CTEST ERROR" detail="no test failed, yet ctest did: see logs/$id.log"
  fi
  restore
  case $status in
    killed*) killed=$((killed + 1)) ;;
    SURVIVED) survived=$((survived + 1)) ;;
    *) broken=$((broken + 1)) ;;
  esac
  line "$id" "$status ($(($(date +%s) - t0))s)" "$detail"
done
summary="$killed of ${#run_ids[@]} run killed, $survived survived, $broken did not build or run; \
$equivalent equivalent; $not_applying no longer apply; $(($(date +%s) - start)) s \
on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'))"
echo "$summary" | tee -a "$report"
[ $survived = 0 ] && [ $broken = 0 ] && [ $not_applying = 0 ]
exit
}
