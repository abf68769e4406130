"""The one audio front end: decoding and cleaning (io), the mel function (mel), F0 (pitch), and all
features of an utterance on one frame grid (featurize).

`prepare`, the training losses, `synthesize` and `evaluate` all call these functions, so a mel computed
anywhere in the project is the same mel. The frame grid: frame i covers the hop [i*hop, (i+1)*hop) at its
centre, and `n_frames = len(audio) // hop`; `features()` crops the audio to exactly `n_frames * hop`
samples, the length the vocoder produces. Callers use the names below (`from voiceclone import audio as A`);
the submodules say where each lives.
"""

from voiceclone.audio.featurize import Features, features
from voiceclone.audio.io import (AUDIO_EXTENSIONS, LOUDNESS_FRAME, SILENCE_PEAK, AudioError, check_file, clean,
                                 declick, frame_peaks, frame_rms, from_int16, is_audio_file, load_audio, loudness_gain,
                                 normalize_loudness, outlier_ceiling, quiet_decoder, resample, sf_path, split_at_quiet,
                                 split_evenly, stream_audio, to_int16, trim_bounds, utterances)
from voiceclone.audio.mel import LOG_FLOOR, log_mel, mel_of_spectrogram, spectrogram
from voiceclone.audio.pitch import f0, f0_ac, f0_praat, semitones_to_ratio, voiced_median
from voiceclone.melscale import mel_band_edges, mel_filterbank

__all__ = ["AUDIO_EXTENSIONS", "LOG_FLOOR", "LOUDNESS_FRAME", "SILENCE_PEAK", "AudioError", "Features", "check_file",
           "clean", "declick", "f0", "f0_ac", "f0_praat", "features", "frame_peaks", "frame_rms", "from_int16",
           "is_audio_file", "load_audio", "log_mel", "loudness_gain", "mel_band_edges", "mel_filterbank",
           "mel_of_spectrogram", "normalize_loudness", "outlier_ceiling", "quiet_decoder", "resample",
           "semitones_to_ratio", "sf_path", "spectrogram", "split_at_quiet", "split_evenly", "stream_audio",
           "to_int16", "trim_bounds", "utterances", "voiced_median"]
