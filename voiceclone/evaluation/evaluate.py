"""`voiceclone evaluate`: what a trained model does on a split, measured as docs/architecture.md says.

Sections of the report, each figure with its unit:
- validation: each stage's validation loss on the split, by `stages.validation.validation_losses` on the stage's own
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
- independent: where the `eval` extra is installed (or `judges=True`), the zero-shot outputs and the copy
  syntheses judged by models outside the project (Resemblyzer SECS, Whisper WER, DNSMOS; evaluation/judges.py).
- convergence: the detector's status per stage from the run's history (a bundle has none; the report says so).

A speaker's "profile" is the mean embedding of up to PROFILE_CLIPS of its utterances, never the utterance
being converted nor the reference clip the model was given, so similarity is judged on other recordings of
the voice. Embeddings come from the model's own speaker encoder, or from an external one (another bundle or
run folder) on its own audio front end; the report names which. `watch` reads a run's histories alone, so a
run can be followed while it trains.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from rich.console import Console

from voiceclone import audio as A
from voiceclone.data.dataset import reference_pool
from voiceclone.data.store import SPLITS, Dataset, Split
from voiceclone.errors import UserError, check_output, parse_device, stderr_console
from voiceclone.evaluation import DEFAULT_MAX_UTTERANCES, DEFAULT_PAIRS, metrics
from voiceclone.evaluation import judges as J
from voiceclone.evaluation.compare import compare_models
from voiceclone.evaluation.verifier import Verifier
from voiceclone.threads import torch_threads
from voiceclone.evaluation.printing import print_report
from voiceclone.evaluation.report import (DEFINITIONS, F0_KEYS, MCD_ORDER, PROFILE_CLIPS, REPORT_FORMAT, UNITS,
                                          VALIDATION_UNITS, by_speaker, check_audio, cosine, dataset_reference, header,
                                          identity, measure, summaries, write_report)
from voiceclone.evaluation.watch import model_convergence, plot_report, watch
from voiceclone.inference.bundle import Model, load_model
from voiceclone.inference.synthesize import Reference, convert
from voiceclone.stages.tasks import AcousticTask, VocoderTask
from voiceclone.stages.validation import validation_losses


def evaluate(model: Path | str | None = None, data: Path | str | None = None, run: Path | str | None = None,
             split: str | None = None, pairs: int = DEFAULT_PAIRS, max_utterances: int = DEFAULT_MAX_UTTERANCES,
             out: Path | str | None = None, plot: Path | str | None = None,
             speaker_encoder: Path | str | None = None, device: str | None = None, seed: int = 0,
             baseline: Path | str | None = None, judges: bool | None = None, asr_model: str | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """The `voiceclone evaluate` command. With `data`: the full evaluation of `model` (or `run`), or with
    `baseline` its comparison against that model; without `data`: `watch(run)`, the convergence status
    and curves from the history alone. split: None = unseen for an evaluation, val for a comparison (which
    needs each speaker's training clips, and unseen speakers have none). Returns the report."""
    console = console or stderr_console()
    for path, suffix in ((out, None), (plot, ".png")):  # before the long part: a bad output path fails now
        if path is not None:
            check_output(path, suffix=suffix)
    if out is not None and plot is not None and Path(out).resolve() == Path(plot).resolve():
        raise UserError(f"--out and --plot are both {out}: the report would overwrite the figure")
    inputs = (("--model", model), ("--run", run), ("--data", data), ("--baseline", baseline),
              ("--speaker-encoder", speaker_encoder))
    for option, path in (("--out", out), ("--plot", plot)):
        if path is not None:
            _check_not_an_input(option, Path(path), inputs)
    if baseline is not None:
        if data is None or (model or run) is None:
            raise UserError("--baseline needs --model MODEL and --data DATASET")
        if plot is not None:  # the comparison draws no curves: the plot was silently not written
            raise UserError("--plot draws a run's training curves; it does not go with --baseline")
        if split == "unseen":  # was silently replaced by val, the default's fallback
            raise UserError("--split unseen: the comparison measures each speaker against their training clips, "
                            "and unseen speakers have none; use --split val (the default with --baseline)")
        if split is not None and split not in SPLITS:  # was "unknown split", naming no option
            raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
        if max_utterances < 1:  # compared none, and blamed the dataset for having no held-out utterance
            raise UserError(f"--max-utterances {max_utterances}: must be at least 1")
        return compare_models(model if model is not None else run, baseline, data,
                              split=split or "val", max_utterances=max_utterances,
                              out=out, speaker_encoder=speaker_encoder, device=device, console=console)
    if data is None:
        target = run if run is not None else model
        if target is None:
            raise UserError("evaluate needs --model MODEL --data DATASET, or --run RUN alone for the training "
                            "status from its history")
        if Path(target).is_file():
            raise UserError(f"{target}: a bundle has no training history; evaluate it with --data DATASET")
        if run is None:  # --model alone looked like a full evaluation that printed only the curves
            console.print(f"--model {target} without --data: the training status from its history only; add "
                          f"--data DATASET to measure the model", style="yellow", highlight=False, markup=False)
        return watch(target, out=out, plot=plot, console=console)
    if model is not None and run is not None and Path(model).resolve() != Path(run).resolve():
        raise UserError(f"--model {model} and --run {run} name different models; give one of them")
    return evaluate_model(model if model is not None else run, data, split=split or "unseen", pairs=pairs,
                          max_utterances=max_utterances, out=out, plot=plot, speaker_encoder=speaker_encoder,
                          device=device, seed=seed, judges=judges, asr_model=asr_model, console=console)


def _check_not_an_input(option: str, path: Path, inputs) -> None:
    """The report or figure must not replace what is evaluated: --out model.safetensors replaced the bundle with
    the report, --out RUN/acoustic/history.jsonl the run's history, exit 0. An earlier report or figure may
    be replaced."""
    target = os.path.realpath(path)
    for name, given in inputs:
        if given is None:
            continue
        source = os.path.realpath(given)
        inside = os.path.isdir(source) and target.startswith(source.rstrip(os.sep) + os.sep)
        if target == source or (inside and os.path.isfile(target) and not _earlier_output(Path(target))):
            raise UserError(f"{option} {path}: would replace {'a file of ' if inside else ''}the {name} {given}; "
                            f"choose another {option}")


def _earlier_output(path: Path) -> bool:
    """Whether `path` is a report or figure `evaluate` wrote before (which a new one may replace): no model or
    dataset file is a PNG."""
    if path.suffix.lower() == ".png":
        return True
    if path.suffix != ".json":
        return False
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("format") == REPORT_FORMAT


def evaluate_model(model_path: Path | str, data: Path | str, split: str = "unseen", pairs: int = DEFAULT_PAIRS,
                   max_utterances: int = DEFAULT_MAX_UTTERANCES, out: Path | str | None = None,
                   plot: Path | str | None = None, speaker_encoder: Path | str | None = None,
                   device: str | None = None, seed: int = 0, judges: bool | None = None,
                   asr_model: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Every section of the report for one model on one split of a dataset (see the module docstring).
    `judges`: True requires the independent judges, False skips them, None uses them when installed."""
    console = console or stderr_console()
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if pairs < 1 or max_utterances < 1:
        raise UserError("--pairs and --max-utterances must be at least 1")
    dev = parse_device(device or "cpu")
    clock = _Clock()
    model_path, data = Path(model_path), Path(data)
    dataset = Dataset.open(data)
    model = load_model(model_path, need_vocoder=True, device=dev)
    check_audio(model.recipe.audio, dataset.audio, f"{data}: prepared with another audio config than the "
                                                    f"model {model_path}")
    splits = {name: dataset.split(name) for name in SPLITS}
    speakers = by_speaker(splits[split])
    if len(speakers) < 2:
        raise UserError(f"{data}: split '{split}' has {len(speakers)} speaker(s); evaluation needs at least 2 "
                        f"(zero-shot pairs are of different speakers); choose another --split")
    convergence = model_convergence(model_path)  # before the long part: a run without history fails now
    # each pair converts one of the split's utterances into one of the other speakers: beyond that many, pairs
    # only repeat, and --pairs 99999999999 ran without end
    most = len(splits[split]) * (len(speakers) - 1)
    if pairs > most:
        console.print(f"note: {most} zero-shot pairs, not {pairs}: capped at the split's {len(splits[split])} "
                      f"utterances each into its {len(speakers) - 1} other speaker(s)", highlight=False)
        pairs = most
    model_identity = identity(model_path, model)
    verifier = (Verifier.from_path(speaker_encoder, dev) if speaker_encoder is not None
                else Verifier(model.acoustic, model.recipe.audio, {"which": "own", **model_identity}))
    panel = _panel(judges, asr_model, console)
    clock.lap("load")

    validation = validation_report(model, dataset, split, dev)
    clock.lap("validation")
    ev = _Evaluator(model, verifier, splits, split, seed, panel)
    recon, copy = ev.reconstruction(max_utterances, clock)
    zero_shot = ev.zero_shot(pairs)
    clock.lap("zero_shot")

    report: dict[str, Any] = {
        **header(),
        "split": split,
        "model": model_identity,
        "dataset": {"path": str(data), "fingerprint": dataset.fingerprint, "split": split,
                    "utterances": len(splits[split]), "speakers": len(speakers)},
        "speaker_encoder": verifier.identity,
        "definitions": DEFINITIONS,
        "validation": validation,
        "reconstruction": recon,
        "copy_synthesis": copy,
        "zero_shot": zero_shot,
        "independent": ev.independent(zero_shot, copy),
        "convergence": convergence["report"],
    }
    if plot is not None:
        report["plot"] = plot_report(convergence, plot, console)
    report["timing_seconds"] = clock.laps | {"total": clock.total()}
    print_report(report, console)
    if out is not None:
        report["out"] = str(write_report(report, out))
        console.print(f"wrote {out}", highlight=False)
    return report


def _panel(judges: bool | None, asr_model: str | None, console: Console) -> J.Panel | None:
    if judges is False:
        return None
    if judges is None and not J.installed():
        console.print(f"independent judges not installed, so not used: {J.INSTALL}", highlight=False, markup=False)
        return None
    with console.status("loading the independent judges (Resemblyzer, Whisper, DNSMOS)"):
        return J.Panel(asr_model, threads=torch.get_num_threads())  # as the command chose them (threads.py)


def validation_report(model: Model, dataset: Dataset, split: str, device: torch.device) -> dict[str, Any]:
    """Each stage's validation values on `split`, by the trainer's own function and segments."""
    out: dict[str, Any] = {}
    acoustic = AcousticTask(model.recipe, dataset, device, speakers=list(model.meta["acoustic"]["speakers"]))
    acoustic.model.load_state_dict(model.acoustic.state_dict())
    finetuned = _vocoder_finetuned(model)
    vocoder = VocoderTask(model.recipe, dataset, device, acoustic=model.acoustic if finetuned else None)
    vocoder.generator.load_state_dict(model.vocoder.state_dict())
    for task in (acoustic, vocoder):
        segments = task.val_segments(split, whole=True)
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
    """Whether the vocoder was trained on the acoustic model's outputs: its validation input then was those.
    From the vocoder's metadata, which load_model keeps (a run's best.pt, or a bundle's as export wrote it);
    None for a bundle whose metadata does not say, whose vocoder is then validated on dataset mels."""
    said = model.meta.get("vocoder", {}).get("finetuned_on_acoustic")
    return bool(said) if Path(model.source).is_dir() else said


class _Evaluator:
    """Conversions of one split's utterances and their measurements; embeddings are computed once each."""

    def __init__(self, model: Model, verifier: Verifier, splits: Mapping[str, Split], split: str, seed: int,
                 panel: J.Panel | None = None) -> None:
        self.model, self.verifier, self.panel = model, verifier, panel
        self.cfg = model.recipe.audio
        self.split = splits[split]
        # the reference pool training validates with: seen speakers' references include their training clips
        self.pool = (reference_pool(self.split, splits["train"]) if split == "val" else reference_pool(self.split))
        self.speakers = by_speaker(self.split)
        self.rng = np.random.default_rng(seed)
        self.device = model.device
        self._embeddings: dict[tuple[int, int], np.ndarray] = {}

    # --- data ---------------------------------------------------------------------------------------

    @staticmethod
    def _audio(split: Split, i: int) -> np.ndarray:
        return A.from_int16(split.audio(i))

    def _embedding(self, split: Split, i: int) -> np.ndarray:
        key = (id(split), i)
        if key not in self._embeddings:
            self._embeddings[key] = self.verifier.embed(self._audio(split, i), self.cfg.sample_rate)
        return self._embeddings[key]

    def _profile_clips(self, speaker: str, exclude: list[tuple[Split, int]]) -> list[tuple[Split, int]]:
        return [(sp, j) for sp, j in self.pool.get(speaker, [])
                if not any(sp is xs and j == xj for xs, xj in exclude)][:PROFILE_CLIPS]

    def _profile(self, speaker: str, exclude: list[tuple[Split, int]]) -> np.ndarray | None:
        clips = self._profile_clips(speaker, exclude)
        return np.mean([self._embedding(sp, j) for sp, j in clips], axis=0) if clips else None

    def _reference(self, split: Split, j: int) -> Reference:
        return dataset_reference(self.model, split, [j])

    def _other_clip(self, speaker: str, exclude: tuple[Split, int]) -> tuple[Split, int] | None:
        clips = [(sp, j) for sp, j in self.pool.get(speaker, []) if not (sp is exclude[0] and j == exclude[1])]
        return clips[int(self.rng.integers(len(clips)))] if clips else None

    def _order(self) -> list[int]:
        """Utterances of the split taking one speaker after another, so any prefix covers the speakers evenly."""
        rounds = itertools.zip_longest(*self.speakers.values())
        return [i for group in rounds for i in group if i is not None]

    # --- measuring ----------------------------------------------------------------------------------

    def _torch_beside_judges(self) -> int:
        """torch's threads while the judges listen: the cores they leave (see judges.Panel), at least one."""
        return max(1, torch.get_num_threads() - (self.panel.threads if self.panel is not None else 0))

    def _convert(self, i: int, ref: Reference, keep_pitch: bool) -> tuple[np.ndarray, float]:
        blocks, info = convert(self.model, self._audio(self.split, i), ref, keep_pitch=keep_pitch)
        return np.concatenate(list(blocks)), 2.0 ** (info["pitch_shift_semitones"] / 12.0)

    # --- sections -----------------------------------------------------------------------------------

    def reconstruction(self, limit: int, clock: "_Clock") -> tuple[dict[str, Any], dict[str, Any]]:
        """Each utterance rebuilt through the whole pipeline (reference: another clip of its speaker) and
        through the vocoder alone (copy synthesis). Returns both sections."""
        recon, copy, skipped = [], [], []
        copy_seconds = 0.0

        def copies() -> Iterator[np.ndarray]:  # each copy synthesis, made while the judge scores the last ones
            nonlocal copy_seconds
            for i in self._order():
                if len(recon) >= limit:
                    break
                s, speaker = self.split, self.split.speaker(i)
                ref_clip = self._other_clip(speaker, (s, i))
                if ref_clip is None:
                    skipped.append(s.key(i))
                    continue
                mel, f0 = np.array(s.mel(i), dtype=np.float32), np.array(s.f0(i), dtype=np.float32)  # own copies
                profile = self._profile(speaker, [(s, i), ref_clip])
                item = {"utterance": s.key(i), "speaker": speaker, "reference": _key(ref_clip),
                        "seconds": s.n_frames(i) / self.cfg.frame_rate}
                out, _ = self._convert(i, self._reference(*ref_clip), keep_pitch=True)
                sim = cosine(self.verifier.embed(out, self.cfg.sample_rate), profile)
                recon.append(item | measure(out, f0, self.cfg, mel) | {"speaker_similarity": sim})

                started = time.perf_counter()
                with torch.inference_mode():
                    wav = self.model.render(torch.from_numpy(mel.T.copy()).unsqueeze(0).to(self.device),
                                            torch.from_numpy(f0).unsqueeze(0).to(self.device))[0]
                wav = wav.float().cpu().numpy()
                sim = cosine(self.verifier.embed(wav, self.cfg.sample_rate), profile)
                copy.append(item | measure(wav, f0, self.cfg, mel) | {"speaker_similarity": sim})
                copy_seconds += time.perf_counter() - started
                yield wav

        if self.panel is None:
            for _ in copies():
                pass
        else:
            with torch_threads(self._torch_beside_judges()):  # the judge holds its cores meanwhile
                for k, ovrl in enumerate(self.panel.quality_all(copies(), self.cfg.sample_rate)):
                    copy[k]["dnsmos_ovrl"] = ovrl
        clock.lap("reconstruction", minus=copy_seconds)
        clock.laps["copy_synthesis"] = round(copy_seconds, 3)
        keys = (*F0_KEYS.values(), "mcd_db", "speaker_similarity")
        common = {"utterances": len(recon), "max_utterances": limit, "speakers": len({r["speaker"] for r in recon}),
                  "skipped_no_other_clip": skipped, "mcd": {"order": MCD_ORDER, "c0": "excluded",
                                                            "alignment": "frame-aligned by construction (no DTW)"}}
        return ({**common, "pipeline": "synthesize.convert, own speaker's other clip as reference, own pitch",
                 "metrics": summaries(recon, keys), "items": recon},
                {**common, "pipeline": "vocoder(dataset mel, dataset F0)", "metrics": summaries(copy, keys),
                 "items": copy})

    def zero_shot(self, n_pairs: int) -> dict[str, Any]:
        """`n_pairs` conversions of a split utterance into another speaker of the split."""
        order, names = self._order(), list(self.speakers)
        items: list[dict[str, Any]] = []

        def conversions() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # (output, source) of each pair, made
            for k in range(n_pairs):  # while the judges listen to the last ones (Panel.listen_all)
                i = order[k % len(order)]
                s, source_speaker = self.split, self.split.speaker(i)
                others = [n for n in names if n != source_speaker]
                target = others[int(self.rng.integers(len(others)))]
                ref_clip = self._other_clip(target, (s, i))
                out, ratio = self._convert(i, self._reference(*ref_clip), keep_pitch=False)
                requested = np.asarray(s.f0(i), dtype=np.float32) * ratio
                emb = self.verifier.embed(out, self.cfg.sample_rate)
                target_profile = self._profile(target, [ref_clip])
                source_profile = self._profile(source_speaker, [(s, i)])
                to_target, to_source = cosine(emb, target_profile), cosine(emb, source_profile)
                nearer = (None if target_profile is None or source_profile is None
                          else metrics.nearer_target(emb, target_profile, source_profile))
                items.append({"source": s.key(i), "source_speaker": source_speaker, "target_speaker": target,
                              "reference": _key(ref_clip), "pitch_shift": float(12 * np.log2(ratio)),
                              "similarity_to_target": to_target, "similarity_to_source": to_source,
                              "nearer_target": nearer} | measure(out, requested, self.cfg))
                if self.panel is not None:
                    clips = [self._audio(sp, j) for sp, j in self._profile_clips(target, [ref_clip])]
                    own = [self._audio(sp, j) for sp, j in self._profile_clips(source_speaker, [(s, i)])]
                    items[-1]["independent"] = self.panel.voice(out, self.cfg.sample_rate, clips, own)
                yield out, self._audio(s, i)

        if self.panel is None:
            for _ in conversions():
                pass
        else:
            with torch_threads(self._torch_beside_judges()):  # the judges hold their cores meanwhile
                for k, heard in enumerate(self.panel.listen_all(conversions(), self.cfg.sample_rate)):
                    items[k]["independent"] |= heard
        keys = ("similarity_to_target", "similarity_to_source", *F0_KEYS.values(), "pitch_shift")
        return {"pairs": len(items), "speakers": len(names), "pipeline": "synthesize.convert, register moved to "
                "the target's (ratio of median F0s)",
                "metrics": {"nearer_target": nearer_share(items), **summaries(items, keys)}, "items": items}

    def independent(self, zero_shot: dict[str, Any], copy: dict[str, Any]) -> dict[str, Any]:
        """The independent judges' summary of the zero-shot outputs and the copy syntheses."""
        if self.panel is None:
            return {"available": False, "reason": f"not used (install with {J.INSTALL}, or drop --no-judges)"}
        rows = [r["independent"] for r in zero_shot["items"]]
        keys = ("secs_to_target", "secs_to_source", "wer_out", "cer_out", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
        return {"available": True, "judges": self.panel.names, "pairs": len(rows),
                "zero_shot": {"nearer_target": nearer_share(rows), **pooled(rows), **summaries(rows, keys)},
                "copy_synthesis": summaries(copy["items"], ("dnsmos_ovrl",))}


def _key(clip: tuple[Split, int]) -> str:
    split, i = clip
    return split.key(i)


def nearer_share(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of pairs whose output is nearer the target than the source, over the pairs it was decided for
    (a speaker without a profile decides none)."""
    decided = [r["nearer_target"] for r in rows if r["nearer_target"] is not None]
    return {"share": float(np.mean(decided)) if decided else None, "n": len(decided), "unit": UNITS["nearer_target"]}


def pooled(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """WER and CER over all the pairs' words (edits summed over summed reference lengths), the corpus figure
    the field reports; the per-pair means beside them weigh a three-word clip like a long sentence."""
    out = {}
    for key, edits, length in (("wer_out_pooled", "word_edits", "words"), ("cer_out_pooled", "char_edits", "chars")):
        total = sum((J.ErrorCount(r[edits], r[length]) for r in rows), J.ErrorCount())
        out[key] = {"value": total.rate if total.length else None, "n": total.length, "unit": UNITS[key]}
    return out


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
