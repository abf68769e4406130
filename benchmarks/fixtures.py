"""What the timing scripts share: a model bundle (or model) of a given size, speech files, the machine's
name, medians.

Speed does not depend on the weights, so bundles hold freshly initialized networks of the recipe's size,
written exactly as `voiceclone export` writes them, so a timed `voiceclone synthesize` process loads them
the same way.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_bundle(path: Path, size: str = "base", recipe_name: str = "vctk") -> Path:
    """A .safetensors bundle with random acoustic model and vocoder of `size` (tiny or base)."""
    import torch
    from safetensors.torch import save_file

    from voiceclone.inference.bundle import FORMAT, FORMAT_VERSION
    from voiceclone.config import load_recipe
    from voiceclone.models.acoustic import AcousticModel
    from voiceclone.models.vocoder import Vocoder

    recipe = load_recipe(recipe_name, [f"acoustic.model.size={size}", f"vocoder.model.size={size}"])
    torch.manual_seed(0)
    acoustic = AcousticModel(recipe.acoustic.model, recipe.audio, 100)
    vocoder = Vocoder(recipe.vocoder.model, recipe.audio)
    tensors = {f"acoustic.{k}": v.contiguous() for k, v in acoustic.state_dict().items()}
    tensors.update({f"vocoder.{k}": v.contiguous() for k, v in vocoder.state_dict().items()})
    meta = {"acoustic": {"speakers": [f"spk{i:03d}" for i in range(100)]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                            "recipe": recipe.to_json(), "meta": json.dumps(meta)})
    return path


def random_model(size: str):
    """A voiceclone Model of freshly initialized networks of `size` (tiny or base) at the vctk recipe, in
    eval mode, in memory (no bundle file)."""
    from voiceclone.config import load_recipe
    from voiceclone.inference.bundle import Model
    from voiceclone.models.acoustic import AcousticModel
    from voiceclone.models.vocoder import Vocoder

    recipe = load_recipe("vctk", [f"acoustic.model.size={size}", f"vocoder.model.size={size}"])
    return Model(recipe, AcousticModel(recipe.acoustic.model, recipe.audio, 100).eval(),
                 Vocoder(recipe.vocoder.model, recipe.audio).eval(), {}, source=f"random {size}")


def make_speech(folder: Path, seconds: float = 30.0) -> tuple[Path, Path]:
    """(source, reference): `seconds` of synthetic speech as 44.1 kHz flac (resampling is part of every
    real path) in phrases of 4 s with short pauses, and a 5 s reference of another voice at 22.05 kHz."""
    import soundfile as sf

    from voiceclone.synthetic import make_speakers, synth_utterance

    folder.mkdir(parents=True, exist_ok=True)
    speakers = make_speakers(2, seed=1)
    gap = np.zeros(44100 // 5, np.float32)
    parts, total, k = [], 0.0, 0
    while total < seconds - 1e-6:
        phrase = synth_utterance(speakers[0], min(4.0, max(0.5, seconds - total - 0.2)), 44100, seed=k)[0]
        parts += [phrase, gap]
        total += (len(phrase) + len(gap)) / 44100
        k += 1
    source, reference = folder / "source.flac", folder / "reference.wav"
    sf.write(source, np.concatenate(parts)[: int(seconds * 44100)], 44100)
    sf.write(reference, synth_utterance(speakers[1], 5.0, 22050, seed=9)[0], 22050)
    return source, reference


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
