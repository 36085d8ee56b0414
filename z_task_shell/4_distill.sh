#!/usr/bin/env bash
# Knowledge distillation: 1. train a resnet50 teacher; 2. --knowledge writes its probabilities for every
# training image to DATA/distill_resnet50.txt; 3. train a resnet18 student on 0.7 x the teacher's soft
# targets (temperature 2) + 0.3 x the labels. Prints the teacher's and the student's test top-1.
#   [TEACHER=resnet50] [STUDENT=resnet18] [OUTPUT=output] [SMOKE=1] bash z_task_shell/4_distill.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
TEACHER=${TEACHER:-resnet50}; STUDENT=${STUDENT:-resnet18}
COMMON=(--data "$DATA" --image_size 32 32 --train_resize rrc --rrc_scale 0.6 1.0 --label_smoothing 0.1)
main_py --train "${COMMON[@]}" --arch "$TEACHER" --tag teacher "$@"
TEACHER_CKPT="$OUTPUT/${TEACHER//\//-}/teacher/checkpoints/best.pth"
show_run "$PY" main.py --knowledge train --resume "$TEACHER_CKPT" --no_progress
main_py --train "${COMMON[@]}" --arch "$STUDENT" --distill --distill_files "$DATA/distill_${TEACHER//\//-}.txt" \
  --distill_alpha 0.7 --distill_temperature 2 --tag student "$@"
"$PY" - "$OUTPUT/${TEACHER//\//-}/teacher" "$OUTPUT/${STUDENT//\//-}/student" <<'PY'
import json, sys
for run in sys.argv[1:]:
    test = json.load(open(f"{run}/metrics.json"))["test"]
    print(f"{run}: test top-1 {test['test_top1']:.2f}")
PY
