"""Shared fixtures: a small synthetic corpus and the dataset `prepare` makes of it (built once per session).

Both are read-only for tests: copy them (shutil.copytree) before changing anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from voiceclone.config import load_recipe
from voiceclone.synthetic import Speaker, write_corpus

CORPUS_SPEAKERS, CORPUS_UTTERANCES, CORPUS_SECONDS, CORPUS_RATE = 6, 6, 2.0, 16000


@pytest.fixture(scope="session")
def quiet() -> Console:
    """A console that prints nothing, for library calls that report progress."""
    return Console(quiet=True)


@pytest.fixture(scope="session")
def synthetic_voices(tmp_path_factory) -> tuple[Path, dict[str, Speaker]]:
    """(root, speakers by name): ROOT/spk00k/spk00k_00u.wav, 6 voices x 6 utterances of about 2 s, 16 kHz."""
    root = tmp_path_factory.mktemp("synthetic_corpus")
    speakers = write_corpus(root, n_speakers=CORPUS_SPEAKERS, utterances=CORPUS_UTTERANCES, seconds=CORPUS_SECONDS,
                            sample_rate=CORPUS_RATE, seed=0)
    return root, speakers


@pytest.fixture(scope="session")
def synthetic_corpus(synthetic_voices) -> Path:
    """The corpus folder of `synthetic_voices` (the layout `prepare` reads)."""
    return synthetic_voices[0]


@pytest.fixture(scope="session")
def prepared_dataset(synthetic_corpus, tmp_path_factory, quiet) -> Path:
    """`synthetic_corpus` prepared with the demo recipe: a dataset folder (6 speakers, at least one unseen)."""
    from voiceclone.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "dataset"
    prepare([synthetic_corpus], out, load_recipe("demo"), workers=1, console=quiet)
    return out


@pytest.fixture(scope="session")
def make_dataset(quiet):
    """make(root, speakers, utterances, seconds, seed, unseen_speakers=None, overrides=()) -> root / "ds":
    a synthetic corpus written to root / "corpus" (16 kHz) and prepared with the demo recipe (2 workers).
    The one way the test modules that train build their data; each chooses its own size."""
    from voiceclone.data.prepare import prepare

    def make(root: Path, speakers: int, utterances: int, seconds: float, seed: int,
             unseen_speakers=None, overrides=()) -> Path:
        write_corpus(root / "corpus", n_speakers=speakers, utterances=utterances, seconds=seconds,
                     sample_rate=CORPUS_RATE, seed=seed)
        prepare([root / "corpus"], root / "ds", load_recipe("demo", list(overrides)), workers=2,
                unseen_speakers=unseen_speakers, console=quiet)
        return root / "ds"

    return make


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch):
    """Make the next training run receive a real Ctrl-C (SIGINT) during the last step of its epoch 1,
    as a user interrupting a run at an epoch boundary would."""
    from helpers import ctrl_c_after_step
    from voiceclone.train.loop import Trainer

    original = Trainer._train_step
    ctrl_c_after_step(monkeypatch, lambda trainer: trainer.progress.step == trainer.steps_per_epoch)
    yield
    monkeypatch.setattr(Trainer, "_train_step", original)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, quiet) -> dict[str, Path]:
    """A corpus and a run with both tiny stages briefly trained (the streaming, ONNX and live tests share it):
    {"corpus": ROOT/spk00k/spk00k_00u.wav, "run": the run folder}."""
    from voiceclone.data.prepare import prepare
    from voiceclone.train.command import train

    root = tmp_path_factory.mktemp("tiny_run")
    write_corpus(root / "corpus", n_speakers=6, utterances=6, seconds=2.0, sample_rate=16000, seed=5)
    prepare([root / "corpus"], root / "ds", load_recipe("demo"), workers=1, console=quiet)
    overrides = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=48", "vocoder.train.batch_size=4",
                 "vocoder.train.lr=2e-3"]
    train(root / "ds", root / "run", stage="acoustic", overrides=overrides, epochs=4, early_stop=False, console=quiet)
    # enough vocoder steps for the harmonic source's filter to matter, so its phase carry is exercised
    train(root / "ds", root / "run", stage="vocoder", overrides=overrides, epochs=12, early_stop=False, console=quiet)
    return {"corpus": root / "corpus", "run": root / "run"}
