"""`fedhubert toy-data`: LibriSpeech and Speech Commands layouts, determinism, s3prl compatibility."""

import hashlib
from pathlib import Path

import soundfile as sf

from fedhubert_plugin.cli import main
from fedhubert_plugin.toy_data import DEV_SUBSET, TRAIN_SUBSET, write_toy_data
from fedhubert_plugin.toy_keywords import COMMAND_WORDS


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "toy_data.json"):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_librispeech_layout(toy_corpus):
    for subset, speakers in ((TRAIN_SUBSET, 8), (DEV_SUBSET, 2)):
        speaker_dirs = sorted((toy_corpus / "LibriSpeech" / subset).iterdir())
        assert len(speaker_dirs) == speakers
        for speaker_dir in speaker_dirs:
            (chapter_dir,) = speaker_dir.iterdir()
            flacs = sorted(chapter_dir.glob("*.flac"))
            assert len(flacs) == 6
            transcript = chapter_dir / f"{speaker_dir.name}-{chapter_dir.name}.trans.txt"
            ids = [line.split(" ", 1)[0] for line in transcript.read_text().splitlines()]
            assert ids == [f.stem for f in flacs]
            for flac in flacs:
                assert flac.stem.startswith(f"{speaker_dir.name}-{chapter_dir.name}-")
                info = sf.info(flac)
                assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
                assert 1.5 < info.duration < 12


def test_speakers_sound_different(toy_corpus):
    """Each speaker has its own voice: mean pitch-related spectra differ between speakers."""
    import numpy as np

    centroids = []
    for speaker_dir in sorted((toy_corpus / "LibriSpeech" / TRAIN_SUBSET).iterdir()):
        wav, sr = sf.read(next(speaker_dir.rglob("*.flac")))
        spectrum = np.abs(np.fft.rfft(wav[: sr * 1]))
        centroids.append(float((spectrum * np.arange(len(spectrum))).sum() / spectrum.sum()))
    assert len({round(c, -1) for c in centroids}) >= 6


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(speakers=2, dev_speakers=1, utterances_per_speaker=2, keyword_speakers=2, keyword_repeats=1)
    write_toy_data(tmp_path / "a", seed=3, **kwargs)
    write_toy_data(tmp_path / "b", seed=3, **kwargs)
    write_toy_data(tmp_path / "c", seed=4, **kwargs)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_refuses_non_empty_folder_unless_forced(tmp_path, capsys):
    out = tmp_path / "toy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = [
        "toy-data",
        "--out",
        str(out),
        "--speakers",
        "1",
        "--dev-speakers",
        "1",
        "--utterances",
        "1",
        "--keyword-speakers",
        "2",
        "--keyword-repeats",
        "1",
    ]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "--force" in error and str(out) in error
    assert (out / "keep.txt").exists()
    assert main(args + ["--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert (out / "LibriSpeech" / TRAIN_SUBSET).is_dir()


def test_s3prl_speech_commands_reads_it_unchanged(toy_corpus):
    from s3prl.downstream.speech_commands.dataset import (
        CLASSES,
        SpeechCommandsDataset,
        SpeechCommandsTestingDataset,
    )
    from s3prl.downstream.speech_commands.expert import split_dataset

    root = toy_corpus / "speech_commands" / "train"
    test_root = toy_corpus / "speech_commands" / "test"
    train_list, valid_list = split_dataset(root)
    assert train_list and valid_list
    train = SpeechCommandsDataset(train_list, speech_commands_root=root)
    classes = {CLASSES[label] for label in (train[i][1] for i in range(len(train)))}
    assert classes == set(CLASSES)  # 10 commands, _unknown_ (other words) and _silence_ (background noise)
    wav, label, _ = train[0]
    assert wav.ndim == 1 and len(wav) == 16000
    test = SpeechCommandsTestingDataset(speech_commands_test_root=test_root)
    test_classes = {class_name for class_name, _ in test.data}
    assert test_classes == set(COMMAND_WORDS) | {"_unknown_", "_silence_"}
    for i in range(len(test)):
        wav, label, _ = test[i]
        assert len(wav) == 16000
