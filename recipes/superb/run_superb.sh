#!/usr/bin/env bash
# SUPERB downstream evaluation of a fedhubert checkpoint with s3prl's run_downstream:
# train the downstream model on the frozen upstream, then evaluate dev-best.ckpt on the test split.
#
#   recipes/superb/run_superb.sh TASK CKPT EXPDIR DATA... [-- EXTRA_RUN_DOWNSTREAM_ARGS]
#
#   TASK      DATA
#   ks        SPEECH_COMMANDS_TRAIN_ROOT SPEECH_COMMANDS_TEST_ROOT   (keyword spotting, Speech Commands v0.01)
#   ks_tiny   the same, a 100-step CPU configuration for toy data
#   ic        FLUENT_SPEECH_COMMANDS_ROOT                            (intent classification)
#   ic_tiny   the same, a 60-step CPU configuration for `fedhubert toy-data --superb`
#   sid       VOXCELEB1_ROOT IDEN_SPLIT_TXT                           (speaker identification; ROOT holds dev/wav)
#   sid_tiny  the same, a 60-step CPU configuration for `fedhubert toy-data --superb`
#   er        IEMOCAP_ROOT META_DATA_DIR [FOLD, default fold1]        (emotion recognition)
#   asr       LIBRISPEECH_ROOT BUCKET_DIR CHAR_DICT                   (speech recognition)
#   pr        LIBRISPEECH_ROOT LEXICON_FILE PHONEME_VOCAB             (phoneme recognition; needs s3prl's source tree)
#
# CKPT is any fedhubert checkpoint: SAVE/server/best_global_model.pt, checkpoint_best.pt, or a
# distilled student's. Runs `fedhubert downstream` (our hubert_local, torch >= 2.6 fixes); the
# test accuracy / error rate is printed at the end and kept in EXPDIR/test.log. An `-o` among the
# EXTRA arguments is merged with the data paths (s3prl's ",," separated overrides), not put in their place.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 4 ] || usage
task=$1 ckpt=$2 expdir=$3
shift 3
data=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do data+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=() overrides=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o|--override) overrides="${overrides:+$overrides,,}$2"; shift 2 ;;
        *) extra+=("$1"); shift ;;
    esac
done

fedhubert=fedhubert
[ -x "$here/../../.venv/bin/fedhubert" ] && fedhubert="$here/../../.venv/bin/fedhubert"

need() { [ "${#data[@]}" -ge "$1" ] || { echo "run_superb.sh $task needs: $2" >&2; exit 2; }; }
test_split=test
case "$task" in
    ks|ks_tiny)
        need 2 "SPEECH_COMMANDS_TRAIN_ROOT SPEECH_COMMANDS_TEST_ROOT"
        downstream=speech_commands
        paths="config.downstream_expert.datarc.speech_commands_root='${data[0]}',,config.downstream_expert.datarc.speech_commands_test_root='${data[1]}'" ;;
    ic|ic_tiny)
        need 1 "FLUENT_SPEECH_COMMANDS_ROOT"
        downstream=fluent_commands
        paths="config.downstream_expert.datarc.file_path='${data[0]}'" ;;
    sid|sid_tiny)
        need 2 "VOXCELEB1_ROOT IDEN_SPLIT_TXT"
        downstream=voxceleb1
        paths="config.downstream_expert.datarc.file_path='${data[0]}',,config.downstream_expert.datarc.meta_data='${data[1]}'" ;;
    er)
        need 2 "IEMOCAP_ROOT META_DATA_DIR [FOLD]"
        downstream=emotion
        paths="config.downstream_expert.datarc.root='${data[0]}',,config.downstream_expert.datarc.meta_data='${data[1]}',,config.downstream_expert.datarc.test_fold='${data[2]:-fold1}'" ;;
    asr|asr_tiny)
        need 3 "LIBRISPEECH_ROOT BUCKET_DIR CHAR_DICT"
        downstream=asr test_split=test-clean
        paths="config.downstream_expert.datarc.libri_root='${data[0]}',,config.downstream_expert.datarc.bucket_file='${data[1]}',,config.downstream_expert.datarc.dict_path='${data[2]}'" ;;
    pr)
        need 3 "LIBRISPEECH_ROOT LEXICON_FILE PHONEME_VOCAB"
        downstream=ctc
        "${fedhubert%fedhubert}python" -c "import s3prl.downstream.ctc.corpus.libriphone" 2>/dev/null || {
            echo "run_superb.sh pr: s3prl's downstream/ctc/corpus/ is missing (the pip package lacks it); install s3prl from its source tree (pip install -e <s3prl checkout>)" >&2; exit 2; }
        paths="config.downstream_expert.corpus.path='${data[0]}',,config.downstream_expert.corpus.lexicon=['${data[1]}'],,config.downstream_expert.text.vocab_file='${data[2]}'" ;;
    *) usage ;;
esac

config="$here/$task.yaml"
"$fedhubert" downstream -m train -u hubert_local -k "$ckpt" -d "$downstream" -c "$config" -p "$expdir" \
    -o "$paths${overrides:+,,$overrides}" "${extra[@]}"
best=$(ls "$expdir"/*-best.ckpt 2>/dev/null | head -n 1 || true)
if [ -z "$best" ]; then  # the dev metric never improved on its start: test the last state, as fedhubert superb does
    best=$(ls "$expdir"/states-*.ckpt | sort -t- -k2 -n | tail -n 1)
    echo "no *-best.ckpt in $expdir (the dev metric never improved): testing $best; train longer" >&2
fi
"$fedhubert" downstream -m evaluate -t "$test_split" -e "$best" "${extra[@]}" 2>&1 | tee "$expdir/test.log"
