"""What SUPERB fixes per task, as ``fedhubert superb`` uses it: HuBERT Base's published figures, each figure's
label, where `fedhubert toy-data --superb` puts each task's data, and the files SUPERB scores with the place
s3prl's ``submit/submit.py`` gives them in ``predict.zip``."""

# HuBERT Base in the SUPERB paper (Yang et al., Interspeech 2021, arXiv:2105.01051): accuracy or error rate, in %
HUBERT_BASE_PUBLISHED = {
    "pr": 5.41,
    "ks": 96.30,
    "ic": 98.34,
    "sid": 81.42,
    "er": 64.92,
    "asr": 6.42,
    "asr_lm": 4.79,
    "asv": 5.11,
    "sd": 5.88,
}
METRICS = {
    "accuracy": "test accuracy (%)",
    "wer": "test WER (%), no LM",
    "wer_lm": "test WER (%), KenLM",
    "per": "test PER (%)",
    "eer": "test EER (%), best saved checkpoint",
    "der": "test DER (%), s3prl's frame-level (SUPERB's: dscore on the RTTM)",
}
# where `fedhubert toy-data --superb` puts each task's data, in SUPERB_TASKS' order
TOY_DATA = {
    "pr": ("LibriSpeech", "pr/phoneme.txt", "pr/lexicon.txt"),
    "ks": ("speech_commands/train", "speech_commands/test"),
    "ic": ("fluent_speech_commands",),
    "sid": ("voxceleb1", "voxceleb1/iden_split.txt"),
    "er": ("iemocap", "iemocap/meta_data"),
    "asr": ("LibriSpeech", "asr/len_for_bucket", "asr/char.dict"),
    "asv": ("voxceleb1", "voxceleb1/veri_dev.txt", "voxceleb1/veri_test.txt"),
    "sd": ("diarization/train", "diarization/dev", "diarization/test"),
}
# the files (or folders) of each task's experiment that SUPERB scores, and where s3prl's submit/submit.py puts them
# ({fold}: ER's)
PREDICTIONS = {
    "pr": [("test-hyp.ark", "pr_public/predict.ark")],
    "ks": [("test_predict.txt", "ks_public/predict.txt")],
    "ic": [("test_predict.csv", "ic_public/predict.csv")],
    "sid": [("test_predict.txt", "sid_public/predict.txt")],
    "er": [("test_fold{fold}_predict.txt", "er_fold{fold}_public/predict.txt")],
    "asr": [("test-clean-noLM-hyp.ark", "asr_public/predict.ark")],
    "asr_lm": [("test-clean-LM-hyp.ark", "asr_lm_public/predict.ark")],
    "asv": [("test_predict.txt", "sv_public/predict.txt")],
    "sd": [("scoring/predictions", "sd_public/scoring/predictions"), ("frame_shift", "sd_public/frame_shift")],
}
ALL_TASKS = ("pr", "ks", "ic", "sid", "er", "asr", "qbe", "sf", "asv", "sd")  # SUPERB's ten
