#!/usr/bin/env bash
# Builds mechlab on a lent GPU machine, runs its tests (CUDA tests must not
# skip), compute-sanitizer's memcheck (and racecheck) over the kernel tests,
# every `mechlab bench` subcommand and the kernel benchmark table, and writes
# the results to $OUT (or gpu-results/):
#   gpu-results.md   summary: machine, commit, per-step status, test counts,
#                    each benchmark's tables verbatim, nvidia-smi
#   build.log ctest.log memcheck.log racecheck.log bench-<name>.log   full logs
# Run from anywhere on the GPU machine, with .gpu-bundle carried (see
# docs/GPU.md):   bash scripts/gpu/run.sh [--skip-build] [--only-tests|--only-bench]
# A failing step is recorded and the next one still runs; the exit status is
# non-zero if any step failed. Steps are cut to fit MECHLAB_GPU_BUDGET_S
# seconds in all (default 560: one device call may run 600 s).
#
# Environment (all optional):
#   OUT                    results folder (default: gpu-results in the repository root)
#   MECHLAB_GPU_BUILD      build folder (default: build-gpu)
#   MECHLAB_GPU_BUNDLE     bundle folder (default: .gpu-bundle)
#   MECHLAB_GPU_BUDGET_S   seconds for the whole run (default 560)
#   MECHLAB_CUDA_ARCHS     CUDA architectures (default 90)
#   MECHLAB_CTEST_JOBS     parallel CTest jobs (default 8)
#   MECHLAB_COMMIT         commit to record when the copy has no .git
#   MECHLAB_TORCH_CUDA_ARCH_LIST  TORCH_CUDA_ARCH_LIST for Torch's CMake config
#                          (default: from MECHLAB_CUDA_ARCHS, 90 -> 9.0)
#   MECHLAB_CMAKE_ARGS     extra arguments for the CMake configure step
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; }
SKIP_BUILD=0 DO_TESTS=1 DO_BENCH=1
for a in "$@"; do
  case "$a" in
    --skip-build) SKIP_BUILD=1 ;;
    --only-tests) DO_TESTS=1 DO_BENCH=0 ;;
    --only-bench) DO_TESTS=0 DO_BENCH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$a'" >&2; usage >&2; exit 2 ;;
  esac
done

START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUTDIR=${OUT:-gpu-results}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
BUILD=${MECHLAB_GPU_BUILD:-build-gpu}
BUNDLE=${MECHLAB_GPU_BUNDLE:-$ROOT/.gpu-bundle}
BUDGET=${MECHLAB_GPU_BUDGET_S:-560}
ARCHS=${MECHLAB_CUDA_ARCHS:-90}
CTEST_JOBS=${MECHLAB_CTEST_JOBS:-8}
REPORT="$OUTDIR/gpu-results.md"
PARTS=$(mktemp -d /tmp/mechlab-gpu-run.XXXXXX)
trap 'rm -rf "$PARTS"' EXIT
rm -f "$OUTDIR"/build.log "$OUTDIR"/ctest.log "$OUTDIR"/memcheck.log "$OUTDIR"/racecheck.log \
  "$OUTDIR"/bench-*.log

say() { printf '[gpu-run %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
elapsed() { echo $(($(date +%s) - START)); }
remaining() { echo $((BUDGET - $(elapsed))); }
# step_timeout WANT: WANT seconds, or what is left of the budget less a reserve
# for writing the report, whichever is less.
step_timeout() {
  local left=$(($(remaining) - 15))
  [ "$left" -ge 1 ] || left=1
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# ---------------------------------------------------------------- step records
STEP_NAMES=() STEP_STATUS=() STEP_SECS=() STEP_LOGS=() STEP_NOTES=()
FAILED=0
record() {  # record NAME STATUS SECONDS LOG NOTE
  STEP_NAMES+=("$1") STEP_STATUS+=("$2") STEP_SECS+=("$3") STEP_LOGS+=("$4") STEP_NOTES+=("$5")
  case "$2" in ok|skipped) ;; *) FAILED=1 ;; esac
  say "$1: $2${5:+ ($5)}"
  write_report
}
# run_logged LOG SECONDS CMD...: appends the command and its output to LOG.
run_logged() {
  local log=$1 t=$2 rc=0
  shift 2
  printf '$ %s\n' "$*" >>"$log"
  timeout -k 15 "$t" "$@" >>"$log" 2>&1 || rc=$?
  printf '[exit %s after %s s budget]\n' "$rc" "$t" >>"$log"
  return "$rc"
}
status_of() {  # status_of RC: ok / FAILED (exit N) / TIMED OUT
  case "$1" in
    0) echo ok ;;
    124|137) echo "TIMED OUT" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}
