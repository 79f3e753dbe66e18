"""Speech and its phone alignment from one espeak-ng synthesis (libespeak-ng through ctypes).

libespeak-ng reports a phoneme event, with the sample at which the phoneme starts, for every
phoneme it speaks (``espeakINITIALIZE_PHONEME_EVENTS``); the audio comes from the same
synthesis callback, so the alignment is the synthesizer's own, not an estimate. Phonemes are
named in IPA (``espeakINITIALIZE_PHONEME_IPA``); pauses (unnamed phonemes) and the time before
the first and after the last phoneme are ``sil``.

The library keeps global state, and it carries over from one synthesis to the next (voice
flutter, noise): for the same bytes from the same input, speak once per fresh process, as the
``espeak-ng`` command does (the toy corpus forks a process per utterance).
"""

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

SILENCE = "sil"
# espeak-ng's speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS, INITIALIZE_PHONEME_IPA, INITIALIZE_DONT_EXIT = 0x0001, 0x0002, 0x8000
EVENT_LIST_TERMINATED, EVENT_END, EVENT_MSG_TERMINATED, EVENT_PHONEME = 0, 5, 6, 7
POS_CHARACTER, CHARS_UTF8 = 1, 1
PARAMETER_RATE, PARAMETER_PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceProperties(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Speech:
    """One utterance: int16 samples at ``sample_rate`` and the phones, each with the sample it starts at."""

    samples: np.ndarray
    sample_rate: int
    phones: List[Tuple[int, str]]  # (start sample, IPA phone or "sil"), in order; the last is "sil" at the end


class Synthesizer:
    """libespeak-ng in this process, with phoneme events in IPA."""

    def __init__(self):
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as err:
            raise RuntimeError(
                f"cannot load libespeak-ng ({err}); run `bash scripts/setup.sh` or `apt-get install espeak-ng`"
            ) from None
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA | INITIALIZE_DONT_EXIT
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
        if self.sample_rate <= 0:
            raise RuntimeError("libespeak-ng did not initialise (is espeak-ng-data installed?)")
        self._chunks: List[np.ndarray] = []
        self._phones: List[Tuple[int, str]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept referenced while the library may call it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_PHONEME:
                self._phones.append((event.sample, event.id.string.decode("utf-8", "replace") or SILENCE))
            elif event.type in (EVENT_END, EVENT_MSG_TERMINATED):
                self._phones.append((event.sample, SILENCE))
            index += 1
        return 0

    def select_voice(self, voice: str) -> None:
        """Select ``voice`` as the ``espeak-ng -v`` option does: by name, else as a language (``en-gb+f3``)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) == 0:
            return
        properties = _VoiceProperties(languages=voice.encode())
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(properties)) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")

    def speak(self, voice: str, pitch: int, speed: int, text: str) -> Speech:
        """Synthesize ``text`` with the espeak-ng ``voice`` (e.g. ``en-gb+f3``), ``pitch`` 0-99 and ``speed`` in wpm."""
        self.select_voice(voice)
        self.lib.espeak_SetParameter(PARAMETER_RATE, speed, 0)
        self.lib.espeak_SetParameter(PARAMETER_PITCH, pitch, 0)
        self._chunks, self._phones = [], []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return Speech(samples.astype(np.int16), self.sample_rate, sorted(self._phones, key=lambda p: p[0]))


@functools.lru_cache(maxsize=1)
def synthesizer() -> Synthesizer:
    """This process's synthesizer (loaded on first use)."""
    return Synthesizer()


def frame_phones(
    phones: List[Tuple[int, str]], sample_rate: int, num_samples_16k: int, hop: int, window: int = 400
) -> List[str]:
    """The phone at the centre of each frame of a 16 kHz utterance of ``num_samples_16k`` samples.

    Frames are those of the HuBERT labels at that rate: ``1 + (n - window) // hop`` frames,
    frame ``i`` centred at ``i * hop + window / 2`` (hop 160: 100 Hz, hop 320: 50 Hz).
    ``phones`` start at samples of ``sample_rate`` (the synthesizer's).
    """
    frames = max(0, 1 + (num_samples_16k - window) // hop)
    centres = (np.arange(frames) * hop + window / 2) / 16_000
    starts = np.array([start / sample_rate for start, _ in phones])
    names = [name for _, name in phones]
    index = np.searchsorted(starts, centres, side="right") - 1  # the last phone starting at or before the centre
    return [names[i] if i >= 0 else SILENCE for i in index]
