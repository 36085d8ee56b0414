#!/usr/bin/env bash
# Deployment: export a checkpoint to TorchScript (RUN/export/model_jit.pt) and ONNX (RUN/export/model.onnx),
# each verified against the eager model, then classify a folder with the self-contained deploy demo
# (demos/classifier.py, which imports no project code) through both backends.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/7_export_and_demo.sh [CKPT=OUTPUT/resnet18/baseline/checkpoints/best.pth] [FOLDER=data/digits/test/3] [main.py flags]
source "$(dirname "$0")/common.sh"
CKPT=${1:-$OUTPUT/resnet18/baseline/checkpoints/best.pth}; shift $(( $# > 0 ? 1 : 0 ))
FOLDER=${1:-$(data_path data/digits)/test/3}; shift $(( $# > 0 ? 1 : 0 ))
need_checkpoint "$CKPT"
RUN=$(dirname "$(dirname "$CKPT")")
show_run "$PY" main.py --jit --resume "$CKPT" --no_progress "$@"
show_run "$PY" main.py --onnx --resume "$CKPT" --no_progress "$@"
show_run "$PY" demos/classifier.py "$RUN/export/model_jit.pt" "$FOLDER" --topk 3 --backend torchscript
show_run "$PY" demos/classifier.py "$RUN/export/model.onnx" "$FOLDER" --topk 3 --backend onnxruntime