cap_log() {  # keep a log under the 16 MiB a returned file may have
  local f=$1 max=$((15 * 1024 * 1024))
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt "$max" ]; then
    { echo "[log cut to its last 15 MiB]"; tail -c "$max" "$f"; } >"$f.cut" && mv "$f.cut" "$f"
  fi
}

# ---------------------------------------------------------------- machine facts
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
# Torch's CMake config replaces CMAKE_CUDA_ARCHITECTURES with -gencode flags of
# its own, from TORCH_CUDA_ARCH_LIST or else a default list that starts at
# compute_50, which CUDA 13's nvcc rejects. The GPU image presets its own value
# (seen: 9.0a); derive it from ARCHS instead (90 -> 9.0) so that the GPU build
# matches the development machine's, unless MECHLAB_TORCH_CUDA_ARCH_LIST is set.
IMAGE_TORCH_ARCHS=${TORCH_CUDA_ARCH_LIST:-unset}
if [ -n "${MECHLAB_TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST="$MECHLAB_TORCH_CUDA_ARCH_LIST"
else
  tal=""
  for x in ${ARCHS//[;,]/ }; do
    num=${x%%[!0-9]*} suf=${x#"${x%%[!0-9]*}"}
    [ "${#num}" -ge 2 ] && tal+="${tal:+;}${num:0:${#num}-1}.${num: -1}$suf"
  done
  export TORCH_CUDA_ARCH_LIST="$tal"
fi
first_line() { "$@" 2>/dev/null | head -n1 || true; }
DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 || true)
GPU=${GPU:-unknown (nvidia-smi failed)}
COMMIT=${MECHLAB_COMMIT:-}
if [ -z "$COMMIT" ] && command -v git >/dev/null; then
  COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
  if [ -n "$COMMIT" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null | head -n1)" ]; then
    COMMIT="$COMMIT (with uncommitted changes)"
  fi
fi
COMMIT=${COMMIT:-unknown}
OS=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}" || true)
TORCH_INFO=$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda + ", GPU seen:", torch.cuda.is_available())' 2>/dev/null || echo "python/torch not usable ($PY)")
NVCC=$(nvcc --version 2>/dev/null | grep -i release | head -n1 || true)
CMAKE_V=$(first_line cmake --version)
CXX_V=$(first_line "${CXX:-c++}" --version)
SANITIZER=$(command -v compute-sanitizer || true)
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")"; do
  [ -z "$SANITIZER" ] && [ -x "$d/compute-sanitizer" ] && SANITIZER="$d/compute-sanitizer"
done
nvidia-smi >"$PARTS/smi.txt" 2>&1 || true
{ nvidia-smi -q 2>&1 || true; } | head -n 60 >"$PARTS/smi-q.txt"

# ---------------------------------------------------------------- report
TESTS_LINE="not run"
write_report() {
  local tmp="$REPORT.tmp" i
  {
    echo "# mechlab GPU results"
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| date | $DATE |"
    echo "| GPU | $GPU |"
    echo "| commit | $COMMIT |"
    echo "| OS | ${OS:-unknown} ($(nproc) CPUs) |"
    echo "| torch | $TORCH_INFO |"
    echo "| nvcc | ${NVCC:-not found} |"
    echo "| cmake | ${CMAKE_V:-not found} |"
    echo "| compiler | ${CXX_V:-not found} |"
    echo "| options | build=$BUILD archs=$ARCHS TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} (was ${IMAGE_TORCH_ARCHS:-?}) skip-build=$SKIP_BUILD tests=$DO_TESTS bench=$DO_BENCH budget=${BUDGET}s |"
    echo "| run time | $(elapsed) s |"
    echo
    echo "## Summary"
    echo
    echo "Tests: $TESTS_LINE"
    echo
    echo "| step | status | seconds | log | note |"
    echo "| --- | --- | --- | --- | --- |"
    for i in "${!STEP_NAMES[@]}"; do
      echo "| ${STEP_NAMES[$i]} | ${STEP_STATUS[$i]} | ${STEP_SECS[$i]} | ${STEP_LOGS[$i]} | ${STEP_NOTES[$i]} |"
    done
    echo
    if [ "$FAILED" = 1 ]; then echo "Result: **FAILED**"; else echo "Result: ok"; fi
    [ -f "$PARTS/failed-tests.md" ] && { echo; cat "$PARTS/failed-tests.md"; }
    [ -f "$PARTS/build-errors.md" ] && { echo; cat "$PARTS/build-errors.md"; }
    [ -f "$PARTS/memcheck.md" ] && { echo; cat "$PARTS/memcheck.md"; }
    echo
    echo "## Benchmarks"
    echo
    if ls "$PARTS"/bench-*.md >/dev/null 2>&1; then
      cat "$PARTS"/bench-*.md
    else
      echo "(none run)"
    fi
    echo
    echo "## nvidia-smi"
    echo
    echo '```'
    cat "$PARTS/smi.txt"
    echo '```'
    echo
    echo "## nvidia-smi -q (first 60 lines)"
    echo
    echo '```'
    cat "$PARTS/smi-q.txt"
    echo '```'
  } >"$tmp"
  mv "$tmp" "$REPORT"
}
write_report
say "results go to $OUTDIR"

