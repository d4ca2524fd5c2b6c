#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (the device tool: one call of at most 10 minutes,
# results under $OUT, 64 MiB carried in, 8 files back). It turns one 9-minute call into the figures
# the README needs, writes them into ONE file, $OUT/results.json (device name and settings, every
# phase's status and figures), and tools/gpu_tables.py turns that file into the README's GPU tables:
# no GPU figure is typed by hand.
#
# A hard deadline (DEADLINE_S, default 540 s) bounds the whole script: each command runs under
# `timeout` with the smaller of its phase's budget and what is left of the deadline (less RESERVE_S for
# packing), and a timeout around the whole script ends it if anything outlives that. Every phase's
# result is CHECKED (tools/gpu_results.py): a phase that fails, or is cut by its budget, is named in
# the log and in results.json ("failed"), and the command exits 1 ("FAILED phase(s): ..."). Without a
# GPU (and without DRY_RUN=1) the setup phase fails and nothing else runs. Default phases, in order:
#
#   phase        budget  what
#   setup          40 s  install the carried wheels (.whl/); device name and settings; data pack present
#   population    140 s  benchmarks/population_speed.py at full size (NB201 C=16 N=5, batch 64, 32x32):
#                        per-member steps/s of K = POP_SIZES (1,4,8,16,21) against one plain and one
#                        fused run (--fused), interleaved, with ops per step per member; with --graphs
#                        also one fused + CUDA-graphs run against the largest K with its step graphed
#   bench         130 s  benchmarks/search_speed.py, NB201 and DARTS (C=16, 8 cells), batch 64:
#                        reference (xautodl), plain, fused, fused + CUDA graphs, interleaved
#   collapse      150 s  examples/studies/nb201_collapse.yaml's 21 runs as a fixed-step slice
#                        (SLICE_STEPS=20 steps, one epoch each; tools/gpu_results.py slice-study), grouped
#                        into populations wherever the population path accepts them (the rest run one
#                        by one, the reason logged), with the projected full-study time
#   search      the rest one full NB201 DARTS-V1 search (examples/recipes/nb201_darts_v1.yaml, 50 epochs,
#                        fused + CUDA graphs, checkpoint every CKPT_STEPS=250 steps) until the deadline;
#                        a search that does not finish comes back resumable (below) and is not a failure
#                        as long as it made progress; SLICE_EPOCHS=N ends it after N more finished epochs
# Optional phases: tests (pytest -m gpu, 120 s), bench_bf16 (channels_last + bf16, 90 s).
# BUDGET_<phase>=S overrides a budget; `bash tools/gpu_session.sh setup search` runs those phases only.
#
# Files back under $OUT (at most 8): results.json, log.txt, bench.png, search_run.tar.gz (the search's
# run directory with its checkpoint, a few MiB), gpu_tests.txt (tests phase).
#
# BEFOREHAND, here (network), in the repository root (.whl/, local_data/ and gpu_carry/ are git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl cattrs attrs typing_extensions xautodl==1.0.0
#   python3 tools/gpu_pack.py build          # compact CIFAR-10 pack: 30,000 + 1,000 images, 27.5 MiB
#   python3 tools/gpu_pack.py carry          # tree + .whl + pack + gpu_carry: must be well under 64 MiB
# FIRST CALL (the device tool):
#   run(command="bash tools/gpu_session.sh", carry=[".whl", "local_data/gpu_pack"], timeout_s=600)
# RESUMING THE SEARCH (never from scratch): copy the returned search_run.tar.gz into gpu_carry/ here,
#   mkdir -p gpu_carry && cp <files_at>/search_run.tar.gz gpu_carry/
# then, in the same session (DEADLINE_S sized to the device time left) or in a later one:
#   run(command="DEADLINE_S=500 bash tools/gpu_session.sh setup search",
#       carry=[".whl", "local_data/gpu_pack", "gpu_carry"], timeout_s=600)
# The search phase continues from gpu_carry/search_run.tar.gz (or from $WORK's own checkpoint, when the
# machine kept it and it is further along) with `diffnas search --resume`; its result comes back the
# same way, until results.json says "finished": true.
# AFTERWARDS: python3 tools/gpu_tables.py results.json --write (README.md, benchmarks/README.md).
#
# DRY_RUN=1 runs every phase on the CPU at tiny sizes (a 200-image pack cut from the embedded sample,
# NB201 C=4 N=1, populations of K = 1, 2, the collapse slice with seeds 0, 1 = 14 runs in 5 populations
# and 4 single runs, a short resumable search) in well under a minute; tests/test_gpu_session.py runs
# it in CI, and checks its results.json with tools/gpu_tables.py. Its figures are CPU figures, labelled so.
set -u -o pipefail
DEADLINE_S=${DEADLINE_S:-540}
# the whole script under one timeout: each command is bounded already, this catches anything else
if [ -z "${GPU_SESSION_BOUNDED:-}" ]; then
  GPU_SESSION_BOUNDED=1 exec timeout --kill-after=5 $(( DEADLINE_S + 15 )) bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
