#!/usr/bin/env bash
# Federated knowledge distillation of a pretrained global HuBERT into a smaller student, on
# the clients prepared by run_pretraining.sh (same WORK_DIR):
#
#   bash recipes/librispeech/run_distillation.sh WORK_DIR [ROUNDS] [RECIPE] [fairseq overrides...]
#
# e.g. bash recipes/librispeech/run_distillation.sh runs/libri 100 student
#      bash recipes/librispeech/run_distillation.sh runs/toy-run 3 tiny_student common.cpu=true
# Teacher: WORK_DIR/save/server/checkpoint_best.pt (TEACHER=... to choose another); the student
# starts from the teacher's conv extractor and mapped layers (INIT_FROM_TEACHER=0 for scratch).
# Result: WORK_DIR/distill/server/best_global_model.pt, for s3prl's -u hubert_local -k.
set -euo pipefail
work=${1:?work dir of run_pretraining.sh}; rounds=${2:-100}; recipe=${3:-student}
shift $(( $# < 3 ? $# : 3 ))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fedhubert="$repo/.venv/bin/fedhubert"
[ -x "$fedhubert" ] || { echo "run bash $repo/scripts/setup.sh first" >&2; exit 1; }
teacher=${TEACHER:-$work/save/server/checkpoint_best.pt}
init=(--init-from-teacher); [ "${INIT_FROM_TEACHER:-1}" = 0 ] && init=()
"$fedhubert" distill --data-root "$work/data" --teacher "$teacher" --save-dir "$work/distill" --recipe "$recipe" \
    --num-server-rounds "$rounds" --resume "${init[@]}" "$@"
echo "student for s3prl: $work/distill/server/best_global_model.pt"
