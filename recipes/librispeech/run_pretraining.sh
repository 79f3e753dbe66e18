#!/usr/bin/env bash
# From a LibriSpeech root to a federated HuBERT (iteration 1): prepare -> pretrain.
#
#   bash recipes/librispeech/run_pretraining.sh LIBRISPEECH_ROOT WORK_DIR [NUM_CLIENTS] [ROUNDS] [RECIPE] [fairseq overrides...]
#
# e.g. bash recipes/librispeech/run_pretraining.sh /data/LibriSpeech runs/libri 8 100 base
#      bash recipes/librispeech/run_pretraining.sh runs/toy/LibriSpeech runs/toy-run 4 3 tiny common.cpu=true
# Subsets: SUBSETS="train-clean-100 train-clean-360" (default train-clean-100; dev-clean-2 for the toy corpus).
# Result: WORK_DIR/save/server/best_global_model.pt, for s3prl's -u hubert_local -k.
#
# HuBERT's second iteration (labels from k-means on the global model's layer-6 features, 500
# clusters, 50 Hz) is the next step once `fedhubert prepare --features checkpoint` lands.
set -euo pipefail
root=${1:?LibriSpeech root}; work=${2:?work dir}; clients=${3:-8}; rounds=${4:-100}; recipe=${5:-base}
shift $(( $# < 5 ? $# : 5 ))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fedhubert="$repo/.venv/bin/fedhubert"
[ -x "$fedhubert" ] || { echo "run bash $repo/scripts/setup.sh first" >&2; exit 1; }
if [ -z "${SUBSETS:-}" ]; then
    if [ -d "$root/train-clean-100" ]; then SUBSETS=train-clean-100; else SUBSETS=$(cd "$root" && ls -d */ | tr -d / | tr '\n' ' '); fi
fi
min_seconds=2.0; [ "$recipe" = tiny ] && min_seconds=1.0

if [ ! -f "$work/data/prepare.json" ]; then
    # shellcheck disable=SC2086  # SUBSETS is a list
    "$fedhubert" prepare --librispeech-root "$root" --subsets $SUBSETS --num-clients "$clients" \
        --out "$work/data" --min-seconds "$min_seconds"
fi
"$fedhubert" pretrain --data "$work/data" --save-dir "$work/save" --recipe "$recipe" --rounds "$rounds" --resume "$@"
echo "global model for s3prl: $work/save/server/best_global_model.pt"