START=$(date +%s)
RESERVE_S=${RESERVE_S:-20}
DRY_RUN=${DRY_RUN:-0}
WORK=${WORK:-runs/gpu-session}   # this session's runs (not brought back whole)
CARRY_DIR=${CARRY_DIR:-gpu_carry}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 DIFFNAS_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
BENCH_CONFIGS=${BENCH_CONFIGS:-nb201-darts,darts-darts}
BENCH_IMPLS=${BENCH_IMPLS:-reference,diffnas,diffnas-fused,diffnas-fused-graphs}
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  export DIFFNAS_DATA_ROOT=$WORK/data
  BENCH_ARGS="--batch 4 --C 4 --N 1 --darts-C 4 --darts-layers 3 --image-size 8 --steps 1 --rounds 2 --warmup 1 --threads 1"
  POP_SIZES=${POP_SIZES:-1,2}
  POP_ARGS="--C 4 --N 1 --batch 4 --image-size 8 --steps 1 --rounds 1 --warmup 1 --threads 1"
  SLICE_STEPS=${SLICE_STEPS:-1}
  SLICE_ARGS="--seeds 0,1 --set search_space.params.C=4 --set search_space.params.N=1 --set trainer.batch_size=8
    --set trainer.device=cpu --set trainer.fused_cells=false --set trainer.cuda_graphs=false"
  SEARCH_SETS="--set search_space.params.C=4 --set search_space.params.N=1 --set trainer.batch_size=8
    --set trainer.device=cpu --set trainer.steps_per_epoch=4 --set trainer.epochs=${SEARCH_EPOCHS:-3}"
  CKPT_STEPS=${CKPT_STEPS:-1}
  GPU_TESTS=tests/test_cuda_graphs.py
else
  DEVICE=cuda
  export DIFFNAS_DATA_ROOT=${DIFFNAS_DATA_ROOT:-$PWD/local_data/gpu_pack}
  BENCH_ARGS="--steps 10 --rounds 5 --warmup 8"
  POP_SIZES=${POP_SIZES:-1,4,8,16,21}
  POP_ARGS="--C 16 --N 5 --batch 64 --image-size 32 --steps 3 --rounds 3 --warmup 3"
  SLICE_STEPS=${SLICE_STEPS:-20}
  SLICE_ARGS=""
  SEARCH_SETS="--set trainer.fused_cells=true --set trainer.cuda_graphs=true${SEARCH_EPOCHS:+ --set trainer.epochs=$SEARCH_EPOCHS}"
  CKPT_STEPS=${CKPT_STEPS:-250}
  GPU_TESTS=tests
fi

declare -A BUDGET=([setup]=40 [population]=140 [bench]=130 [collapse]=150 [search]=100000 [tests]=120 [bench_bf16]=90)
declare -A FILES=([setup]="" [population]="" [bench]="bench.png" [collapse]="" [search]="search_run.tar.gz"
                  [tests]="gpu_tests.txt" [bench_bf16]="")
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(setup population bench collapse search)

