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
#   er        IEMOCAP_ROOT META_DATA_DIR [FOLD, default fold1]        (emotion recognition; SUPERB scores the mean
#                                                                     of fold1..fold5: `fedhubert superb` runs all)
#   er_tiny   the same, a 40-step CPU configuration for `fedhubert toy-data --superb`
#   asr       LIBRISPEECH_ROOT BUCKET_DIR CHAR_DICT                   (speech recognition)
#   pr        LIBRISPEECH_ROOT PHONEME_VOCAB LEXICON...               (phoneme recognition; needs s3prl's source tree;
#                                                                     SUPERB reads both g2p lexicons of its ctc/lexicon)
#   pr_tiny   the same, a 60-step CPU configuration for `fedhubert toy-data --superb` (its pr/ folder)
#   asv       VOXCELEB1_ROOT DEV_TRIALS TEST_TRIALS                   (speaker verification; ROOT holds dev/wav and
#                                                                     test/wav; no dev set: every saved checkpoint is
#                                                                     tested, the best EER reported, as s3prl's
#                                                                     test_expdir.sh does)
#   asv_tiny  the same, a 40-step CPU configuration for `fedhubert toy-data --superb`
#   sd        TRAIN_DIR DEV_DIR TEST_DIR                              (speaker diarization, Kaldi folders with rttm;
#                                                                     DSCORE=<a dscore checkout> scores the RTTM)
#   sd_tiny   the same, a 40-step CPU configuration for `fedhubert toy-data --superb` (diarization/)
#   sf        SNIPS_ROOT SLOTS_FILE CHARACTER_VOCAB                  (slot filling; needs s3prl's source tree)
#   qbe       QUESST14_ROOT                                          (query by example: no training; each layer on
#                                                                     dev, the best one on test, QUESST's scoring)
#
# CKPT is any fedhubert checkpoint: SAVE/server/best_global_model.pt, checkpoint_best.pt, or a
# distilled student's. Runs `fedhubert downstream` (our hubert_local, torch >= 2.6 fixes); the
# test accuracy / error rate is printed at the end and kept in EXPDIR/test.log. An `-o` among the
# EXTRA arguments is merged with the data paths (s3prl's ",," separated overrides), not put in their place.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
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
python="${fedhubert%fedhubert}python"
missing=()
require() { [ -e "$1" ] || missing+=("$1: $2"); }
require_module() {  # with S3PRL_SOURCE, as fedhubert downstream will import it
    "$python" -c "from fedhubert_plugin.s3prl_source import use_source_tree; use_source_tree(); import $1" 2>/dev/null ||
        missing+=("Python module $1: $2")
}
stop_if_missing() {  # before any training: every missing file, module or tool, each with where it comes from
    [ "${#missing[@]}" -eq 0 ] && return
    { echo "run_superb.sh $task cannot start; provide:"; printf '  %s\n' "${missing[@]}"; } >&2
    exit 2
}
source_tree="s3prl's source tree, which the pip package lacks (S3PRL_SOURCE=<a checkout of s3prl 0.4.18>)"
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
    er|er_tiny)
        need 2 "IEMOCAP_ROOT META_DATA_DIR [FOLD]"
        downstream=emotion
        paths="config.downstream_expert.datarc.root='${data[0]}',,config.downstream_expert.datarc.meta_data='${data[1]}',,config.downstream_expert.datarc.test_fold='${data[2]:-fold1}'" ;;
    asr|asr_tiny)
        need 3 "LIBRISPEECH_ROOT BUCKET_DIR CHAR_DICT"
        downstream=asr test_split=test-clean
        paths="config.downstream_expert.datarc.libri_root='${data[0]}',,config.downstream_expert.datarc.bucket_file='${data[1]}',,config.downstream_expert.datarc.dict_path='${data[2]}'" ;;
    sd|sd_tiny)
        need 3 "TRAIN_DIR DEV_DIR TEST_DIR"
        downstream=diarization
        for dir in "${data[@]}"; do
            for file in wav.scp segments utt2spk reco2dur rttm; do require "$dir/$file" "a Kaldi data folder's $file"; done
        done
        if [ -n "${DSCORE:-}" ]; then
            require "$DSCORE/score.py" "dscore's score.py (DSCORE names a dscore checkout)"
            require_module intervaltree "dscore's requirement: .venv/bin/pip install -r $DSCORE/requirements.txt"
        fi
        paths="config.downstream_expert.loaderrc.train_dir='${data[0]}',,config.downstream_expert.loaderrc.dev_dir='${data[1]}',,config.downstream_expert.loaderrc.test_dir='${data[2]}'" ;;
    asv|asv_tiny)
        need 3 "VOXCELEB1_ROOT DEV_TRIALS TEST_TRIALS"
        downstream=sv_voxceleb1
        require "${data[0]}/dev/wav" "VoxCeleb1's dev speakers (trained on)"
        require "${data[0]}/test/wav" "VoxCeleb1's test speakers (the trials')"
        require "${data[1]}" "a dev trial list (s3prl's dev_meta_data/dev_meta_data.txt)"
        require "${data[2]}" "the test trial list (VoxCeleb1's veri_test2.txt, s3prl's voxceleb1_test_v2.txt)"
        paths="config.downstream_expert.datarc.file_path='${data[0]}',,config.downstream_expert.datarc.dev_meta_data='${data[1]}',,config.downstream_expert.datarc.test_meta_data='${data[2]}'" ;;
    pr|pr_tiny)
        need 3 "LIBRISPEECH_ROOT PHONEME_VOCAB LEXICON..."
        downstream=ctc
        require_module s3prl.downstream.ctc.corpus.libriphone "downstream/ctc/corpus/libriphone.py of $source_tree"
        require "${data[0]}" "the LibriSpeech root"
        require "${data[1]}" "the phoneme vocabulary (s3prl's downstream/ctc/vocab/phoneme.txt)"
        lexicons=()
        for lexicon in "${data[@]:2}"; do
            require "$lexicon" "a phone lexicon (s3prl's downstream/ctc/lexicon/)"
            lexicons+=("'$lexicon'")
        done
        paths="config.downstream_expert.corpus.path='${data[0]}',,config.downstream_expert.corpus.lexicon=[$(IFS=,; echo "${lexicons[*]}")],,config.downstream_expert.text.vocab_file='${data[1]}'" ;;
    sf)
        need 3 "SNIPS_ROOT SLOTS_FILE CHARACTER_VOCAB"
        downstream=ctc
        require_module s3prl.downstream.ctc.corpus.snips "downstream/ctc/corpus/snips.py of $source_tree"
        require "${data[0]}" "the audio of SUPERB's SF (SNIPS spoken by synthetic voices, with train/ valid/ test/)"
        require "${data[1]}" "slots.txt of SUPERB's SF data"
        require "${data[2]}" "the character vocabulary (s3prl's downstream/ctc/vocab/character.txt)"
        paths="config.downstream_expert.corpus.path='${data[0]}',,config.downstream_expert.text.slots_file='${data[1]}',,config.downstream_expert.text.vocab_file='${data[2]}'" ;;
    qbe)
        need 1 "QUESST14_ROOT"
        require_module dtw "pip install dtw-python (s3prl's quesst14_dtw aligns with it)"
        require_module lxml "pip install lxml (s3prl's quesst14_dtw writes its XML)"
        for file in language_key_utterances.lst language_key_dev.lst language_key_eval.lst score-TWV-Cnxe.sh \
            groundtruth_quesst14_dev groundtruth_quesst14_eval; do
            require "${data[0]}/scoring/$file" "part of the QUESST 2014 database (quesst14Database/scoring)"
        done ;;
    *) usage ;;
