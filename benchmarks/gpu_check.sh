#!/usr/bin/env bash
# GPU check: what the `full` profile does on an NVIDIA GPU, in under 10 minutes.
#
#   benchmarks/gpu_check.sh            # on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh --smoke    # anywhere (CPU, the tiny profile): checks the script runs
#
# 1. Training throughput of the full profile's UNet (benchmarks/train_speed.py --profile full):
#    ms per step of our trainer against a bare PyTorch loop, images/s, bf16 autocast.
# 2. One distillation at GPU scale: the full-profile teacher trained for a short budget
#    (TEACHER_STEPS, default 4000 steps at batch 512), a consistency student
#    (STUDENT_STEPS, default 2000 at batch 512), both evaluated on the digits test split
#    (benchmarks/quality_vs_nfe.py --students --methods consistency: FID against the
#    real-data floor at 1-32 NFE, the 1-step student's speed against the teacher's best).
#
# Writes benchmarks/results/gpu_check.md (the summary: device, times, both scripts' tables)
# beside train_speed_full_cuda.md and quality_vs_nfe_students_gpu_check/.  The Python it
# runs is $PYTHON, else .venv/bin/python, else python3; it needs the project's dependencies
# (`make install`, or `pip install -e .` into that Python).  Nothing is downloaded: digits
# come from scikit-learn.  Exit status: non-zero when a step fails (the summary says which).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: benchmarks/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac

if [ "$SMOKE" = 1 ]; then
  PROFILE=tiny; DEVICE=cpu; TEACHER_STEPS=${TEACHER_STEPS:-20}; STUDENT_STEPS=${STUDENT_STEPS:-10}
  SPEED_ARGS=(--device cpu --steps 5 --warmup 2 --repeats 1)
  EVAL_ARGS=(--n 100 --nfe 1,2 --samplers dpmpp_2m --speed-repeats 1)
  RESULTS=${RESULTS:-$(mktemp -d)}
else
  PROFILE=full; DEVICE=cuda; TEACHER_STEPS=${TEACHER_STEPS:-4000}; STUDENT_STEPS=${STUDENT_STEPS:-2000}
  SPEED_ARGS=(--device cuda --steps 200 --repeats 3)
  EVAL_ARGS=(--n 1000 --nfe 1,2,4,8,16,32 --samplers dpmpp_2m,heun)
  RESULTS=${RESULTS:-benchmarks/results}
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: $PY's torch sees no CUDA GPU; on a CPU machine run it with --smoke" >&2
    exit 2
  fi
fi
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$RESULTS/gpu_check.md"
export PYTHONUNBUFFERED=1

step() {  # step <name> <command...>: runs it, timed, its stdout kept for the summary
  local name=$1; shift
  echo "gpu_check: $name ..." >&2
  local t0=$SECONDS
  if "$@" > "$WORK/$name.out"; then
    echo "gpu_check: $name took $((SECONDS - t0)) s" >&2
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$WORK/times"
  else
    local rc=$?
    echo "gpu_check: $name FAILED (exit $rc) after $((SECONDS - t0)) s" >&2
    printf '%s\tfailed (exit %s)\n' "$name" "$rc" >> "$WORK/times"
    return $rc
  fi
}

status=0
step train_speed "$PY" benchmarks/train_speed.py --profile "$PROFILE" "${SPEED_ARGS[@]}" \
  --out "$RESULTS/train_speed_${PROFILE}_${DEVICE}.md" || status=1
step teacher_and_student "$PY" benchmarks/quality_vs_nfe.py --profile "$PROFILE" \
  --students --methods consistency "${EVAL_ARGS[@]}" \
  --out "$RESULTS/quality_vs_nfe_students_gpu_check" \
  --set "out_dir=$WORK/run" --set "train.steps=$TEACHER_STEPS" --set "train.device=$DEVICE" \
  --set "train.checkpoint_every=$TEACHER_STEPS" \
  --set "distill.consistency.steps=$STUDENT_STEPS" --set "distill.consistency.device=$DEVICE" \
  --set "distill.consistency.checkpoint_every=$STUDENT_STEPS" \
  --set "evaluate.device=$DEVICE" || status=1

{
  echo "# GPU check ($(date -u +%Y-%m-%d), profile $PROFILE$([ "$SMOKE" = 1 ] && echo ', smoke run'))"
  echo
  "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)"
  echo
  echo "| step | seconds |"
  echo "|---|---|"
  while IFS=$'\t' read -r name secs; do echo "| $name | $secs |"; done < "$WORK/times"
  echo
  echo "teacher: $TEACHER_STEPS steps; consistency student: $STUDENT_STEPS steps (command: benchmarks/gpu_check.sh$([ "$SMOKE" = 1 ] && echo ' --smoke'))"
  for name in train_speed teacher_and_student; do
    if [ -s "$WORK/$name.out" ]; then echo; echo "## $name"; echo; cat "$WORK/$name.out"; fi
  done
} > "$SUMMARY"
echo "gpu_check: wrote $SUMMARY" >&2
exit $status