# refuse unknown phases and phase lists that would bring back more than 8 files (log.txt, results.json included)
n=2
for phase in "${PHASES[@]}"; do
  if [ -z "${BUDGET[$phase]+x}" ]; then echo "gpu_session.sh: unknown phase '$phase' (known: ${!BUDGET[*]})" >&2; exit 2; fi
  n=$(( n + $(wc -w <<<"${FILES[$phase]}") ))
done
if [ "$n" -gt 8 ]; then
  echo "gpu_session.sh: phases '${PHASES[*]}' bring back $n files under \$OUT; the device tool returns at most 8" >&2
  exit 2
fi

PH=$WORK/phases
mkdir -p "$OUT" "$PH"
: >"$PH/status.tsv"
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }
# time_for PHASE: seconds PHASE may still run (the smaller of its budget left and the deadline left,
# less the reserve); fails when 5 s or less are left
time_for() {
  local var="BUDGET_$1" budget=${BUDGET[$1]}
  budget=${!var:-$budget}
  local t=$(( PHASE_START + budget - $(date +%s) )) d=$(( $(left) - RESERVE_S ))
  [ "$d" -lt "$t" ] && t=$d
  echo "$t"
  [ "$t" -gt 5 ]
}
# epochs_in RUN_DIR: finished epochs recorded in its metrics.jsonl (each after its checkpoint)
epochs_in() { local n; n=$(grep -c '"time_s"' "$1/metrics.jsonl" 2>/dev/null); echo "${n:-0}"; }
# bounded PHASE CMD...: run CMD with the smaller of PHASE's budget left and the deadline left (minus the reserve)
bounded() {
  local phase=$1; shift
  local t
  t=$(time_for "$phase") || { log "$phase: no time left for: $*"; return 124; }
  timeout --signal=INT --kill-after=10 "$t" "$@"
}
# check PHASE ARGS...: tools/gpu_results.py ARGS (the phase's check; its verdict goes to the log)
check() { local phase=$1; shift; "$PY" tools/gpu_results.py "$@" 2>&1 | tee -a "$OUT/log.txt"; }
DRY_FLAG=$([ "$DRY_RUN" = 1 ] && echo --dry-run)

phase_setup() {
  if [ "$DRY_RUN" = 1 ]; then
    # a tiny pack cut from the embedded sample: the same format and tool as the GPU's compact pack
    "$PY" tools/gpu_pack.py build --src src/diffnas/data/embedded/cifar10_sample.npz --out "$DIFFNAS_DATA_ROOT" \
      --train 200 --test 50 2>&1 | tee -a "$OUT/log.txt" || return 1
  else
    if compgen -G ".whl/*.whl" >/dev/null; then
      # the carried wheels go to their own folder, ahead of the image's packages (cattrs needs a recent attrs)
      bounded setup "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$OUT/log.txt" 2>&1 || { log "setup: installing .whl/*.whl failed"; return 1; }
      export PYTHONPATH=/tmp/site:$PYTHONPATH
    else
      log "setup: no .whl/ carried (cattrs, attrs, typing_extensions, xautodl): see this script's header"
    fi
    if [ ! -f "$DIFFNAS_DATA_ROOT/cifar10/cifar10_jpeg_bytes.npz" ]; then
      log "setup: no data pack at $DIFFNAS_DATA_ROOT/cifar10/cifar10_jpeg_bytes.npz: run tools/gpu_pack.py build and carry local_data/gpu_pack"
      return 1
    fi
  fi
  check setup device "$PH/setup.json" $DRY_FLAG
}

phase_population() {
  bounded population "$PY" benchmarks/population_speed.py --device $DEVICE $POP_ARGS --sizes "$POP_SIZES" --fused --graphs \
    --json "$WORK/population_raw.json" 2>&1 | tee -a "$OUT/log.txt" || return $?
  check population population "$WORK/population_raw.json" "$PH/population.json" --sizes "$POP_SIZES" $DRY_FLAG
}