esac

stop_if_missing
config="$here/$task.yaml"

if [ "$task" = qbe ]; then  # no training: DTW on each layer's features; the best layer on dev is scored on test
    root=$(cd "${data[0]}" && pwd)
    qbe_run() {  # SPLIT LAYER OUT: s3prl's detections of the split, scored by QUESST's own script into OUT/score.out
        "$fedhubert" downstream -m evaluate -t "$1" -u hubert_local -k "$ckpt" -l "$2" -d quesst14_dtw -c "$config" \
            -p "$3" -o "config.downstream_expert.datarc.dataset_root='$root'${overrides:+,,$overrides}" "${extra[@]}"
        local truth=groundtruth_quesst14_$([ "$1" = dev ] && echo dev || echo eval)
        (cd "$root/scoring" && ./score-TWV-Cnxe.sh "$(cd "$3" && pwd)" "$truth" -10)
    }
    max_twv() { grep -oE "maxTWV: *[-0-9.]+" "$1/score.out" | grep -oE "[-0-9.]+$"; }
    layers=$("$python" -c "from upstream.hubert_local.hubconf import hubert_local; import torch; print(len(hubert_local('$ckpt')([torch.zeros(16000)])['hidden_states']))")
    best_layer="" best_twv=""
    for layer in $(seq 0 $((layers - 1))); do
        [ -f "$expdir/dev/$layer/score.out" ] || qbe_run dev "$layer" "$expdir/dev/$layer"
        twv=$(max_twv "$expdir/dev/$layer")
        echo "dev layer $layer: maxTWV $twv" | tee -a "$expdir/dev.log"
        if [ -z "$best_twv" ] || awk "BEGIN { exit !($twv > $best_twv) }"; then best_layer=$layer best_twv=$twv; fi
    done
    qbe_run test "$best_layer" "$expdir/test"
    echo "test (layer $best_layer, the best on dev): maxTWV $(max_twv "$expdir/test")" | tee "$expdir/test.log"
    exit 0