# ---------------------------------------------------------------- build
BUILD_OK=0
build_step() {
  local log="$OUTDIR/build.log" t0 rc=0 t
  : >"$log"
  t0=$(date +%s)
  if [ ! -f "$BUNDLE/env.sh" ]; then
    echo "no bundle at $BUNDLE: run scripts/gpu/bundle.sh on the development machine and carry .gpu-bundle" >>"$log"
    record build "FAILED (no bundle)" 0 build.log "no $BUNDLE/env.sh"
    return
  fi
  local torch_prefix
  if ! torch_prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>>"$log"); then
    record build "FAILED (no torch)" 0 build.log "$PY cannot import torch"
    return
  fi
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  local args=(-S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release
    "-DMECHLAB_CUDA_ARCHS=$ARCHS" -DMECHLAB_WITH_CUDA=ON
    "-DCMAKE_PREFIX_PATH=$torch_prefix;$MECHLAB_GPU_BUNDLE_PREFIX"
    "-DTorch_DIR=$torch_prefix/Torch" -C "$MECHLAB_GPU_BUNDLE_CACHE")
  if [ -n "${MECHLAB_CMAKE_ARGS:-}" ]; then
    # shellcheck disable=SC2206
    args+=(${MECHLAB_CMAKE_ARGS})
  fi
  t=$(step_timeout 600)
  run_logged "$log" "$t" cmake "${args[@]}" || rc=$?
  if [ "$rc" = 0 ]; then
    t=$(step_timeout 600)
    run_logged "$log" "$t" cmake --build "$BUILD" -j "$(nproc)" || rc=$?
  fi
  cap_log "$log"
  if [ "$rc" = 0 ]; then
    BUILD_OK=1
    record build ok $(($(date +%s) - t0)) build.log ""
  else
    { echo "### Build errors (first 40 lines matching 'error')"; echo; echo '```';
      grep -n -E '[Ee]rror|fatal|^FAILED:|undefined reference' "$log" | head -n 40 || true; echo '```'; } >"$PARTS/build-errors.md"
    local note="see build.log"
    case "$rc" in 124|137) note="out of time: run again to resume (Ninja keeps what was built)" ;; esac
    record build "$(status_of "$rc")" $(($(date +%s) - t0)) build.log "$note"
  fi
}

