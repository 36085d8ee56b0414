#!/usr/bin/env bash
# Predict a folder (recursive; an image or a txt list work too) into a new folder of its own,
# RUN/predict/<folder name>[-N]/: predictions.csv with each image's top-3 classes and probabilities, each
# image saved annotated under images/ (-v), and a log line per image in predictions.log (-s). Unreadable
# images are reported and skipped.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/8_predict_folder.sh [FOLDER=data/digits/test] [CKPT=OUTPUT/resnet18/baseline/checkpoints/best.pth] [main.py flags]
source "$(dirname "$0")/common.sh"
FOLDER=${1:-$(data_path data/digits)/test}; shift $(( $# > 0 ? 1 : 0 ))
CKPT=${1:-$OUTPUT/resnet18/baseline/checkpoints/best.pth}; shift $(( $# > 0 ? 1 : 0 ))
need_checkpoint "$CKPT"
RESULT=$(show_run "$PY" main.py --predict "$FOLDER" --resume "$CKPT" --topk 3 -v -s --no_progress "$@")
echo "$RESULT"
head -n 4 "$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["predictions"])' <<< "$RESULT")"
