"""One input file -> a cache entry: decode, clean, featurize (in a worker process); and reading entries back.

A cache entry is <key>.bin (the arrays of all the file's utterances, back to back, as CACHE_ARRAYS lists them)
and <key>.json (its FileState, written after the arrays: it marks the entry complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.config import AudioConfig, PrepareConfig, Recipe
from voiceclone.data.discover import Source
from voiceclone.data.store import Dataset
from voiceclone.errors import UserError

# Bump when voiceclone.audio changes what it computes: caches and datasets of other versions then rebuild.
FEATURES_VERSION = 1
# A cache entry's <key>.bin: these arrays of all the file's utterances, back to back (frames from <key>.json)
CACHE_ARRAYS = (("mel", np.float16), ("f0", np.float32), ("energy", np.float32), ("audio", np.int16))
PREPARE_KEYS = ("max_seconds", "min_seconds", "trim_top_db", "loudness_db")  # the settings features depend on


def init_worker() -> None:
    torch.set_num_threads(1)  # one process per core: intra-op threads would only fight over the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool
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

    Written as a cache entry's <key>.json by the worker, read back from it, or rebuilt from the dataset being
    updated (then `previous` says where its utterances are stored there).
    """

    key: str
    ok: bool = False
    path: str = ""
    seconds: float | None = 0.0  # decoded length; None when reused from the previous dataset
    pieces: list[dict[str, Any]] = field(default_factory=list)  # per utterance: start, end, frames, F0 statistics
    dropped: int = 0  # pieces dropped as unvoiced
    reason: str = ""
    detail: str = ""
    previous: list[tuple[str, int]] | None = None  # (split, index) of each piece in the previous dataset
    version: int = FEATURES_VERSION

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "previous"}

    @classmethod
    def from_json(cls, data: Any) -> "FileState | None":
        """An entry as written by to_json; None for anything else (an old or damaged entry is redone)."""
        if not isinstance(data, dict) or set(data) - {f.name for f in dataclasses.fields(cls)} or "key" not in data:
            return None
        return cls(**data)


def process_file(path: str, key: str, cache_dir: str, audio_cfg: AudioConfig, prep: PrepareConfig) -> FileState:
    """Decode and featurize one file into cache entry `key` (<key>.bin arrays, <key>.json metadata).

    Returns the file's state: either its pieces or the reason it was skipped. Bad input never raises: it comes
    back as a reason.
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
        with open(Path(cache_dir) / f"{key}.bin", "wb") as fh:
            for name, dtype in CACHE_ARRAYS:
                data = [A.to_int16(f.audio) if name == "audio" else getattr(f, name) for _, f in pieces]
                fh.write(np.ascontiguousarray(np.concatenate(data), dtype=dtype).data)
        meta.ok, meta.dropped, meta.pieces = True, dropped, [_piece_meta(start, f, audio_cfg) for start, f in pieces]
    # The .json, written after the arrays, marks the entry complete; a run killed halfway leaves no .json or an
    # unparsable one, and the file is simply processed again. No fsync or rename: they cost more than the
    # features of a short file, and the cache only saves time.
    with open(Path(cache_dir) / f"{key}.json", "w") as fh:
        json.dump(meta.to_json(), fh)
    return meta


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


def features_hash(cfg: Recipe) -> str:
    """Hash of everything the stored features depend on."""
    data = {"audio": dataclasses.asdict(cfg.audio), "prepare": {k: getattr(cfg.prepare, k) for k in PREPARE_KEYS},
            "version": FEATURES_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def piece_arrays(s: Source, m: FileState, cache: Path, previous: Dataset | None, hop: int,
                  n_mels: int) -> list[dict[str, np.ndarray]]:
    """The stored arrays of each of a file's utterances: from its cache entry or from the previous dataset."""
    if m.previous is not None:
        return [previous.split(name).read(i) for name, i in m.previous]
    frames = sum(p["frames"] for p in m.pieces)
    sizes = {"mel": frames * n_mels, "f0": frames, "energy": frames, "audio": frames * hop}
    raw = np.fromfile(cache / f"{m.key}.bin", dtype=np.uint8)
    if raw.size != sum(sizes[k] * np.dtype(t).itemsize for k, t in CACHE_ARRAYS):  # only a machine crash does this
        (cache / f"{m.key}.json").unlink(missing_ok=True)
        raise UserError(f"{s.path}: its cache entry was damaged and is removed; run prepare again")
    data, at = {}, 0
    for name, dtype in CACHE_ARRAYS:
        data[name] = np.frombuffer(raw, dtype=dtype, count=sizes[name], offset=at)
        at += sizes[name] * np.dtype(dtype).itemsize
    data["mel"] = data["mel"].reshape(frames, n_mels)
    out, a = [], 0
    for piece in m.pieces:
        b = a + piece["frames"]
        out.append({"mel": data["mel"][a:b], "f0": data["f0"][a:b], "energy": data["energy"][a:b],
                    "audio": data["audio"][a * hop : b * hop]})
        a = b
    return out