phase_bench() {
  bounded bench "$PY" benchmarks/search_speed.py --device $DEVICE $BENCH_ARGS --configs "$BENCH_CONFIGS" \
    --impls "$BENCH_IMPLS" --out "$WORK/bench_raw.json" 2>&1 | tee -a "$OUT/log.txt" || return $?
  check bench bench "$WORK/bench_raw.json" "$PH/bench.json" --impls "$BENCH_IMPLS" --configs "$BENCH_CONFIGS" $DRY_FLAG \
    || return 1
  "$PY" benchmarks/plot_speed.py "$WORK/bench_raw.json" "$OUT/bench.png" >>"$OUT/log.txt" 2>&1 \
    || { log "bench: plot_speed.py failed"; return 1; }
}

phase_bench_bf16() {  # the same side by side with channels_last and bf16 autocast on both sides
  local impls=reference,diffnas-fused,diffnas-fused-graphs
  bounded bench_bf16 "$PY" benchmarks/search_speed.py --device $DEVICE $BENCH_ARGS --configs "$BENCH_CONFIGS" \
    --channels-last --autocast bf16 --impls $impls --out "$WORK/bench_bf16_raw.json" 2>&1 | tee -a "$OUT/log.txt" || return $?
  check bench_bf16 bench "$WORK/bench_bf16_raw.json" "$PH/bench_bf16.json" --impls $impls --configs "$BENCH_CONFIGS" $DRY_FLAG
}

phase_tests() {
  bounded tests "$PY" -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS >"$OUT/gpu_tests.txt" 2>&1
  local rc=$?
  log "gpu tests: $(tail -1 "$OUT/gpu_tests.txt")"
  # 5: nothing collected (a CPU has no GPU tests to run): not a failure on a dry run
  [ "$DRY_RUN" = 1 ] && [ $rc -eq 5 ] && return 0
  return $rc
}

phase_collapse() {
  local slice=$WORK/collapse/slice.yaml d=$WORK/collapse/study
  rm -rf "$WORK/collapse"  # a slice is measured afresh each call
  # shellcheck disable=SC2086
  check collapse slice-study examples/studies/nb201_collapse.yaml "$slice" --steps "$SLICE_STEPS" $SLICE_ARGS || return 1
  local t0=$(date +%s)
  bounded collapse "$PY" -m diffnas.cli study "$slice" --out "$d" --executor sequential --no-progress --no-plots \
    >"$WORK/collapse/study.log" 2>&1
  local rc=$?
  tail -25 "$WORK/collapse/study.log" >>"$OUT/log.txt"
  [ $rc -eq 0 ] || { log "collapse: diffnas study exited $rc"; return $rc; }
  check collapse collapse "$d" "$slice" "$WORK/collapse/study.log" "$PH/collapse.json" --steps "$SLICE_STEPS" \
    --wall $(( $(date +%s) - t0 ))
}

