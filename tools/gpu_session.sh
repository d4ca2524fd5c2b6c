#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as ONE prepared command for a lent GPU machine (the
# device tool: one call of at most 10 minutes, results under $OUT). A hard deadline (DEADLINE_S,
# default 540 s = 9 minutes) bounds the whole script: every command runs under `timeout` with the
# smaller of its phase's budget and what is left of the deadline (minus RESERVE_S for packing), and a
# timeout around the whole script ends it if anything outlives that. Phases, in the order given (default:
# setup tests bench population):
#
#   phase       budget  what                                                   files back under $OUT
#   setup         60 s  install the carried wheels (.whl/) and diffnas; versions   env.txt
#   tests        120 s  pytest -m gpu (captured vs eager steps, other GPU tests)   gpu_tests.txt
#   bench        150 s  benchmarks/search_speed.py: reference, reference-lean,     bench.json, bench.png
#                       plain, fused, graphs, fused + graphs, interleaved; plot
#   population   180 s  SLOT for the population-fused search (issue 12):           population.json,
#                       benchmarks/population_speed.py (K = 1..16), then the       population_study.tar.gz
#                       population study examples/studies/nb201_collapse_population.yaml;
#                       each part runs only if its file is present
#   bench_bf16    90 s  search_speed.py with channels_last + bf16 autocast         bench_bf16.json
#   train        150 s  a short NB201 search with the speed switches, then a       train.tar.gz
#                       short `diffnas train` of the cell it found (issue 6)
#   study        300 s  STUDY (default examples/studies/nb201_collapse.yaml)       study.tar.gz
#                       until its budget; finished runs come back, a later call resumes
#
# log.txt (every phase's summary lines) always comes back. The device tool brings back at most 8
# files: a phase list whose files would exceed that is refused before anything runs. BUDGET_<phase>
# overrides a budget (BUDGET_bench=200).
#
# Beforehand, here (network): see benchmarks/README.md "GPU: the one command" for the wheels and the
# JPEG pack (local_data/cifar10/cifar10_jpeg_bytes.npz, git-ignored). Then, with the device tool:
#   run(command="bash tools/gpu_session.sh", carry=[".whl", "local_data"], timeout_s=600)
#
# DRY_RUN=1 runs the same phases on the CPU at tiny sizes (no installs, GPU tests skipped, the smoke
# study standing in for the population study) in a minute or two: tests/test_gpu_session.py runs it.
set -u
DEADLINE_S=${DEADLINE_S:-540}
# the whole script under one timeout: each command is bounded already, this catches anything else
if [ -z "${GPU_SESSION_BOUNDED:-}" ]; then
  GPU_SESSION_BOUNDED=1 exec timeout --kill-after=5 $(( DEADLINE_S + 15 )) bash "$0" "$@"
fi
OUT=${OUT:-gpu_out}
START=$(date +%s)
RESERVE_S=${RESERVE_S:-25}
DRY_RUN=${DRY_RUN:-0}
WORK=${WORK:-runs/gpu-session}   # search / train / study outputs of this session (not brought back whole)
export PYTHONUNBUFFERED=1 DIFFNAS_DATA_ROOT=${DIFFNAS_DATA_ROOT:-$PWD/local_data} DIFFNAS_DISABLE_PLUGIN_AUTOLOAD=1
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  BENCH_ARGS="--batch 4 --C 4 --N 1 --darts-C 4 --darts-layers 3 --image-size 8 --steps 1 --rounds 2 --warmup 1 --configs nb201-darts"
  POP_ARGS="--sizes 1,2 --C 4 --N 1 --batch 4 --image-size 8 --steps 1 --rounds 1 --warmup 1"
  GPU_TESTS=tests/test_cuda_graphs.py
else
  DEVICE=cuda
  BENCH_ARGS="--steps 10 --rounds 5 --warmup 8"
  POP_ARGS="--C 16 --N 5 --batch 64 --image-size 32 --sizes ${POP_SIZES:-1,2,4,8,16} --steps 5 --rounds 5 --warmup 3"
  GPU_TESTS=tests
fi

declare -A BUDGET=([setup]=60 [tests]=120 [bench]=150 [population]=180 [bench_bf16]=90 [train]=150 [study]=300)
declare -A FILES=([setup]="env.txt" [tests]="gpu_tests.txt" [bench]="bench.json bench.png"
                  [population]="population.json population_study.tar.gz" [bench_bf16]="bench_bf16.json"
                  [train]="train.tar.gz" [study]="study.tar.gz")
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(setup tests bench population)

# refuse unknown phases and phase lists that would bring back more than 8 files (log.txt included)
n=1
for phase in "${PHASES[@]}"; do
  if [ -z "${BUDGET[$phase]+x}" ]; then echo "gpu_session.sh: unknown phase '$phase' (known: ${!BUDGET[*]})" >&2; exit 2; fi
  n=$(( n + $(wc -w <<<"${FILES[$phase]}") ))
done
if [ "$n" -gt 8 ]; then
  echo "gpu_session.sh: phases '${PHASES[*]}' bring back $n files under \$OUT; the device tool returns at most 8" >&2
  exit 2
fi

mkdir -p "$OUT"
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }
# bounded PHASE CMD...: run CMD with the smaller of PHASE's budget left and the deadline left (minus the reserve)
bounded() {
  local phase=$1; shift
  local var="BUDGET_$phase" budget=${BUDGET[$phase]}
  budget=${!var:-$budget}
  local t=$(( PHASE_START + budget - $(date +%s) )) d=$(( $(left) - RESERVE_S ))
  [ "$d" -lt "$t" ] && t=$d
  if [ "$t" -le 5 ]; then log "$phase: no time left for: $*"; return 124; fi
  timeout --signal=INT --kill-after=10 "$t" "$@"
}

