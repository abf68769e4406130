"""`voiceclone evaluate`: what a trained model does on a split, measured as DESIGN.md section 9 says.

Sections of the report, each figure with its unit:
- validation: each stage's validation loss on the split, by `trainer.validation_losses` on the stage's own
  fixed validation segments (the definition training uses, so the numbers compare with the history).
- reconstruction: every utterance (up to `max_utterances`, spread over the speakers) converted by
  `synthesize.convert` with a *different* utterance of its own speaker as the reference and its own pitch
  (no register shift). F0 of the output against the source's F0, MCD against the source's mel (frames
  aligned by construction: the output has the source's length), speaker similarity to the speaker.
- copy_synthesis: the same utterances' dataset mel and F0 through the vocoder alone; the floor that F0 and
  MCD figures of the full pipeline can reach.
- zero_shot: `pairs` conversions of a source utterance into a different speaker of the split (the source
  F0 moved to the target's register by the ratio of median F0s, as synthesis does): similarity of the output
  to the target and to the source speaker, the share of pairs nearer the target, F0 against the requested
  (shifted) contour.
- convergence: the detector's status per stage from the run's history (a bundle has none; the report says so).

A speaker's "profile" is the mean embedding of up to PROFILE_CLIPS of its utterances, never the utterance
being converted nor the reference clip the model was given, so similarity is judged on other recordings of
the voice. Embeddings come from the model's own speaker encoder, or from an external one (another bundle or
run folder) on its own audio front end; the report names which. `watch` reads a run's histories alone, so a
run can be followed while it trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from voiceclone import __version__
from voiceclone import audio as A
from voiceclone import metrics
from voiceclone.bundle import Model, load_checkpoint, load_model
from voiceclone.config import AudioConfig, ConvergenceConfig, read_recipe_json
from voiceclone.convergence import Assessment, assess, should_stop
from voiceclone.curves import HISTORY_FILE, plot_curves, run_histories
from voiceclone.data.dataset import reference_pool
from voiceclone.data.store import Dataset, Split
from voiceclone.errors import UserError
from voiceclone.models.acoustic import AcousticModel
from voiceclone.synthesize import Reference, convert
from voiceclone.train.tasks import AcousticTask, VocoderTask
from voiceclone.train.trainer import validation_losses

REPORT_FORMAT = "voiceclone-evaluation"
REPORT_VERSION = 1
SPLITS = ("train", "val", "unseen")
DEFAULT_PAIRS = 40
DEFAULT_MAX_UTTERANCES = 40
PROFILE_CLIPS = 4  # utterances averaged into a speaker's profile: enough to smooth one clip's content out
MCD_ORDER = 13
CURVE_ROWS = 10  # epochs shown per stage by `watch`

UNITS = {
    "f0_rmse_cents": "cents", "f0_rmse_hz": "Hz", "vuv_error": "fraction of frames",
    "gpe": "fraction of voiced frames", "f0_corr": "Pearson r", "mcd_db": "dB",
    "speaker_similarity": "cosine", "similarity_to_target": "cosine", "similarity_to_source": "cosine",
    "nearer_target": "fraction of pairs", "pitch_shift": "semitones",
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
    "validation": "trainer.validation_losses on the stage's fixed middle segments of the split, as in training",
}
F0_KEYS = {"rmse_cents": "f0_rmse_cents", "rmse_hz": "f0_rmse_hz", "vuv_error": "vuv_error", "gpe": "gpe",
           "corr": "f0_corr"}


# ---------------------------------------------------------------------------------------------------
# Entry point.


def evaluate(model: Path | str | None = None, data: Path | str | None = None, run: Path | str | None = None,
             split: str = "unseen", pairs: int = DEFAULT_PAIRS, max_utterances: int = DEFAULT_MAX_UTTERANCES,
             out: Path | str | None = None, plot: Path | str | None = None,
             speaker_encoder: Path | str | None = None, device: str | None = None, seed: int = 0,
             baseline: Path | str | None = None, console: Console | None = None) -> dict[str, Any]:
    """The `voiceclone evaluate` command. With `data`: the full evaluation of `model` (or `run`), or with
    `baseline` its comparison against that model; without `data`: `watch(run)`, the convergence status
    and curves from the history alone. Returns the report."""
    console = console or Console(stderr=True)
    if baseline is not None:
        if data is None or (model or run) is None:
            raise UserError("--baseline needs --model MODEL and --data DATASET")
        return compare_models(model if model is not None else run, baseline, data,
                              split="val" if split == "unseen" else split, max_utterances=max_utterances,
                              out=out, speaker_encoder=speaker_encoder, device=device, console=console)
    if data is None:
        target = run if run is not None else model
        if target is None:
            raise UserError("evaluate needs --model MODEL --data DATASET, or --run RUN alone for the training "
                            "status from its history")
        if Path(target).is_file():
            raise UserError(f"{target}: a bundle has no training history; evaluate it with --data DATASET")
        return watch(target, out=out, plot=plot, console=console)
    if model is not None and run is not None and Path(model).resolve() != Path(run).resolve():
        raise UserError(f"--model {model} and --run {run} name different models; give one of them")
    return evaluate_model(model if model is not None else run, data, split=split, pairs=pairs,
                          max_utterances=max_utterances, out=out, plot=plot, speaker_encoder=speaker_encoder,
                          device=device, seed=seed, console=console)


def evaluate_model(model_path: Path | str, data: Path | str, split: str = "unseen", pairs: int = DEFAULT_PAIRS,
                   max_utterances: int = DEFAULT_MAX_UTTERANCES, out: Path | str | None = None,
                   plot: Path | str | None = None, speaker_encoder: Path | str | None = None,
                   device: str | None = None, seed: int = 0, console: Console | None = None) -> dict[str, Any]:
    """Every section of the report for one model on one split of a dataset (see the module docstring)."""
    console = console or Console(stderr=True)
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if pairs < 1 or max_utterances < 1:
        raise UserError("--pairs and --max-utterances must be at least 1")
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    clock = _Clock()
    model_path, data = Path(model_path), Path(data)
    dev = torch.device(device or "cpu")
    dataset = Dataset.open(data)
    model = load_model(model_path, need_vocoder=True, device=dev)
    _check_audio(model.recipe.audio, dataset.audio, f"{data}: prepared with another audio config than the "
                                                    f"model {model_path}")
    splits = {name: dataset.split(name) for name in SPLITS}
    speakers = _by_speaker(splits[split])
    if len(speakers) < 2:
        raise UserError(f"{data}: split '{split}' has {len(speakers)} speaker(s); evaluation needs at least 2 "
                        f"(zero-shot pairs are of different speakers); choose another --split")
    convergence = _model_convergence(model_path)  # before the long part: a run without history fails now
    identity = _identity(model_path, model)
    verifier = (Verifier.from_path(speaker_encoder, dev) if speaker_encoder is not None
                else Verifier(model.acoustic, model.recipe.audio, {"which": "own", **identity}))
    clock.lap("load")

    validation = validation_report(model, dataset, split, dev)
    clock.lap("validation")
    ev = _Evaluator(model, verifier, splits, split, seed)
    recon, copy = ev.reconstruction(max_utterances, clock)
    zero_shot = ev.zero_shot(pairs)
    clock.lap("zero_shot")

    report: dict[str, Any] = {
        **_header(),
        "split": split,
        "model": identity,
        "dataset": {"path": str(data), "fingerprint": dataset.fingerprint, "split": split,
                    "utterances": len(splits[split]), "speakers": len(speakers)},
        "speaker_encoder": verifier.identity,
        "definitions": DEFINITIONS,
        "validation": validation,
        "reconstruction": recon,
        "copy_synthesis": copy,
        "zero_shot": zero_shot,
        "convergence": convergence["report"],
    }
    if plot is not None:
        report["plot"] = _plot(convergence, plot, console)
    report["timing_seconds"] = clock.laps | {"total": clock.total()}
    print_report(report, console)
    if out is not None:
        report["out"] = str(write_report(report, out))
        console.print(f"wrote {out}", highlight=False)
    return report


COMPARED = {"mcd_db": "lower", "f0_rmse_cents": "lower", "speaker_similarity": "higher"}


def compare_models(model_path: Path | str, baseline_path: Path | str, data: Path | str, split: str = "val",
                   max_utterances: int = DEFAULT_MAX_UTTERANCES, out: Path | str | None = None,
                   speaker_encoder: Path | str | None = None, device: str | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """A fine-tuned model against the zero-shot base it came from, on the same held-out utterances.

    Each utterance is rebuilt from its own content and pitch in its own voice: by the fine-tuned model
    from its learned voice (or, without one, from the speaker's training clips), by the base from the
    speaker's training clips, zero-shot. Lower MCD and F0 error and higher similarity to the speaker's
    training clips (judged by the base's speaker encoder unless --speaker-encoder names another) win.
    """
    console = console or Console(stderr=True)
    dev = torch.device(device or "cpu")
    dataset = Dataset.open(data)
    split_data = dataset.split(split)
    if len(split_data) == 0:
        raise UserError(f"{data}: split '{split}' is empty; the comparison needs held-out utterances")
    train = dataset.split("train")
    models = {"base": load_model(baseline_path, device=dev), "fine-tuned": load_model(model_path, device=dev)}
    for name, m in models.items():
        _check_audio(m.recipe.audio, dataset.audio, f"{data}: prepared with another audio config than the {name} model")
    verifier = (Verifier.from_path(speaker_encoder, dev) if speaker_encoder is not None else
                Verifier(models["base"].acoustic, dataset.audio, {"which": "base", **_identity(Path(baseline_path),
                                                                                                models["base"])}))
    cfg = dataset.audio
    clips = _by_speaker(train)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    voices: dict[str, tuple[np.ndarray, dict[str, Reference]]] = {}  # per speaker: profile, each model's voice
    for i in range(min(len(split_data), max_utterances)):
        speaker = split_data.speaker(i)
        own = clips.get(speaker, [])[:PROFILE_CLIPS]
        if not own:
            continue
        if speaker not in voices:
            profile = np.mean([verifier.embed(train.audio(j).astype(np.float32) / 32768.0, cfg.sample_rate)
                               for j in own], axis=0)
            mels = [torch.from_numpy(np.asarray(train.mel(j), np.float32).T.copy()).to(dev) for j in own]
            voices[speaker] = (profile, {
                name: Reference(m.acoustic.voice.detach() if m.acoustic.voice is not None else m.acoustic.embed(mels),
                                0.0, None, []) for name, m in models.items()})
        profile, refs = voices[speaker]
        y = split_data.audio(i).astype(np.float32) / 32768.0
        mel, f0 = np.array(split_data.mel(i), dtype=np.float32), np.array(split_data.f0(i), dtype=np.float32)
        for name, m in models.items():
            blocks, _ = convert(m, y, refs[name], keep_pitch=True)
            wav = np.concatenate(list(blocks))
            sim = metrics.cosine_similarity(verifier.embed(wav, cfg.sample_rate), profile)
            rows[name].append({"utterance": f"{split}/{split_data.rows[i].get('id', i)}", "speaker": speaker,
                               **measure(wav, f0, cfg, mel), "speaker_similarity": sim})
    if not rows["base"]:
        raise UserError(f"{data}: no held-out utterance has a speaker with training clips to compare against")
    summary = {name: _summaries(r, COMPARED) for name, r in rows.items()}
    verdicts = {}
    for key, direction in COMPARED.items():
        b, f = summary["base"][key]["mean"], summary["fine-tuned"][key]["mean"]
        if b is None or f is None:
            verdicts[key] = None
        else:
            verdicts[key] = "fine-tuned" if (f < b if direction == "lower" else f > b) else "base"
    wins = sum(v == "fine-tuned" for v in verdicts.values())
    better = "fine-tuned" if wins * 2 > len(verdicts) else "base"
    report = {**_header(), "kind": "comparison", "split": split,
              "model": _identity(Path(model_path), models["fine-tuned"]),
              "baseline": _identity(Path(baseline_path), models["base"]),
              "dataset": {"path": str(data), "fingerprint": dataset.fingerprint, "split": split,
                          "utterances": len(rows["base"])},
              "speaker_encoder": verifier.identity, "definitions": DEFINITIONS,
              "metrics": summary, "better_per_metric": verdicts, "better": better, "items": rows}
    table = Table(title=f"fine-tuned vs zero-shot base on {len(rows['base'])} held-out utterances ({split})")
    for col in ("metric", "base (zero-shot)", "fine-tuned", "better"):
        table.add_column(col)
    for key in COMPARED:
        table.add_row(f"{key} ({UNITS[key]})", _fmt(summary["base"][key]["mean"]),
                      _fmt(summary["fine-tuned"][key]["mean"]), verdicts[key] or "-")
    console.print(table)
    console.print(f"[bold]{better}[/] is better on {max(wins, len(verdicts) - wins)} of {len(verdicts)} measures.",
                  highlight=False)
    if out is not None:
        report["out"] = str(write_report(report, out))
    return report


def watch(run: Path | str, out: Path | str | None = None, plot: Path | str | None = None,
          console: Console | None = None) -> dict[str, Any]:
    """Convergence status and curves of a run from its histories alone (no dataset, no model loaded), so a
    run still training can be followed."""
    console = console or Console(stderr=True)
    run = Path(run)
    convergence = _run_convergence(run)
    report: dict[str, Any] = {**_header(), "run": str(run), "convergence": convergence["report"]}
    _print_curves(convergence, console)
    _print_convergence(report["convergence"], console)
    if plot is not None:
        report["plot"] = _plot(convergence, plot, console)
    if out is not None:
        report["out"] = str(write_report(report, out))
        console.print(f"wrote {out}", highlight=False)
    return report


def write_report(report: Mapping[str, Any], path: Path | str) -> Path:
    """report.json, strict JSON: a non-finite number (a NaN loss) is written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# Identities and checks.


def _header() -> dict[str, Any]:
    return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, "voiceclone_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: Path, model: Model) -> dict[str, Any]:
    """Where a model came from: a bundle's hash, or a run folder's best checkpoints' hashes, and the epochs."""
    path = Path(path)
    if path.is_dir():
        files = [path / stage / "best.pt" for stage in ("acoustic", "vocoder")]
        hashes = {str(f.relative_to(path)): sha256(f) for f in files if f.is_file()}
        kind = "run"
    else:
        hashes, kind = {path.name: sha256(path)}, "bundle"
    return {"source": str(path), "kind": kind, "sha256": hashes, "recipe": model.recipe.name,
            "acoustic_epoch": model.meta.get("acoustic_epoch"), "vocoder_epoch": model.meta.get("vocoder_epoch")}


def _check_audio(a: AudioConfig, b: AudioConfig, what: str) -> None:
    diff = [f"audio.{k}: {v!r} vs {getattr(b, k)!r}" for k, v in dataclasses.asdict(a).items() if v != getattr(b, k)]
    if diff:
        raise UserError(f"{what} ({'; '.join(diff)})")


# ---------------------------------------------------------------------------------------------------
# Speaker embeddings for similarity.


@dataclasses.dataclass
class Verifier:
    """The speaker-embedding function similarity is judged with: a model's speaker encoder behind that model's
    own audio front end, fed with waveforms (resampled to its rate when it differs)."""

    acoustic: AcousticModel
    audio: AudioConfig
    identity: dict[str, Any]

    @classmethod
    def from_path(cls, path: Path | str, device: torch.device) -> "Verifier":
        """An external encoder: another voiceclone bundle or run folder (never an unpickled file)."""
        path = Path(path)
        model = load_model(path, need_vocoder=False, device=device)
        return cls(model.acoustic, model.recipe.audio, {"which": "external", **_identity(path, model),
                                                        "sample_rate": model.recipe.audio.sample_rate})

    def embed(self, y: np.ndarray, sample_rate: int) -> np.ndarray:
        """y [T] float in [-1, 1] at `sample_rate` -> embedding [S]."""
        y = A.resample(y, sample_rate, self.audio.sample_rate)
        device = next(self.acoustic.parameters()).device
        with torch.inference_mode():
            mel = A.log_mel(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(device), self.audio)
            return self.acoustic.embed([mel]).float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Validation loss, as training defines it.


def validation_report(model: Model, dataset: Dataset, split: str, device: torch.device) -> dict[str, Any]:
    """Each stage's validation values on `split`, by the trainer's own function and segments."""
    out: dict[str, Any] = {}
    acoustic = AcousticTask(model.recipe, dataset, device, speakers=list(model.meta["acoustic"]["speakers"]))
    acoustic.model.load_state_dict(model.acoustic.state_dict())
    finetuned = _vocoder_finetuned(model)
    vocoder = VocoderTask(model.recipe, dataset, device, acoustic=model.acoustic if finetuned else None)
    vocoder.generator.load_state_dict(model.vocoder.state_dict())
    for task in (acoustic, vocoder):
        segments = task.val_segments(split)
        entry: dict[str, Any] = {"monitor": task.monitor, "segments": 0 if segments is None else len(segments)}
        if segments is not None:
            values = validation_losses(task, segments, task.train_cfg.batch_size, bf16=task.train_cfg.bf16)
            entry["losses"] = {name: {"value": v, "unit": VALIDATION_UNITS.get(name, "as in training")}
                               for name, v in values.items()}
        out[task.stage] = entry
    out["vocoder"]["input"] = "acoustic model output" if finetuned else "dataset mel"
    out["vocoder"]["finetuned_on_acoustic"] = finetuned
    return out


def _vocoder_finetuned(model: Model) -> bool | None:
    """Whether the vocoder was trained on the acoustic model's outputs: its validation input then was those."""
    source = Path(model.source)
    if source.is_dir():
        return bool(load_checkpoint(source / "vocoder" / "best.pt")["meta"].get("finetuned_on_acoustic", False))
    # a bundle keeps the acoustic stage's meta only; the vocoder is then validated on dataset mels
    return model.meta.get("vocoder", {}).get("finetuned_on_acoustic")


# ---------------------------------------------------------------------------------------------------
# Reconstruction, copy synthesis, zero-shot conversion.


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


def _by_speaker(split: Split) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(split)):
        groups[split.speaker(i)].append(i)
    return dict(sorted(groups.items()))


class _Evaluator:
    """Conversions of one split's utterances and their measurements; embeddings are computed once each."""

    def __init__(self, model: Model, verifier: Verifier, splits: Mapping[str, Split], split: str, seed: int) -> None:
        self.model, self.verifier = model, verifier
        self.cfg = model.recipe.audio
        self.split = splits[split]
        # the reference pool training validates with: seen speakers' references include their training clips
        self.pool = (reference_pool(self.split, splits["train"]) if split == "val" else reference_pool(self.split))
        self.speakers = _by_speaker(self.split)
        self.rng = np.random.default_rng(seed)
        self.device = next(model.acoustic.parameters()).device
        self._embeddings: dict[tuple[int, int], np.ndarray] = {}

    # --- data ---------------------------------------------------------------------------------------

    @staticmethod
    def _audio(split: Split, i: int) -> np.ndarray:
        return split.audio(i).astype(np.float32) / 32768.0

    @staticmethod
    def _key(split: Split, i: int) -> str:
        return f"{split.name}/{split.rows[i].get('id', i)}"

    def _embedding(self, split: Split, i: int) -> np.ndarray:
        key = (id(split), i)
        if key not in self._embeddings:
            self._embeddings[key] = self.verifier.embed(self._audio(split, i), self.cfg.sample_rate)
        return self._embeddings[key]

    def _profile(self, speaker: str, exclude: list[tuple[Split, int]]) -> np.ndarray | None:
        clips = [(sp, j) for sp, j in self.pool.get(speaker, [])
                 if not any(sp is xs and j == xj for xs, xj in exclude)][:PROFILE_CLIPS]
        return np.mean([self._embedding(sp, j) for sp, j in clips], axis=0) if clips else None

    def _reference(self, split: Split, j: int) -> Reference:
        mel = torch.from_numpy(np.asarray(split.mel(j), dtype=np.float32).T.copy()).to(self.device)
        f0 = np.asarray(split.f0(j))
        voiced = f0[f0 > 0]
        return Reference(self.model.acoustic.embed([mel]), split.n_frames(j) / self.cfg.frame_rate,
                         float(np.median(voiced)) if voiced.size else None, [])

    def _other_clip(self, speaker: str, exclude: tuple[Split, int]) -> tuple[Split, int] | None:
        clips = [(sp, j) for sp, j in self.pool.get(speaker, []) if not (sp is exclude[0] and j == exclude[1])]
        return clips[int(self.rng.integers(len(clips)))] if clips else None

    def _order(self) -> list[int]:
        """Utterances of the split taking one speaker after another, so any prefix covers the speakers evenly."""
        rounds = itertools.zip_longest(*self.speakers.values())
        return [i for group in rounds for i in group if i is not None]

    # --- measuring ----------------------------------------------------------------------------------

    def _convert(self, i: int, ref: Reference, keep_pitch: bool) -> tuple[np.ndarray, float]:
        blocks, info = convert(self.model, self._audio(self.split, i), ref, keep_pitch=keep_pitch)
        return np.concatenate(list(blocks)), 2.0 ** (info["pitch_shift_semitones"] / 12.0)


    # --- sections -----------------------------------------------------------------------------------

    def reconstruction(self, limit: int, clock: "_Clock") -> tuple[dict[str, Any], dict[str, Any]]:
        """Each utterance rebuilt through the whole pipeline (reference: another clip of its speaker) and
        through the vocoder alone (copy synthesis). Returns both sections."""
        recon, copy, skipped = [], [], []
        copy_seconds = 0.0
        for i in self._order():
            if len(recon) >= limit:
                break
            s, speaker = self.split, self.split.speaker(i)
            ref_clip = self._other_clip(speaker, (s, i))
            if ref_clip is None:
                skipped.append(self._key(s, i))
                continue
            mel, f0 = np.array(s.mel(i), dtype=np.float32), np.array(s.f0(i), dtype=np.float32)  # own copies
            profile = self._profile(speaker, [(s, i), ref_clip])
            item = {"utterance": self._key(s, i), "speaker": speaker, "reference": self._key(*ref_clip),
                    "seconds": s.n_frames(i) / self.cfg.frame_rate}
            out, _ = self._convert(i, self._reference(*ref_clip), keep_pitch=True)
            sim = _cosine(self.verifier.embed(out, self.cfg.sample_rate), profile)
            recon.append(item | measure(out, f0, self.cfg, mel) | {"speaker_similarity": sim})

            started = time.perf_counter()
            with torch.inference_mode():
                wav = self.model.vocoder(torch.from_numpy(mel.T.copy()).unsqueeze(0).to(self.device),
                                         torch.from_numpy(f0).unsqueeze(0).to(self.device))[0]
            wav = wav.float().cpu().numpy()
            sim = _cosine(self.verifier.embed(wav, self.cfg.sample_rate), profile)
            copy.append(item | measure(wav, f0, self.cfg, mel) | {"speaker_similarity": sim})
            copy_seconds += time.perf_counter() - started
        clock.lap("reconstruction", minus=copy_seconds)
        clock.laps["copy_synthesis"] = round(copy_seconds, 3)
        keys = (*F0_KEYS.values(), "mcd_db", "speaker_similarity")
        common = {"utterances": len(recon), "max_utterances": limit, "speakers": len({r["speaker"] for r in recon}),
                  "skipped_no_other_clip": skipped, "mcd": {"order": MCD_ORDER, "c0": "excluded",
                                                            "alignment": "frame-aligned by construction (no DTW)"}}
        return ({**common, "pipeline": "synthesize.convert, own speaker's other clip as reference, own pitch",
                 "metrics": _summaries(recon, keys), "items": recon},
                {**common, "pipeline": "vocoder(dataset mel, dataset F0)", "metrics": _summaries(copy, keys),
                 "items": copy})

    def zero_shot(self, n_pairs: int) -> dict[str, Any]:
        """`n_pairs` conversions of a split utterance into another speaker of the split."""
        order, names = self._order(), list(self.speakers)
        items = []
        for k in range(n_pairs):
            i = order[k % len(order)]
            s, source_speaker = self.split, self.split.speaker(i)
            others = [n for n in names if n != source_speaker]
            target = others[int(self.rng.integers(len(others)))]
            ref_clip = self._other_clip(target, (s, i))
            out, ratio = self._convert(i, self._reference(*ref_clip), keep_pitch=False)
            requested = np.asarray(s.f0(i), dtype=np.float32) * ratio
            emb = self.verifier.embed(out, self.cfg.sample_rate)
            to_target = _cosine(emb, self._profile(target, [ref_clip]))
            to_source = _cosine(emb, self._profile(source_speaker, [(s, i)]))
            nearer = None if to_target is None or to_source is None else to_target > to_source
            items.append({"source": self._key(s, i), "source_speaker": source_speaker, "target_speaker": target,
                          "reference": self._key(*ref_clip), "pitch_shift": float(12 * np.log2(ratio)),
                          "similarity_to_target": to_target, "similarity_to_source": to_source,
                          "nearer_target": nearer} | measure(out, requested, self.cfg))
        keys = ("similarity_to_target", "similarity_to_source", *F0_KEYS.values(), "pitch_shift")
        decided = [r["nearer_target"] for r in items if r["nearer_target"] is not None]
        nearer = {"share": float(np.mean(decided)) if decided else None, "n": len(decided),
                  "unit": UNITS["nearer_target"]}
        return {"pairs": len(items), "speakers": len(names), "pipeline": "synthesize.convert, register moved to "
                "the target's (ratio of median F0s)", "metrics": {"nearer_target": nearer, **_summaries(items, keys)},
                "items": items}


def _cosine(embedding: np.ndarray, profile: np.ndarray | None) -> float | None:
    """Similarity to a speaker's profile; None for a speaker with no other clip to build one from."""
    return metrics.cosine_similarity(embedding, profile) if profile is not None else None


def _summaries(rows: list[dict[str, Any]], keys) -> dict[str, dict[str, Any]]:
    return {k: {**metrics.summarize([r.get(k) for r in rows]), "unit": UNITS[k]} for k in keys}


# ---------------------------------------------------------------------------------------------------
# Convergence from the histories.


def _model_convergence(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return _run_convergence(path)
    return {"histories": {}, "assessments": {}, "stops": {},
            "report": {"available": False, "reason": f"{path.name} is a bundle: it carries no training history; "
                                                     "evaluate the run folder for convergence"}}


def _stage_dir(run: Path, stage: str) -> Path:
    return run if (run / HISTORY_FILE).is_file() else run / stage


def _convergence_config(stage_dir: Path) -> ConvergenceConfig:
    """The convergence settings the stage was trained with (its config.json), else the defaults."""
    path = stage_dir / "config.json"
    return read_recipe_json(path).convergence if path.is_file() else ConvergenceConfig()


def _run_convergence(run: Path) -> dict[str, Any]:
    histories = run_histories(run)
    assessments: dict[str, Assessment] = {}
    stops: dict[str, int | None] = {}
    stages: dict[str, Any] = {}
    for stage, rows in histories.items():
        cfg = _convergence_config(_stage_dir(run, stage))
        a = assess(rows, cfg, monitor="unseen_loss")
        assessments[stage] = a
        numbered = [_epoch(row, k) for k, row in enumerate(rows, 1)]
        # where early stopping fires (or would have, with it off): the first epoch the detector says stop
        stop_epoch = next((numbered[k - 1] for k in range(1, len(rows) + 1)
                           if should_stop(assess(rows[:k], cfg, monitor="unseen_loss"))), None)
        last_epoch = max(numbered) if numbered else None
        stopped_early = stop_epoch is not None and stop_epoch == last_epoch
        stops[stage] = stop_epoch if stopped_early else None
        stages[stage] = {"status": a.status, "monitor": a.monitor, "best_epoch": a.best_epoch,
                         "best_value": a.best_value, "epochs": a.evidence["epochs"], "last_epoch": last_epoch,
                         "stop_epoch": stop_epoch, "stopped_early": stopped_early, "evidence": a.evidence,
                         "recommendation": a.recommendation, "summary": a.summary(),
                         "config": dataclasses.asdict(cfg)}
    return {"histories": histories, "assessments": assessments, "stops": stops,
            "report": {"available": True, "run": str(run), "stages": stages}}


def _plot(convergence: dict[str, Any], path: Path | str, console: Console) -> dict[str, Any]:
    if not convergence["histories"]:
        console.print(f"[yellow]no curves:[/] {convergence['report']['reason']}", highlight=False)
        return {"written": False, "reason": convergence["report"]["reason"]}
    written = plot_curves(convergence["histories"], convergence["assessments"], path, convergence["stops"])
    console.print(f"wrote {written}", highlight=False)
    return {"written": True, "path": str(written)}


# ---------------------------------------------------------------------------------------------------
# Terminal output.


def _fmt(x: Any, decimals: int | None = None) -> str:
    """A number to 4 significant digits (or to `decimals` places), '-' when there is none."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if not isinstance(x, float):
        return str(x)
    return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def _decimals(x: float) -> int:
    """Places that show 4 significant digits of x (none for |x| >= 1000, at most 4: the JSON has the rest)."""
    if not math.isfinite(x) or x == 0:
        return 3
    return int(min(4, max(0, 3 - math.floor(math.log10(abs(x))))))


def print_report(report: Mapping[str, Any], console: Console) -> None:
    model, ds = report["model"], report["dataset"]
    enc = report["speaker_encoder"]
    table = Table(title=f"{model['source']} on {ds['path']} [{report['split']}]", title_justify="left")
    for col in ("metric", "mean ± std", "median", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right", overflow="fold")  # wrap, never cut
    table.add_column("unit")
    table.add_row("[bold]validation[/]")
    for stage, entry in report["validation"].items():
        for name, v in entry.get("losses", {}).items():
            table.add_row(f"  {stage} {name}", _fmt(v["value"]), "", str(entry["segments"]), v["unit"])
    for section in ("reconstruction", "copy_synthesis", "zero_shot"):
        table.add_section()
        table.add_row(f"[bold]{section}[/]")
        for name, m in report[section]["metrics"].items():
            if "share" in m:
                table.add_row(f"  {name}", _fmt(m["share"]), "", str(m["n"]), m["unit"])
                continue
            places = _decimals(max(abs(m["mean"]), m["std"])) if m["mean"] is not None else None
            spread = "-" if m["mean"] is None else f"{_fmt(m['mean'], places)} ± {_fmt(m['std'], places)}"
            table.add_row(f"  {name}", spread, _fmt(m["median"], places), str(m["n"]), m["unit"])
    console.print(table)
    console.print(f"speaker encoder: {enc['which']} ({enc['source']}); MCD order {MCD_ORDER}, c0 excluded, "
                  f"frame-aligned; {report['zero_shot']['pairs']} zero-shot pairs", highlight=False)
    _print_convergence(report["convergence"], console)


def _print_convergence(conv: Mapping[str, Any], console: Console) -> None:
    if not conv.get("available"):
        console.print(f"convergence: not available ({conv['reason']})", highlight=False)
        return
    table = Table(title=f"convergence: {conv['run']}", title_justify="left")
    for col in ("stage", "epochs", "status", "best @ epoch", "monitor", "early stop"):
        # fold, not no_wrap: on a narrow or non-terminal console no_wrap cut cells to "…" and blanked headers
        table.add_column(col, overflow="fold")
    for stage, s in conv["stages"].items():
        best = "-" if s["best_epoch"] is None else f"{_fmt(s['best_value'])} @ {s['best_epoch']}"
        stop = "-" if s["stop_epoch"] is None else f"{s['stop_epoch']}" + ("" if s["stopped_early"] else " (if on)")
        table.add_row(stage, str(s["epochs"]), s["status"], best, s["monitor"], stop)
    console.print(table)
    for stage, s in conv["stages"].items():
        console.print(f"{stage}: {s['summary']}", highlight=False, overflow="fold")


def _print_curves(convergence: Mapping[str, Any], console: Console) -> None:
    """The last CURVE_ROWS epochs of each stage as numbers: the curve a terminal can show."""
    for stage, rows in convergence["histories"].items():
        best = convergence["assessments"][stage].best_epoch
        table = Table(title=f"{stage}: last {min(CURVE_ROWS, len(rows))} of {len(rows)} epochs", title_justify="left")
        for col in ("epoch", "train_loss", "val_loss", "unseen_loss", "status"):
            table.add_column(col, justify="right" if col != "status" else "left", overflow="fold")
        for row in rows[-CURVE_ROWS:]:
            mark = " *" if row.get("epoch") == best else ""
            table.add_row(f"{row.get('epoch', '?')}{mark}", *(_fmt(_number(row.get(k))) for k in
                                                              ("train_loss", "val_loss", "unseen_loss")),
                          str(row.get("status", "")))
        console.print(table)
    console.print("* best epoch", highlight=False)


def _epoch(row: Mapping[str, Any], position: int) -> int:
    """A row's epoch; rows without one are numbered by position, as the detector numbers them."""
    epoch = row.get("epoch")
    return int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else position


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


# ---------------------------------------------------------------------------------------------------
# Small helpers.


class _Clock:
    """Seconds per section of the evaluation, for the report's timing."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str, minus: float = 0.0) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last - minus, 3)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def _json_ready(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _json_ready(x.item())
    if isinstance(x, Mapping):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    return x
