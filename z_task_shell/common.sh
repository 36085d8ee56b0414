# Sourced by the recipes (not run on its own): the repository root, the Python, where runs go, SMOKE=1.
#   OUTPUT=DIR  where runs go (default output/), as main.py --output
#   SMOKE=1     a tiny run that proves a recipe's flags are valid (the test suite runs every recipe so):
#               the bundled digits cut to 4 images per class and split (OUTPUT/smoke_digits), 16x16
#               inputs (a recipe sets SMOKE_SIZE for a model that needs larger ones), 1 epoch at LR 0.01 (5 steps at a higher LR leave batch-norm statistics useless for
#               the exported-model checks), the gradient norm clipped at 1 (ResNeXt-50 at 16x16, batch 8 has
#               a gradient norm of 564 at its first step in float32, and overflowed under bf16 --amp on an
#               AVX-512 CPU), batch 8, no loader workers, one process. Everything else as the recipe.
# In a recipe: `main_py FLAGS...` runs main.py with FLAGS, then --output, then the smoke overrides.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash z_task_shell/install.sh
PY="$ROOT/.venv/bin/python"
OUTPUT=${OUTPUT:-output}
SMOKE=${SMOKE:-0}
SMOKE_ARGS=()
SMOKE_INPUT_ARGS=()  # the part of SMOKE_ARGS for modes other than --train, which refuse training flags
if [ "$SMOKE" = 1 ]; then
  SMOKE_DATA="$OUTPUT/smoke_digits"
  [ -f "$SMOKE_DATA/.complete-v1" ] || "$PY" utils/make_digits.py --out "$SMOKE_DATA" --per_class 4
  SMOKE_INPUT_ARGS=(--image_size "${SMOKE_SIZE:-16}" "${SMOKE_SIZE:-16}" -b 8 -j 0)
  SMOKE_ARGS=("${SMOKE_INPUT_ARGS[@]}" --epochs 1 --warmup 0 --lr 0.01 --clip_grad 1)
fi

# The data folder a recipe uses: its argument, or the smoke set under SMOKE=1.
data_path() { if [ "$SMOKE" = 1 ]; then echo "$SMOKE_DATA"; else echo "$1"; fi; }

# Print a command, then run it.
show_run() { echo "+ $*" >&2; "$@"; }

# main.py with the recipe's flags (the mode first), the output folder and (SMOKE=1) the smoke overrides,
# which win: the training ones only after --train.
main_py() {
  if [ "$1" = --train ]; then
    show_run "$PY" main.py "$@" --output "$OUTPUT" --no_progress ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"}
  else
    show_run "$PY" main.py "$@" --output "$OUTPUT" --no_progress ${SMOKE_INPUT_ARGS[@]+"${SMOKE_INPUT_ARGS[@]}"}
  fi
}

# torchrun with NPROC processes per node (SMOKE=1: one process) running main.py like main_py.
torchrun_main_py() {
  local nproc=$1; shift
  if [ "$SMOKE" = 1 ]; then nproc=1; fi
  show_run "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" main.py "$@" --output "$OUTPUT" \
    --no_progress ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"}
}

# A checkpoint a recipe needs: the given path; under SMOKE=1 a missing one is made by the smoke baseline.
need_checkpoint() {
  local ckpt=$1
  if [ ! -f "$ckpt" ] && [ "$SMOKE" = 1 ]; then
    bash z_task_shell/1_train_baseline.sh >&2
  fi
  if [ ! -f "$ckpt" ]; then
    echo "error: checkpoint $ckpt does not exist; train one first (bash z_task_shell/1_train_baseline.sh DATA)" >&2
    exit 2
  fi
}

# main.py on NPROC devices of this machine: plain python for 1, else torchrun (SMOKE=1: one process).
launch() {
  local nproc=$1; shift
  if [ "$nproc" = 1 ]; then main_py "$@"; else torchrun_main_py "$nproc" "$@"; fi
}

# ImageNet-style geometry: RandomResizedCrop(0.08-1, 3/4-4/3) + flip for training; resize the short side
# to 256 and centre-crop 224 for evaluation.
IMAGENET_GEOMETRY=(--image_size 224 224 --train_resize rrc --rrc_scale 0.08 1.0 --hflip 0.5
                   --eval_resize center_crop --crop_pct 0.875)