phase_search() {
  local d=$WORK/search/nb201_darts_v1 carried=$CARRY_DIR/search_run.tar.gz before=0
  if [ -f "$carried" ] && [ ! -f "$d/result.json" ]; then  # the carried checkpoint, unless this machine kept one further along
    local tmp=$WORK/search/carried steps
    rm -rf "$tmp" && mkdir -p "$tmp" && tar xzf "$carried" -C "$tmp" || { log "search: cannot unpack $carried"; return 1; }
    steps=($("$PY" tools/gpu_results.py steps "$tmp/nb201_darts_v1" "$d"))
    if [ "${steps[0]:-0}" -gt "${steps[1]:-0}" ]; then
      rm -rf "$d" && mv "$tmp/nb201_darts_v1" "$d"
      log "search: continuing from the carried checkpoint $carried (global step ${steps[0]})"
    fi
    before=$(( steps[0] > steps[1] ? steps[0] : steps[1] ))
    rm -rf "$tmp"
  elif [ -f "$d/checkpoint.pt" ]; then
    before=$("$PY" tools/gpu_results.py steps "$d")
  fi
  PHASE_START=$(date +%s)  # the search's budget is the time it steps, after the unpacking
  local t0=$(date +%s) rc=0 cmd
  if [ -f "$d/result.json" ]; then
    log "search: $d finished already"
  else
    if [ -f "$d/checkpoint.pt" ]; then
      cmd=(-m diffnas.cli search --resume "$d" --no-progress)
    else
      rm -rf "$d" && mkdir -p "$WORK/search"  # no checkpoint: nothing to continue from
      # shellcheck disable=SC2206
      cmd=(-m diffnas.cli search examples/recipes/nb201_darts_v1.yaml --out "$d" --no-progress --set data.source=jpeg_pack
           --set output.checkpoint_every_steps=$CKPT_STEPS --set output.draw_cells=false $SEARCH_SETS)
    fi
    local t; t=$(time_for search) || { log "search: no time left"; return 124; }
    local e0; e0=$(epochs_in "$d")
    # in the background, so that SLICE_EPOCHS can end it (SIGINT: it unwinds, its checkpoint stays) after
    # that many more finished epochs: a fixed-size slice; otherwise the deadline ends it
    ( exec timeout --signal=INT --kill-after=10 "$t" "$PY" "${cmd[@]}" ) >"$WORK/search.log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null; do
      sleep 1
      if [ -n "${SLICE_EPOCHS:-}" ] && [ "$(epochs_in "$d")" -ge $(( e0 + SLICE_EPOCHS )) ]; then
        log "search: $SLICE_EPOCHS more epoch(s) done: ending the slice"; kill -INT $pid; wait $pid; rc=124; break
      fi
    done
    [ $rc -eq 124 ] || { wait $pid; rc=$?; }
    tail -5 "$WORK/search.log" | tee -a "$OUT/log.txt"
  fi
  local partial=""
  if [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then partial=--partial; elif [ $rc -ne 0 ]; then log "search: exited $rc"; return $rc; fi
  [ -d "$d" ] && tar czf "$OUT/search_run.tar.gz" --exclude=.lock --exclude='*.tmp' -C "$WORK/search" nb201_darts_v1
  check search search "$d" "$PH/search.json" --before "$before" --wall $(( $(date +%s) - t0 )) $partial || return 1
  [ -n "$partial" ] && return 3  # cut by the deadline after making progress: resumable, not a failure
  return 0
}

FAILED=()
merge() { "$PY" tools/gpu_results.py merge "$OUT/results.json" "$PH" --dry-run "$DRY_RUN" --status-file "$PH/status.tsv" \
  2>&1 | tee -a "$OUT/log.txt"; }
for phase in "${PHASES[@]}"; do
  PHASE_START=$(date +%s)
  if [ "${SETUP_FAILED:-0}" = 1 ]; then
    status=not_run rc=0
  else
    log "phase $phase ($(left) s left of ${DEADLINE_S} s)"
    "phase_$phase"
    rc=$?
    case $rc in 0) status=ok ;; 3) status=partial ;; 124|130|137) status=timeout ;; *) status=failed ;; esac
  fi
  wall=$(( $(date +%s) - PHASE_START ))
  printf '%s\t%s\t%s\t%s\n' "$phase" "$status" "$rc" "$wall" >>"$PH/status.tsv"
  [ "$status" = ok ] || [ "$status" = partial ] || FAILED+=("$phase")
  [ "$status" = not_run ] || log "phase $phase: $status (exit $rc, ${wall} s)"
  [ "$phase" = setup ] && [ "$status" != ok ] && SETUP_FAILED=1
  merge
done
log "done in $(( $(date +%s) - START )) s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED phase(s): ${FAILED[*]}"
  exit 1
fi