if [ -f "$BUNDLE/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$BUNDLE/env.sh"
fi
if [ "$SKIP_BUILD" = 1 ]; then
  if [ -f "$BUILD/CMakeCache.txt" ] && [ -x "$BUILD/mechlab" ]; then
    BUILD_OK=1
    record build skipped 0 - "--skip-build: reusing $BUILD"
  else
    record build "FAILED" 0 - "--skip-build but no built $BUILD/mechlab"
  fi
else
  say "configure and build (log: build.log)"
  build_step
fi

export MECHLAB_REQUIRE_CUDA=1

# ---------------------------------------------------------------- tests
ctest_step() {
  local log="$OUTDIR/ctest.log" t0 rc=0 t
  : >"$log"
  t0=$(date +%s)
  t=$(step_timeout 900)
  if [ "$t" -lt 30 ]; then record ctest "NOT RUN (time budget)" 0 - "rerun with --skip-build"; return; fi
  run_logged "$log" "$t" ctest --test-dir "$BUILD" --output-on-failure --no-tests=error \
    -j "$CTEST_JOBS" --timeout 300 || rc=$?
  cap_log "$log"
  local line total=0 nfail=0 nskip=0
  # CTest 3.x: "100% tests passed, 0 tests failed out of 5";
  # CTest 4.x: "100% tests passed out of 5" when none failed.
  line=$(grep -E '^[0-9]+% tests passed(, [0-9]+ tests? failed)? out of [0-9]+' "$log" | tail -n1 || true)
  if [ -n "$line" ]; then
    nfail=0
    if grep -qE 'tests? failed out of' <<<"$line"; then
      nfail=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")
    fi
    total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
    nskip=$(sed -n '/The following tests did not run:/,/^$/p' "$log" | grep -c '(Skipped)' || true)
    TESTS_LINE="$((total - nfail - nskip)) passed, $nfail failed, $nskip skipped (of $total; MECHLAB_REQUIRE_CUDA=1)"
  else
    TESTS_LINE="no CTest summary (see ctest.log)"
  fi
  if [ "$nfail" != 0 ] || [ "$rc" != 0 ]; then
    { echo "### Failed tests"; echo; echo '```';
      sed -n '/The following tests FAILED:/,/^$/p' "$log" | head -n 60 || true;
      [ -z "$line" ] && tail -n 30 "$log"; echo '```'; } >"$PARTS/failed-tests.md"
  fi
  record ctest "$(status_of "$rc")" $(($(date +%s) - t0)) ctest.log "$TESTS_LINE"
}

# sanitizer_step TOOL LOG FILTER: compute-sanitizer --tool TOOL over the kernel
# tests (tests/kernels/: every kernel family's cases on CUDA, see
# docs/ARCHITECTURE.md "Kernels"), restricted to the gtest FILTER.
sanitizer_step() {
  local tool=$1 log="$OUTDIR/$2" filter=$3 bin="$BUILD/tests/test_kernels" t0 rc=0 t
  if [ ! -x "$bin" ]; then record "$tool test_kernels" FAILED 0 - "no $bin (the build makes it)"; return; fi
  if [ -z "$SANITIZER" ]; then record "$tool test_kernels" skipped 0 - "compute-sanitizer not found"; return; fi
  t=$(step_timeout 300)
  if [ "$t" -lt 30 ]; then record "$tool test_kernels" "NOT RUN (time budget)" 0 - "rerun with --skip-build"; return; fi
  : >"$log"
  t0=$(date +%s)
  run_logged "$log" "$t" "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 50 \
    "$bin" --gtest_brief=1 "--gtest_filter=$filter" || rc=$?
  cap_log "$log"
  local summary
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n1 | sed 's/^=* *//' || true)
  summary=${summary:-no ERROR SUMMARY line}
  case "$rc" in
    0|99|124|137) ;;
    *) summary="$summary; the test binary itself failed under the sanitizer (exit $rc)" ;;
  esac
  if [ "$rc" != 0 ]; then
    { echo "### compute-sanitizer $tool (test_kernels)"; echo; echo '```';
      grep -E '^=========' "$log" | head -n 40 || true; tail -n 15 "$log"; echo '```'; } >>"$PARTS/memcheck.md"
  fi
  record "$tool test_kernels" "$(status_of "$rc")" $(($(date +%s) - t0)) "$2" "$summary"
}
memcheck_step() {
  rm -f "$PARTS/memcheck.md"
  # Every kernel test: the CUDA cases launch the kernels, the rest are quick.
  sanitizer_step memcheck memcheck.log '*'
  # Shared-memory hazards (edge_patch stages its mask tile in shared memory).
  sanitizer_step racecheck racecheck.log '*Cuda*'
}

# Kernel benchmark table: tests/kernels/ in perf mode prints time per call and
# effective GB/s of every kernel case on the CPU and on CUDA.
kernel_perf_step() {
  BENCH_N=$((BENCH_N + 1))
  local bin="$BUILD/tests/test_kernels" log="$OUTDIR/bench-kernels.log" t0 rc=0 t part
  part=$(printf '%s/bench-%03d.md' "$PARTS" "$BENCH_N")
  if [ ! -x "$bin" ]; then record "bench kernels" FAILED 0 - "no $bin"; return; fi
  t=$(step_timeout 180)
  if [ "$t" -lt 30 ]; then record "bench kernels" "NOT RUN (time budget)" 0 - "rerun with --only-bench --skip-build"; return; fi
  t0=$(date +%s)
  MECHLAB_KERNEL_PERF=1 timeout -k 15 "$t" "$bin" --gtest_filter='KernelPerf.*' >"$log" 2>&1 || rc=$?
  cap_log "$log"
  { echo "### \`MECHLAB_KERNEL_PERF=1 test_kernels --gtest_filter=KernelPerf.*\` — $(status_of "$rc")"; echo;
    awk '/^[[:space:]]*\|/ {print; t=1; next} t {print ""; t=0} /^#/ {print; print ""}' "$log";
    if [ "$rc" != 0 ]; then echo; echo '```'; tail -n 30 "$log"; echo '```'; fi; echo; } >"$part"
  record "bench kernels" "$(status_of "$rc")" $(($(date +%s) - t0)) bench-kernels.log ""
}

