"""The evaluation report: its file, the identities it records, and how each of its figures is measured
and named (units, definitions). Shared by the full evaluation (evaluate.py), the comparison (compare.py)
and the history-only watch (watch.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from voiceclone import __version__
from voiceclone import audio as A
from voiceclone.config import AudioConfig, differences
from voiceclone.data.store import Split
from voiceclone.errors import UserError, writing
from voiceclone.files import tmp_beside, write_atomic
from voiceclone.evaluation import metrics
from voiceclone.inference import timbre
from voiceclone.inference.bundle import Model
from voiceclone.inference.synthesize import Reference
from voiceclone.run import STAGES, best_path

REPORT_FORMAT = "voiceclone-evaluation"
REPORT_VERSION = 1
PROFILE_CLIPS = 4  # utterances averaged into a speaker's profile: enough to smooth one clip's content out
MCD_ORDER = 13

UNITS = {
    "f0_rmse_cents": "cents", "f0_rmse_hz": "Hz", "vuv_error": "fraction of frames",
    "gpe": "fraction of voiced frames", "f0_corr": "Pearson r", "mcd_db": "dB",
    "speaker_similarity": "cosine", "similarity_to_target": "cosine", "similarity_to_source": "cosine",
    "nearer_target": "fraction of pairs", "pitch_shift": "semitones",
    "secs_to_target": "cosine (Resemblyzer GE2E)", "secs_to_source": "cosine (Resemblyzer GE2E)",
    "wer_out": "word error rate vs the source's transcript", "cer_out": "character error rate vs the source's transcript",
    "wer_out_pooled": "word error rate over all words (n = words)",
    "cer_out_pooled": "character error rate over all characters (n = characters)",
    "dnsmos_ovrl": "DNSMOS OVRL (1-5)", "dnsmos_sig": "DNSMOS SIG (1-5)", "dnsmos_bak": "DNSMOS BAK (1-5)",
}
VALIDATION_UNITS = {"mel": "log-mel L1", "f0_rmse_cents": "cents"}
DEFINITIONS = {
    "f0": "frame by frame on the project's frame grid; RMSE (cents, Hz), gross pitch error (|f_out / f_req - 1| "
          f"> {metrics.GROSS_ERROR}) and correlation over frames voiced in both the requested contour and the "
          "output's F0 (audio.f0, Praat autocorrelation); V/UV error over all frames",
    "mcd": f"mel-cepstral distortion in dB, (10 / ln 10) sqrt(2 sum (c_d - c_d')^2) over c1..c{MCD_ORDER} (c0 "
           "excluded) of the mel-cepstrum c_d = (1/N) sum_n ln S_n cos(pi d (n + 1/2) / N) of the natural-log mel, "
           "frames compared one to one (aligned by construction, no DTW)",
    "speaker_similarity": "cosine of speaker embeddings of the output and the speaker's profile (mean embedding "
                          f"of up to {PROFILE_CLIPS} other utterances, excluding the converted utterance and the "
                          "reference clip)",
    "nearer_target": "share of pairs whose output is more similar to the target's profile than to the "
                     "source speaker's",
    "requested_f0": "reconstruction and copy synthesis: the source's F0 from the dataset; zero-shot: the "
                    "source's F0 times the register ratio (target median F0 / source median F0) synthesis used",
    "independent": "judges outside the project, never used in training (evaluation/judges.py): Resemblyzer's GE2E "
                   "speaker encoder (SECS, the scale Seed-VC reports), faster-whisper (WER and CER of the output "
                   "against the same recogniser's transcript of the source) and DNSMOS P.835",
    "validation": "stages.validation.validation_losses on the stage's fixed middle segments of the split, as in training",
}
F0_KEYS = {"rmse_cents": "f0_rmse_cents", "rmse_hz": "f0_rmse_hz", "vuv_error": "vuv_error", "gpe": "gpe",
           "corr": "f0_corr"}


def write_report(report: Mapping[str, Any], path: Path | str) -> Path:
    """report.json, strict JSON: a non-finite number (a NaN loss) is written as null. Written beside and renamed
    over the path, so a full disk or a kill leaves the previous report whole, never half of the new one."""
    path = Path(path)
    data = (json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n").encode()
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, tmp_beside(path))
    return path


def json_ready(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return json_ready(x.item())
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def header() -> dict[str, Any]:
    return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, "voiceclone_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(path: Path, model: Model) -> dict[str, Any]:
    """Where a model came from: a bundle's hash, or a run folder's best checkpoints' hashes, and the epochs."""
    path = Path(path)
    if path.is_dir():
        files = [best_path(path, stage) for stage in STAGES]
        hashes = {str(f.relative_to(path)): sha256(f) for f in files if f.is_file()}
        kind = "run"
    else:
        hashes, kind = {path.name: sha256(path)}, "bundle"
    return {"source": str(path), "kind": kind, "sha256": hashes, "recipe": model.recipe.name,
            "acoustic_epoch": model.meta.get("acoustic_epoch"), "vocoder_epoch": model.meta.get("vocoder_epoch")}


def check_audio(a: AudioConfig, b: AudioConfig, what: str) -> None:
    diff = differences(a, b, "audio")
    if diff:
        raise UserError(f"{what} ({'; '.join(diff)})")


def measure(out: np.ndarray, requested_f0: np.ndarray, cfg: AudioConfig,
            source_mel: np.ndarray | None = None) -> dict[str, Any]:
    """Score one output waveform [T] (float, the source's length): F0 against the contour it was asked for
    (`audio.f0` once) and, given the source's log-mel [frames, n_mels], MCD of the output's mel against it,
    frame by frame (the output keeps the source's frames, so no alignment is needed)."""
    f0 = metrics.f0_metrics(requested_f0, A.f0(out, cfg))
    row = {F0_KEYS[k]: f0[k] for k in F0_KEYS} | {"voiced_frames": f0["voiced_frames"], "frames": f0["frames"]}
    if source_mel is not None:
        with torch.inference_mode():
            mel = A.log_mel(torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)), cfg).T.numpy()
        row["mcd_db"] = metrics.mcd(source_mel, mel, MCD_ORDER)["mcd_db"]
    return row


def by_speaker(split: Split) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(split)):
        groups[split.speaker(i)].append(i)
    return dict(sorted(groups.items()))


def cosine(embedding: np.ndarray, profile: np.ndarray | None) -> float | None:
    """Similarity to a speaker's profile; None for a speaker with no other clip to build one from."""
    return metrics.cosine_similarity(embedding, profile) if profile is not None else None


def summaries(rows: list[dict[str, Any]], keys) -> dict[str, dict[str, Any]]:
    return {k: {**metrics.summarize([r.get(k) for r in rows]), "unit": UNITS[k]} for k in keys}


def dataset_reference(model: Model, split: Split, clips: list[int]) -> Reference:
    """The reference a model gets from stored clips of a split: their mean speaker vector, length and register."""
    device = model.device
    stored = [np.asarray(split.mel(j), dtype=np.float32).T for j in clips]  # [n_mels, T_j] each
    mels = [torch.from_numpy(m.copy()).to(device) for m in stored]
    f0 = np.concatenate([np.asarray(split.f0(j)) for j in clips])
    seconds = sum(split.n_frames(j) for j in clips) / model.recipe.audio.frame_rate
    env = timbre.envelope(np.concatenate(stored, 1), f0)
    return Reference(model.acoustic.embed(mels), seconds, A.voiced_median(f0), [], env)