phase_setup() {
  if [ "$DRY_RUN" != 1 ]; then
    # the carried wheels go to their own folder, ahead of the image's packages (cattrs needs a recent attrs)
    bounded setup python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl >>"$OUT/log.txt" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    bounded setup python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/log.txt" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/env.txt" 2>&1
  else
    echo "DRY_RUN=1: CPU, tiny sizes" >"$OUT/env.txt"
  fi
  { python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    git log -1 --format='diffnas commit %H %s' 2>/dev/null; } >>"$OUT/env.txt" 2>&1
  tee -a "$OUT/log.txt" <"$OUT/env.txt"
}

phase_tests() {
  bounded tests python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS >"$OUT/gpu_tests.txt" 2>&1
  log "gpu tests: $(tail -1 "$OUT/gpu_tests.txt")"
}

phase_bench() {
  bounded bench python3 benchmarks/search_speed.py --device $DEVICE $BENCH_ARGS --out "$OUT/bench.json" 2>&1 | tee -a "$OUT/log.txt"
  [ -f "$OUT/bench.json" ] && python3 benchmarks/plot_speed.py "$OUT/bench.json" "$OUT/bench.png" >>"$OUT/log.txt" 2>&1
}

phase_bench_bf16() {  # the same side by side with channels_last and bf16 autocast on both sides
  bounded bench_bf16 python3 benchmarks/search_speed.py --device $DEVICE $BENCH_ARGS --channels-last --autocast bf16 \
    --impls reference,diffnas-fused,diffnas-fused-graphs --out "$OUT/bench_bf16.json" 2>&1 | tee -a "$OUT/log.txt"
}

phase_train() {
  local s=$WORK/search t=$WORK/train
  bounded train python3 -m diffnas.cli search examples/recipes/nb201_single_darts_sigmoid.yaml --out "$s" --no-progress \
    --set data.source=jpeg_pack --set trainer.epochs=${SEARCH_EPOCHS:-5} \
    --set trainer.fused_cells=true --set trainer.cuda_graphs=true 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  bounded train python3 -m diffnas.cli train "$s" --recipe examples/train/nb201_cifar10.yaml --out "$t" --no-progress \
    --set data.source=jpeg_pack --set trainer.epochs=${TRAIN_EPOCHS:-10} --set trainer.cuda_graphs=true \
    --set trainer.channels_last=true 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  tar czf "$OUT/train.tar.gz" --exclude='*.pt' --exclude='*.ckpt*' --exclude=.lock "$WORK/search" "$WORK/train" 2>>"$OUT/log.txt"
}

# run_study PHASE STUDY_FILE OUT_DIR TARBALL: the study until the phase's budget, its report, and the
# report plus the finished runs packed (an unfinished run's checkpoint is too large to bring back;
# without it that run starts afresh next time, finished runs are never re-run)
run_study() {
  local phase=$1 study=$2 d=$3 tarball=$4
  bounded "$phase" python3 -m diffnas.cli study "$study" --out "$d" ${PER_GPU:+--per-gpu $PER_GPU} --no-progress \
    2>&1 | tail -20 | tee -a "$OUT/log.txt"
  python3 -m diffnas.cli study "$study" --out "$d" --report-only >>"$OUT/log.txt" 2>&1
  local keep=()
  for f in "$d"/results.* "$d"/runs.csv "$d"/plots; do [ -e "$f" ] && keep+=("$f"); done
  for r in "$d"/runs/*/; do [ -f "$r/result.json" ] && keep+=("$r"); done
  if [ ${#keep[@]} -gt 0 ]; then
    tar czf "$OUT/$tarball" --exclude='*.pt' --exclude='*.ckpt*' --exclude=.lock "${keep[@]}" 2>>"$OUT/log.txt"
  fi
  log "$phase: $(ls "$d"/runs/*/result.json 2>/dev/null | wc -l) finished run(s) packed into $tarball"
}

phase_study() {
  local study=${STUDY:-examples/studies/nb201_collapse.yaml}
  local d=${STUDY_OUT:-examples/studies/results/$(basename "$study" .yaml)}
  [ "$DRY_RUN" = 1 ] && d=$WORK/studies/$(basename "$study" .yaml)
  run_study study "$study" "$d" study.tar.gz
}

# ----------------------------------------------------------------------------- population (issue 12)
# The slot of the population-fused search: its benchmark (steps/s per member and aggregate, memory,
# for K = 1..16) and the population study. Each part runs only if its file is in the tree.
phase_population() {
  if [ -f benchmarks/population_speed.py ]; then
    bounded population python3 benchmarks/population_speed.py --device $DEVICE $POP_ARGS --json "$OUT/population.json" \
      2>&1 | tee -a "$OUT/log.txt"
  else
    log "population: benchmarks/population_speed.py is not in this tree; skipped"
  fi
  local study=${POP_STUDY:-examples/studies/nb201_collapse_population.yaml}
  [ "$DRY_RUN" = 1 ] && study=examples/studies/smoke.yaml  # the tiny stand-in: same machinery, seconds
  if [ -f "$study" ]; then
    local d=${POP_STUDY_OUT:-examples/studies/results/$(basename "$study" .yaml)}
    [ "$DRY_RUN" = 1 ] && d=$WORK/studies/$(basename "$study" .yaml)
    run_study population "$study" "$d" population_study.tar.gz
  else
    log "population: $study is not in this tree; skipped"
  fi
}

for phase in "${PHASES[@]}"; do
  PHASE_START=$(date +%s)
  log "phase $phase ($(left) s left of ${DEADLINE_S} s)"
  "phase_$phase"
done
log "done in $(( $(date +%s) - START )) s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
