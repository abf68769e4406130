"""`voiceclone evaluate --baseline`: a fine-tuned model against the zero-shot base it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from voiceclone import audio as A
from voiceclone.data.store import Dataset
from voiceclone.errors import UserError, parse_device, stderr_console
from voiceclone.evaluation import DEFAULT_MAX_UTTERANCES, metrics
from voiceclone.evaluation.verifier import Verifier
from voiceclone.evaluation.printing import fmt
from voiceclone.evaluation.report import (DEFINITIONS, PROFILE_CLIPS, UNITS, by_speaker, check_audio, dataset_reference,
                                          header, identity, measure, summaries, write_report)
from voiceclone.inference.bundle import load_model
from voiceclone.inference.synthesize import Reference, convert, embed_references

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
    console = console or stderr_console()
    dev = parse_device(device or "cpu")
    dataset = Dataset.open(data)
    split_data = dataset.split(split)
    if len(split_data) == 0:
        raise UserError(f"{data}: split '{split}' is empty; the comparison needs held-out utterances")
    train = dataset.split("train")
    models = {"base": load_model(baseline_path, device=dev), "fine-tuned": load_model(model_path, device=dev)}
    for name, m in models.items():
        check_audio(m.recipe.audio, dataset.audio, f"{data}: prepared with another audio config than the {name} model")
    verifier = (Verifier.from_path(speaker_encoder, dev) if speaker_encoder is not None else
                Verifier(models["base"].acoustic, dataset.audio, {"which": "base", **identity(Path(baseline_path),
                                                                                                models["base"])}))
    cfg = dataset.audio
    clips = by_speaker(train)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    voices: dict[str, tuple[np.ndarray, dict[str, Reference]]] = {}  # per speaker: profile, each model's voice
    for i in range(min(len(split_data), max_utterances)):
        speaker = split_data.speaker(i)
        own = clips.get(speaker, [])[:PROFILE_CLIPS]
        if not own:
            continue
        if speaker not in voices:
            profile = np.mean([verifier.embed(A.from_int16(train.audio(j)), cfg.sample_rate)
                               for j in own], axis=0)
            # a fine-tuned model speaks in its learned voice, timbre matched to its stored envelope as
            # `synthesize` without --reference does; a zero-shot one from the speaker's training clips
            voices[speaker] = (profile, {
                name: embed_references(m, []) if m.acoustic.voice is not None
                else dataset_reference(m, train, own) for name, m in models.items()})
        profile, refs = voices[speaker]
        y = A.from_int16(split_data.audio(i))
        mel, f0 = np.array(split_data.mel(i), dtype=np.float32), np.array(split_data.f0(i), dtype=np.float32)
        for name, m in models.items():
            blocks, _ = convert(m, y, refs[name], keep_pitch=True)
            wav = np.concatenate(list(blocks))
            sim = metrics.cosine_similarity(verifier.embed(wav, cfg.sample_rate), profile)
            rows[name].append({"utterance": split_data.key(i), "speaker": speaker,
                               **measure(wav, f0, cfg, mel), "speaker_similarity": sim})
    if not rows["base"]:
        raise UserError(f"{data}: no held-out utterance has a speaker with training clips to compare against")
    summary = {name: summaries(r, COMPARED) for name, r in rows.items()}
    verdicts = {}
    for key, direction in COMPARED.items():
        b, f = summary["base"][key]["mean"], summary["fine-tuned"][key]["mean"]
        if b is None or f is None:
            verdicts[key] = None
        elif f == b:  # a tie or an unmeasured metric was counted as a win of the base
            verdicts[key] = "tie"
        else:
            verdicts[key] = "fine-tuned" if (f < b if direction == "lower" else f > b) else "base"
    wins = {name: sum(v == name for v in verdicts.values()) for name in ("fine-tuned", "base")}
    better = max(wins, key=wins.get) if wins["fine-tuned"] != wins["base"] else "neither"
    report = {**header(), "kind": "comparison", "split": split,
              "model": identity(Path(model_path), models["fine-tuned"]),
              "baseline": identity(Path(baseline_path), models["base"]),
              "dataset": {"path": str(data), "fingerprint": dataset.fingerprint, "split": split,
                          "utterances": len(rows["base"])},
              "speaker_encoder": verifier.identity, "definitions": DEFINITIONS,
              "metrics": summary, "better_per_metric": verdicts, "better": better, "items": rows}
    table = Table(title=f"fine-tuned vs zero-shot base on {len(rows['base'])} held-out utterances ({split})")
    for col in ("metric", "base (zero-shot)", "fine-tuned", "better"):
        table.add_column(col)
    for key in COMPARED:
        table.add_row(f"{key} ({UNITS[key]})", fmt(summary["base"][key]["mean"]),
                      fmt(summary["fine-tuned"][key]["mean"]), verdicts[key] or "-")
    console.print(table)
    judged = sum(v is not None for v in verdicts.values())
    if better == "neither":
        console.print(f"[bold]neither[/] is better: {wins['base']} measure(s) each, of {judged} measured.",
                      highlight=False)
    else:
        console.print(f"[bold]{better}[/] is better on {wins[better]} of {judged} measures.", highlight=False)
    if out is not None:
        report["out"] = str(write_report(report, out))
    return report
