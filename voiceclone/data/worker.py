"""One input file -> its state and features: decode, clean, featurize (in a worker process).

The parent appends the features to the dataset's feature store and the state to its journal
(store.FeatureStore), which is how a later run knows the file is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.config import AudioConfig, PrepareConfig, Recipe

# Bump when voiceclone.audio changes what it computes: feature stores and datasets of other versions then rebuild.
FEATURES_VERSION = 1
PREPARE_KEYS = ("max_seconds", "min_seconds", "trim_top_db", "loudness_db")  # the settings features depend on
PIECE_KEYS = ("start", "end", "frames", "seconds", "voiced_frames", "voiced", "f0_median", "logf0_mean",
              "logf0_std")  # what a journal entry keeps of each utterance: _piece_meta writes them


def init_worker() -> None:
    torch.set_num_threads(1)  # one process per core: intra-op threads would only fight over the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool
    # forked, a worker inherits the parent's stop handler, which only sets a flag: the executor, when another
    # worker dies, stops the rest with SIGTERM, and waited for them forever (prepare hung, a core spinning)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hang-up is the parent's too
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker outliving a killed parent would hold the dataset's lock (inherited) forever: on Linux, ask
    the kernel to kill it when the parent goes, however the parent goes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


@dataclass
class FileState:
    """What is known of one input file: processed (its utterances' metadata, in `pieces`) or skipped (`reason`).

    Its line in the feature store's journal (to_json / from_json); `at` is the store frame where its
    utterances start, back to back, set when the store takes them.
    """

    key: str
    ok: bool = False
    path: str = ""
    seconds: float = 0.0  # decoded length
    pieces: list[dict[str, Any]] = field(default_factory=list)  # per utterance: start, end, frames, F0 statistics
    dropped: int = 0  # pieces dropped as unvoiced
    reason: str = ""
    detail: str = ""
    version: int = FEATURES_VERSION
    at: int = -1

    @property
    def frames(self) -> int:
        return sum(p["frames"] for p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        # shallow: dataclasses.asdict deep-copies every piece, a visible cost per file in `prepare`
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> "FileState | None":
        """An entry as written by to_json; None for anything else (an old or damaged entry is redone)."""
        if not isinstance(data, dict) or set(data) - {f.name for f in dataclasses.fields(cls)} or "key" not in data:
            return None
        # each piece's numbers become manifest rows and speaker statistics: one without them was a KeyError
        # traceback when the dataset was assembled again
        pieces = data.get("pieces", [])
        if not isinstance(pieces, list) or not all(isinstance(p, dict) and all(_number(p.get(k)) for k in PIECE_KEYS)
                                                   for p in pieces):
            return None
        return cls(**data)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def process_file(path: str, key: str, audio_cfg: AudioConfig,
                 prep: PrepareConfig) -> tuple[FileState, dict[str, np.ndarray] | None]:
    """Decode and featurize one file: (its state, its utterances' arrays back to back, or None when skipped).

    The state holds either its pieces or the reason it was skipped; bad input never raises, it comes back as a
    reason. The arrays: mel [frames, n_mels] float16, f0 and energy [frames] float32, audio [frames * hop]
    int16, as the store keeps them.
    """
    sr = audio_cfg.sample_rate
    meta = FileState(key, path=path)
    try:
        y = A.load_audio(path, sr)
        meta.seconds = len(y) / sr
        pieces, dropped = [], 0
        for start, _, piece in A.utterances(y, prep, sr, path):
            feats = A.features(piece, audio_cfg)
            if not (feats.f0 > 0).any():  # noise, a click, a breath: nothing to learn a voice from
                dropped += 1
                continue
            pieces.append((start, feats))
        if not pieces:
            raise A.AudioError(path, "no voiced speech")
    except A.AudioError as e:
        meta.reason, meta.detail = e.reason, e.detail
    except Exception as e:  # a file that breaks a library must not end a long run; it is reported instead
        meta.reason, meta.detail = "failed", f"{type(e).__name__}: {e}"[:200]
    else:
        meta.ok, meta.dropped, meta.pieces = True, dropped, [_piece_meta(start, f, audio_cfg) for start, f in pieces]
        feats = [f for _, f in pieces]
        return meta, {"mel": np.concatenate([f.mel for f in feats]).astype(np.float16),
                      "f0": np.concatenate([f.f0 for f in feats]),
                      "energy": np.concatenate([f.energy for f in feats]),
                      "audio": A.to_int16(np.concatenate([f.audio for f in feats]))}
    return meta, None


def _piece_meta(start: int, f: A.Features, cfg: AudioConfig) -> dict:
    voiced = f.f0[f.f0 > 0]
    logf = np.log(voiced.astype(np.float64))
    n = f.n_frames
    return {"start": int(start), "end": int(start + n * cfg.hop_length), "frames": n,
            "seconds": round(n * cfg.hop_length / cfg.sample_rate, 4),
            "voiced_frames": int(voiced.size), "voiced": round(voiced.size / max(n, 1), 4),
            "f0_median": round(A.voiced_median(f.f0) or 0.0, 2),
            "logf0_mean": round(float(logf.mean()), 5) if voiced.size else 0.0,
            "logf0_std": round(float(logf.std()), 5) if voiced.size else 0.0}


def features_hash(cfg: Recipe, version: Any = FEATURES_VERSION) -> str:
    """Hash of everything the stored features depend on (version: of the feature code, this one's by default)."""
    data = {"audio": dataclasses.asdict(cfg.audio), "prepare": {k: getattr(cfg.prepare, k) for k in PREPARE_KEYS},
            "version": version}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