# ---------------------------------------------------------------- benchmarks
bench_list() {  # the subcommands `mechlab bench --help` lists, runtime first
  local help subs
  help=$(timeout 60 "$BUILD/mechlab" bench --help 2>&1) || true
  subs=$(awk '
      /^[[:space:]]*[Ss]ubcommands:/ {on=1; next}
      on && /^[[:space:]]*$/ {if (n) exit; next}
      on && /^[^[:space:]]/ {exit}
      on {print $1; n++}' <<<"$help" | sed 's/[,:]$//' | grep -E '^[a-z0-9][a-z0-9_-]*$' || true)
  if [ -z "$subs" ]; then
    echo runtime
    return
  fi
  { grep -x runtime <<<"$subs" || echo runtime; grep -vx runtime <<<"$subs" || true; } | awk '!seen[$0]++'
}

BENCH_N=0
bench_step() {  # bench_step NAME
  BENCH_N=$((BENCH_N + 1))
  local name=$1 log="$OUTDIR/bench-$1.log" t0 rc=0 t
  local part
  part=$(printf '%s/bench-%03d.md' "$PARTS" "$BENCH_N")
  local args=(bench "$name")
  if [ "$name" = runtime ] || timeout 60 "$BUILD/mechlab" bench "$name" --help 2>&1 | grep -q -- '--device'; then
    args+=(--device cuda)
  fi
  t=$(step_timeout 240)
  if [ "$t" -lt 30 ]; then record "bench $name" "NOT RUN (time budget)" 0 - "rerun with --skip-build"; return; fi
  t0=$(date +%s)
  : >"$log"
  timeout -k 15 "$t" "$BUILD/mechlab" "${args[@]}" >"$PARTS/out.txt" 2>"$PARTS/err.txt" || rc=$?
  { echo "\$ $BUILD/mechlab ${args[*]}"; cat "$PARTS/out.txt";
    echo "---- stderr ----"; cat "$PARTS/err.txt"; echo "[exit $rc]"; } >"$log"
  cap_log "$log"
  {
    echo "### \`mechlab ${args[*]}\` — $(status_of "$rc")"
    echo
    if grep -q '^[[:space:]]*|' "$PARTS/out.txt"; then
      # Tables verbatim: every run of lines that start with '|', with the
      # heading lines (starting with '#') in front of them.
      awk '/^[[:space:]]*\|/ {print; t=1; next} t {print ""; t=0} /^#/ {print; print ""}' "$PARTS/out.txt"
      echo
      echo "<details><summary>full output ($(wc -l <"$PARTS/out.txt") lines; bench-$name.log)</summary>"
      echo
      echo '```'
      tail -n 150 "$PARTS/out.txt"
      echo '```'
      echo "</details>"
    else
      echo '```'
      tail -n 200 "$PARTS/out.txt"
      echo '```'
    fi
    if [ "$rc" != 0 ]; then
      echo
      echo "stderr (last 30 lines):"
      echo
      echo '```'
      tail -n 30 "$PARTS/err.txt"
      echo '```'
    fi
    echo
  } >"$part"
  record "bench $name" "$(status_of "$rc")" $(($(date +%s) - t0)) "bench-$name.log" ""
}

if [ "$BUILD_OK" = 1 ]; then
  if [ "$DO_TESTS" = 1 ]; then
    say "ctest (log: ctest.log)"
    ctest_step
    say "compute-sanitizer memcheck (log: memcheck.log)"
    memcheck_step
  fi
  if [ "$DO_BENCH" = 1 ]; then
    if [ -x "$BUILD/mechlab" ]; then
      mapfile -t BENCHES < <(bench_list)
      say "benchmarks: ${BENCHES[*]}"
      for b in "${BENCHES[@]}"; do bench_step "$b"; done
      say "kernel benchmark table (log: bench-kernels.log)"
      kernel_perf_step
    else
      record bench "FAILED" 0 - "no $BUILD/mechlab"
    fi
  fi
else
  if [ "$DO_TESTS" = 1 ]; then record ctest skipped 0 - "no build"; fi
  if [ "$DO_BENCH" = 1 ]; then record bench skipped 0 - "no build"; fi
fi

write_report
say "report: $REPORT"
say "tests: $TESTS_LINE"
if [ "$FAILED" = 1 ]; then
  say "result: FAILED (see $REPORT)"
  exit 1
fi
say "result: ok"
