#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one prepared command for a lent GPU machine
# (the device tool: one call, at most 10 minutes, results under $OUT). Phases run in this order and
# each is cut off by the overall deadline (DEADLINE_S, default 540 s after the start):
#
#   setup  install the carried wheels (.whl/: cattrs, attrs, typing_extensions, xautodl) and diffnas; versions
#   tests  pytest -m gpu (CUDA-graph equivalence and the other GPU-only tests)
#   bench  benchmarks/search_speed.py side by side with the reference; JSON + plot (issue 4)
#   bench_bf16  the same with channels_last + bf16 autocast (NB201 and DARTS space, fused + graphs)
#   train  a short NB201 search with the speed switches on, then a short `diffnas train` of the cell
#          it found (issue 6)
#   population  benchmarks/population_speed.py (K = 1..16 population-fused searches vs one run, NB201
#          C=16 N=5 batch 64), then examples/studies/nb201_collapse_population.yaml (20 runs as 4
#          populations) until the deadline (issue 12)
#   study  examples/studies/nb201_collapse.yaml into examples/studies/results/nb201_collapse until the
#          deadline; finished runs come back without checkpoints, and a later session resumes the
#          study from them (finished runs are never re-run) (issue 5)
#
# Beforehand, here (network): see benchmarks/README.md "GPU: the one command" for the wheels and the
# JPEG pack (local_data/cifar10/cifar10_jpeg_bytes.npz, git-ignored). Then, with the device tool:
#   run(command="bash tools/gpu_session.sh setup tests bench train study", carry=[".whl", "local_data"],
#       timeout_s=600)
# $OUT then holds: env.txt, log.txt, gpu_tests.txt, bench.json, bench.png, train.tar.gz, study.tar.gz
# (population: population_bench.json, population_study.tar.gz).
#
# Budget: a lent machine gives 15 minutes of device time per session and 10 per command, its start
# included. "setup tests bench train" fits one call; the study (21 runs of 50 epochs) needs calls of
# its own ("setup study"): only runs that finish inside a call come back (checkpoints are too large to
# carry), so PER_GPU (default: the study's own, 3) should be as many runs as finish in about 8 minutes
# side by side. STUDY picks another study file.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
export PYTHONUNBUFFERED=1 DIFFNAS_DATA_ROOT=${DIFFNAS_DATA_ROOT:-$PWD/local_data} DIFFNAS_DISABLE_PLUGIN_AUTOLOAD=1
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }
# run a phase's command with what is left of the deadline (minus a reserve for packing the results)
bounded() { local t=$(( $(left) - ${RESERVE_S:-25} )); if [ "$t" -le 5 ]; then log "no time left for: $*"; return 124; fi
            timeout --signal=INT --kill-after=10 "$t" "$@"; }

phase_setup() {
  # the carried wheels go to their own folder, ahead of the image's packages (cattrs needs a recent attrs)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$OUT/log.txt" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/log.txt" 2>&1
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
    "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    git log -1 --format='diffnas commit %H %s' 2>/dev/null; } >"$OUT/env.txt" 2>&1
  cat "$OUT/env.txt" | tee -a "$OUT/log.txt"
}

phase_tests() {
  bounded python3 -m pytest -q -m gpu -p no:cacheprovider tests >"$OUT/gpu_tests.txt" 2>&1
  log "gpu tests: $(tail -1 "$OUT/gpu_tests.txt")"
}

phase_bench() {
  bounded python3 benchmarks/search_speed.py --device cuda --steps 30 --warmup 8 --out "$OUT/bench.json" \
    2>&1 | tee -a "$OUT/log.txt"
  python3 benchmarks/plot_speed.py "$OUT/bench.json" "$OUT/bench.png" >>"$OUT/log.txt" 2>&1
}

phase_bench_bf16() {  # the same side by side with channels_last and bf16 autocast on both sides
  bounded python3 benchmarks/search_speed.py --device cuda --steps 30 --warmup 8 --channels-last --autocast bf16 \
    --configs nb201-darts,darts-darts --impls reference,diffnas-fused,diffnas-fused-graphs \
    --out "$OUT/bench_bf16.json" 2>&1 | tee -a "$OUT/log.txt"
}

phase_train() {
  local s=runs/gpu-session/search t=runs/gpu-session/train
  bounded python3 -m diffnas.cli search examples/recipes/nb201_single_darts_sigmoid.yaml --out "$s" --no-progress \
    --set data.source=jpeg_pack --set trainer.epochs=${SEARCH_EPOCHS:-5} \
    --set trainer.fused_cells=true --set trainer.cuda_graphs=true 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  bounded python3 -m diffnas.cli train "$s" --recipe examples/train/nb201_cifar10.yaml --out "$t" --no-progress \
    --set data.source=jpeg_pack --set trainer.epochs=${TRAIN_EPOCHS:-10} --set trainer.cuda_graphs=true \
    --set trainer.channels_last=true 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  tar czf "$OUT/train.tar.gz" --exclude='*.pt' --exclude='*.ckpt*' --exclude=.lock runs/gpu-session 2>>"$OUT/log.txt"
}

phase_population() {
  bounded python3 benchmarks/population_speed.py --device cuda --C 16 --N 5 --batch 64 --image-size 32 \
    --sizes ${POP_SIZES:-1,2,4,8,16} --rounds 5 --steps 5 --json "$OUT/population_bench.json" 2>&1 | tee -a "$OUT/log.txt"
  STUDY=examples/studies/nb201_collapse_population.yaml STUDY_TAR=population_study.tar.gz phase_study
}

phase_study() {
  local study=${STUDY:-examples/studies/nb201_collapse.yaml}
  local d=examples/studies/results/$(basename "$study" .yaml)
  bounded python3 -m diffnas.cli study "$study" --out "$d" ${PER_GPU:+--per-gpu $PER_GPU} --no-progress \
    2>&1 | tail -20 | tee -a "$OUT/log.txt"
  python3 -m diffnas.cli study "$study" --out "$d" --report-only >>"$OUT/log.txt" 2>&1
  # the report and the finished runs only: an unfinished run's checkpoint is too large to bring back,
  # and without it the run starts afresh next time
  local keep=("$d"/results.* "$d"/runs.csv "$d"/plots)
  for r in "$d"/runs/*/; do [ -f "$r/result.json" ] && keep+=("$r"); done
  tar czf "$OUT/${STUDY_TAR:-study.tar.gz}" --exclude='*.pt' --exclude='*.ckpt*' --exclude=.lock --ignore-failed-read "${keep[@]}" 2>>"$OUT/log.txt"
  log "study: $(ls "$d"/runs/*/result.json 2>/dev/null | wc -l) finished run(s) packed"
}

for phase in "$@"; do
  log "phase $phase ($(left) s left)"
  "phase_$phase"
done
log "done"