fi

"$fedhubert" downstream -m train -u hubert_local -k "$ckpt" -d "$downstream" -c "$config" -p "$expdir" \
    -o "$paths${overrides:+,,$overrides}" "${extra[@]}"
if [ "$downstream" = sv_voxceleb1 ]; then  # no dev set: test every saved checkpoint, report the best EER
    for state in $(cd "$expdir" && ls states-*.ckpt | sort -t- -k2 -n); do
        "$fedhubert" downstream -m evaluate -t test -e "$expdir/$state" "${extra[@]}" 2>&1 | tee "$expdir/test_${state%.ckpt}.log"
        cp "$expdir/test_predict.txt" "$expdir/test_predict_${state%.ckpt}.txt"
    done
    best=$(cd "$expdir" && grep -H "sv-voxceleb1/test-EER:" test_states-*.log | sort -t: -k3 -g | head -n 1)
    state=${best%%.log:*}
    cp "$expdir/test_predict_${state#test_}.txt" "$expdir/test_predict.txt"  # the predictions SUPERB scores
    echo "test EER of the best saved checkpoint (${state#test_}): ${best##*: }" | tee "$expdir/test.log"
    exit 0
fi
best=$(ls "$expdir"/*-best.ckpt "$expdir"/best-states-*.ckpt 2>/dev/null | head -n 1 || true)
if [ -z "$best" ]; then  # the dev metric never improved on its start: test the last state, as fedhubert superb does
    best=$(ls "$expdir"/states-*.ckpt | sort -t- -k2 -n | tail -n 1)
    echo "no *-best.ckpt in $expdir (the dev metric never improved): testing $best; train longer" >&2
fi
"$fedhubert" downstream -m evaluate -t "$test_split" -e "$best" "${extra[@]}" 2>&1 | tee "$expdir/test.log"
if [ "$downstream" = diarization ]; then  # the RTTM of the predictions, scored by dscore (SUPERB's DER) when given
    rttm=$("$python" -c "from fedhubert_plugin.downstream import write_rttm; print(write_rttm('$expdir'))")
    echo "RTTM of the test predictions (s3prl's make_rttm.py, threshold 0.5, median 11): $rttm"
    if [ -n "${DSCORE:-}" ]; then
        "$python" "$DSCORE/score.py" -r "${data[2]}/rttm" -s "$rttm" | tee "$expdir/dscore.log"
    else
        echo "DER as SUPERB scores it: DSCORE=<a dscore checkout> $0 ... (dscore's score.py -r ${data[2]}/rttm -s $rttm)"
    fi
fi
