#!/usr/bin/env bash
# From a LibriSpeech root to a federated HuBERT, both iterations of the HuBERT recipe:
# iteration 1 (MFCC k-means targets at 100 Hz) -> iteration 2 (k-means on a layer of the
# iteration-1 global model, 50 Hz), each prepared and pretrained federated.
#
#   bash recipes/librispeech/run_pretraining.sh LIBRISPEECH_ROOT WORK_DIR [NUM_CLIENTS] [ROUNDS] [RECIPE] [fairseq overrides...]
#
# e.g. bash recipes/librispeech/run_pretraining.sh /data/LibriSpeech runs/libri 8 100 base
#      bash recipes/librispeech/run_pretraining.sh runs/toy/LibriSpeech runs/toy-run 4 3 tiny common.cpu=true
# Subsets: SUBSETS="train-clean-100 train-clean-360" (default train-clean-100; dev-clean-2 for the toy corpus).
# Iteration 2: LAYER (default 6 for base, 1 for tiny), CLUSTERS_IT2 (default 500 for base, 100 for tiny),
# ROUNDS_IT2 (default ROUNDS), ITERATIONS=1 to stop after iteration 1. Iteration 2 starts from
# scratch as HuBERT does; CONTINUE=1 starts it from iteration 1's weights instead.
# A killed run resumes: rerun the same command (prepare reuses the features of the clients that
# had finished them, pretrain --resume continues from the last saved round). Before making any
# feature, prepare checks that WORK_DIR's disk holds the feature caches (56 MB per hour of audio
# for MFCC, 553 MB for a Base layer) and it logs hours of audio per minute as it goes.
# Results: WORK_DIR/save/server/ (iteration 1) and WORK_DIR/save_it2/server/best_global_model.pt
# (iteration 2), for s3prl's -u hubert_local -k.
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
"$fedhubert" pretrain --data-root "$work/data" --save-dir "$work/save" --recipe "$recipe" --num-server-rounds "$rounds" --resume "$@"
echo "iteration 1 global model for s3prl: $work/save/server/best_global_model.pt"
[ "${ITERATIONS:-2}" = 1 ] && exit 0

if [ "$recipe" = base ]; then layer=${LAYER:-6}; clusters=${CLUSTERS_IT2:-500}; recipe_it2=base_iter2
else layer=${LAYER:-1}; clusters=${CLUSTERS_IT2:-100}; recipe_it2=$recipe; fi
if [ ! -f "$work/data_it2/prepare.json" ]; then
    # shellcheck disable=SC2086  # SUBSETS is a list
    "$fedhubert" prepare --librispeech-root "$root" --subsets $SUBSETS --num-clients "$clients" \
        --out "$work/data_it2" --min-seconds "$min_seconds" --n-clusters "$clusters" \
        --features checkpoint --checkpoint "$work/save/server/checkpoint_best.pt" --layer "$layer"
fi
init=(); [ "${CONTINUE:-0}" = 1 ] && init=(--init-from "$work/save/server/checkpoint_best.pt")
"$fedhubert" pretrain --data-root "$work/data_it2" --save-dir "$work/save_it2" --recipe "$recipe_it2" \
    --num-server-rounds "${ROUNDS_IT2:-$rounds}" --resume "${init[@]}" "$@"
echo "iteration 2 global model for s3prl: $work/save_it2/server/best_global_model.pt"
