#!/usr/bin/env bash
# Knowledge distillation, both routes: 1. train a resnet50 teacher; 2. the file route: --knowledge writes its
# probabilities for every training image to DATA/distill_resnet50.txt, then a resnet18 student trains on
# 0.7 x the teacher's soft targets (temperature 2) + 0.3 x the labels; 3. the online route: --teacher runs the
# frozen teacher on every training batch beside the student, loss 0.3 x CE + 0.7 x T^2 KL (T 2); its log shows
# the teacher's share of the step time. Prints the teacher's and both students' test top-1 and s/epoch.
#   [TEACHER=resnet50] [STUDENT=resnet18] [OUTPUT=output] [SMOKE=1] bash z_task_shell/4_distill.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
TEACHER=${TEACHER:-resnet50}; STUDENT=${STUDENT:-resnet18}
COMMON=(--data "$DATA" --image_size 32 32 --train_resize rrc --rrc_scale 0.6 1.0 --label_smoothing 0.1)
KD=(--distill_alpha 0.7 --distill_temperature 2)
main_py --train "${COMMON[@]}" --arch "$TEACHER" --tag teacher "$@"
TEACHER_CKPT="$OUTPUT/${TEACHER//\//-}/teacher/checkpoints/best.pth"
# the file route: the teacher's probabilities written once, read by the student's training
show_run "$PY" main.py --knowledge train --resume "$TEACHER_CKPT" --no_progress
main_py --train "${COMMON[@]}" --arch "$STUDENT" --distill --distill_files "$DATA/distill_${TEACHER//\//-}.txt" \
  "${KD[@]}" --tag student "$@"
# the online route: the teacher runs on every (augmented) training batch
main_py --train "${COMMON[@]}" --arch "$STUDENT" --teacher "$TEACHER_CKPT" "${KD[@]}" --tag student_online "$@"
"$PY" - "$OUTPUT/${TEACHER//\//-}/teacher" "$OUTPUT/${STUDENT//\//-}/student" \
  "$OUTPUT/${STUDENT//\//-}/student_online" <<'PY'
import json, sys
for run in sys.argv[1:]:
    metrics = json.load(open(f"{run}/metrics.json"))
    seconds = sum(row["time"] for row in metrics["history"]) / len(metrics["history"])
    share = [row["teacher_share"] for row in metrics["history"] if "teacher_share" in row]
    teacher = f", teacher {sum(share) / len(share):.0%} of step time" if share else ""
    print(f"{run}: test top-1 {metrics['test']['test_top1']:.2f}, {seconds:.1f} s/epoch{teacher}")
PY
