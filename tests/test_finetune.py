"""Fine-tuning a trained zero-shot model to one new voice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from voiceclone.inference.bundle import load_model
from voiceclone.run import load_checkpoint
from voiceclone.cli import app
from voiceclone.config import FinetuneConfig, load_recipe
from voiceclone.data.prepare import prepare
from voiceclone.errors import UserError
from voiceclone.synthetic import Speaker, synth_utterance
from voiceclone.stages import finetune as ft
from voiceclone.train.command import train

QUIET = Console(quiet=True)
BASE = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=48", "vocoder.train.batch_size=8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_dataset) -> dict[str, Path]:
    """A base model trained on 8 voices, and a dataset of one new voice (12 utterances, 3 held out)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("finetune")
    make_dataset(root, speakers=8, utterances=6, seconds=1.8, seed=11)
    train(root / "ds", root / "base", stage="all", overrides=BASE, epochs=8, early_stop=False, console=QUIET)
    # the new voice: a register and vocal tract outside the base corpus's range
    voice = Speaker("newvoice", f0_hz=330.0, formant_scale=1.32, tilt_db=-5.0, breath=0.01, bandwidth=0.9)
    (root / "voice/newvoice").mkdir(parents=True)
    for u in range(12):
        y, _ = synth_utterance(voice, 1.8, 16000, seed=100 + u)
        sf.write(root / "voice/newvoice" / f"n{u:02d}.wav", y, 16000)
    prepare([root / "voice"], root / "vds", load_recipe("demo", ["prepare.val_per_speaker=3"]), workers=2,
            console=QUIET)
    return {"root": root, "base": root / "base", "voice_ds": root / "vds"}


def test_schedule_and_layer_learning_rates_are_as_configured():
    cfg = load_recipe("demo")
    from voiceclone.models.acoustic import AcousticModel

    model = AcousticModel(cfg.acoustic.model, cfg.audio, 4)
    f = FinetuneConfig(freeze=("content_encoder",), unfreeze_every=2, frozen_blocks=3, layer_lr_decay=0.5, lr=1e-3)
    n = len(model.decoder.blocks)
    assert [ft.frozen_decoder_blocks(e, f, n) for e in range(1, 9)] == [3, 3, 2, 2, 1, 1, 0, 0]
    assert ft.frozen_decoder_blocks(1, dataclasses.replace(f, unfreeze_every=0), n) == 0
    lrs = ft.layer_lrs(model, f)
    names = [name for name, _ in ft.named_blocks(model)]
    assert lrs[names[-1]] == pytest.approx(1e-3)
    for earlier, later in zip(names, names[1:]):
        assert lrs[earlier] == pytest.approx(0.5 * lrs[later])
    frozen = ft.apply_schedule(model, f, epoch=1)
    assert "content_encoder" in frozen and "decoder.blocks.0" in frozen and "decoder.blocks.2" in frozen
    assert "decoder.blocks.3" not in frozen
    assert not any(p.requires_grad for p in model.content_encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.blocks[3].parameters())
    frozen = ft.apply_schedule(model, f, epoch=3)  # one more block released, nearest the output first
    assert "decoder.blocks.2" not in frozen and "decoder.blocks.1" in frozen
    with pytest.raises(Exception, match="unknown part"):
        ft.check(dataclasses.replace(f, freeze=("encoder",)))
    # nothing left to train was a RuntimeError traceback at the first step; a base's learned voice still trains
    nothing = dataclasses.replace(f, freeze=ft.FREEZABLE, learn_speaker=False)
    with pytest.raises(UserError, match="finetune.freeze.*finetune.learn_speaker.*nothing to train"):
        ft.check(nothing)
    ft.check(nothing, learned_voice=True)
    ft.check(dataclasses.replace(nothing, learn_speaker=True))


def test_finetuning_beats_the_base_keeps_frozen_parts_and_learns_the_voice(setup, tmp_path, monkeypatch):
    run = tmp_path / "ft"
    results = train(setup["voice_ds"], run, stage="all", init_from=setup["base"], finetune=True,
                    overrides=["finetune.epochs=12", "finetune.lr=2e-3"], console=QUIET)
    ac = results["acoustic"]
    assert ac["best_value"] < ac["baseline_val_loss"], (ac["best_value"], ac["baseline_val_loss"])
    assert results["vocoder"]["best_value"] <= results["vocoder"]["baseline_val_loss"]
    base = load_model(setup["base"])
    tuned = load_model(run)
    for name in ("content_encoder", "speaker_encoder"):  # frozen by default / with a learned voice
        a, b = getattr(base.acoustic, name).state_dict(), getattr(tuned.acoustic, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not torch.equal(base.acoustic.decoder.out.weight, tuned.acoustic.decoder.out.weight)
    assert tuned.acoustic.voice is not None
    state = load_checkpoint(run / "acoustic/last.pt")
    groups = state["optimizers"]["model"]["param_groups"]
    f = tuned.recipe.finetune
    assert max(g["base_lr"] for g in groups) == pytest.approx(f.lr)
    assert min(g["base_lr"] for g in groups) < f.lr * f.layer_lr_decay ** 5
    assert state["meta"]["finetuned_from"] == str(setup["base"])
    # evaluate compares it with the zero-shot base on the same held-out utterances and says which is better,
    # each converting as `synthesize` does: the fine-tuned voice timbre-matched to its stored envelope (the
    # comparison once passed no envelope, so it judged a pipeline no command runs)
    from voiceclone.evaluation import compare

    envelopes = []
    real_convert = compare.convert

    def spy(model, y, ref, **kwargs):
        envelopes.append((model.acoustic.voice is not None, ref.envelope is not None))
        return real_convert(model, y, ref, **kwargs)

    monkeypatch.setattr(compare, "convert", spy)
    r = CliRunner().invoke(app, ["evaluate", "--model", str(run), "--baseline", str(setup["base"]), "--data",
                                 str(setup["voice_ds"]), "--out", str(tmp_path / "cmp.json")])
    assert r.exit_code == 0, r.output
    assert (True, True) in envelopes and (True, False) not in envelopes, envelopes
    import json

    report = json.loads((tmp_path / "cmp.json").read_text())
    assert report["kind"] == "comparison" and report["dataset"]["utterances"] == 3
    assert set(report["better_per_metric"]) == {"mcd_db", "f0_rmse_cents", "speaker_similarity"}
    assert report["metrics"]["fine-tuned"]["mcd_db"]["mean"] < report["metrics"]["base"]["mcd_db"]["mean"]
    assert report["better_per_metric"]["mcd_db"] == "fine-tuned" and "better" in r.output
    # a model against itself: every measure a tie, and neither better (ties were counted as wins of the base)
    r = CliRunner().invoke(app, ["evaluate", "--model", str(setup["base"]), "--baseline", str(setup["base"]),
                                 "--data", str(setup["voice_ds"]), "--out", str(tmp_path / "same.json")])
    same = json.loads((tmp_path / "same.json").read_text())
    assert set(same["better_per_metric"].values()) == {"tie"} and same["better"] == "neither", same
    assert "neither is better" in " ".join(r.output.split()), r.output
    # a fine-tuned model speaks in its own voice without a reference
    source = next((setup["root"] / "corpus").rglob("*.wav"))
    r = CliRunner().invoke(app, ["synthesize", "--model", str(run), "--source", str(source), "--out",
                                 str(tmp_path / "own.wav")])
    assert r.exit_code == 0, r.output
    assert state["meta"]["voice_f0_median"] == pytest.approx(330, rel=0.05)
    # ... and in its own timbre: the voice's long-term spectrum is kept for timbre matching
    from voiceclone.inference.synthesize import embed_references

    own = embed_references(load_model(run), [])
    assert own.envelope is not None and own.envelope.shape == (len(state["meta"]["voice_envelope"]),)
    r = CliRunner().invoke(app, ["synthesize", "--model", str(setup["base"]), "--source", str(source), "--out",
                                 str(tmp_path / "none.wav")])
    assert r.exit_code == 2 and "--reference" in r.output


def test_finetuning_stops_early_when_the_held_out_loss_turns_up(setup, tmp_path):
    # a high rate, everything unfrozen, many epochs, on 9 utterances: overfitting comes fast. The raw weights
    # are validated: the demo recipe's weight average (100 steps, here 100 epochs) would smooth the turn into
    # a plateau, which is stopped as `converged` instead (tests/test_ema.py covers the average)
    overrides = ["finetune.epochs=60", "finetune.lr=1e-2", "finetune.unfreeze_every=0", "finetune.freeze=[]",
                 "convergence.window=3", "convergence.patience=4", "acoustic.train.ema=0"]
    results = train(setup["voice_ds"], tmp_path / "ft", stage="acoustic", init_from=setup["base"],
                    finetune=True, overrides=overrides, console=QUIET)
    r = results["acoustic"]
    assert r["early_stopped"] and r["epochs"] < 60
    assert r["assessment"].status in ("overfitting", "converged")
    assert r["best_epoch"] < r["epochs"]


def test_a_diverged_fine_tune_names_the_rate_it_trains_at(setup, tmp_path):
    """A fine-tune trains at finetune.lr: the advice to lower acoustic.train.lr named a setting it ignores."""
    r = CliRunner().invoke(app, ["train", "--data", str(setup["voice_ds"]), "--run", str(tmp_path / "r"),
                                 "--init-from", str(setup["base"]), "--finetune", "--epochs", "1", "--set",
                                 "finetune.lr=1e12", "--set", "finetune.unfreeze_every=0"])
    shown = " ".join(r.output.split())
    assert r.exit_code == 3 and "diverged" in shown, r.output
    assert "--set finetune.lr=..." in shown and "acoustic.train.lr" not in shown, r.output


def test_a_fine_tune_resumed_without_its_base_or_a_run_resumed_as_one_is_refused(setup, tmp_path):
    """A fine-tuned vocoder resumed with a plain --resume trained on as a new model: the recipe's learning rate
    and epochs instead of [finetune]'s, and its checkpoints forgot whose fine-tune they were."""
    import shutil

    from voiceclone.errors import UserError

    run = tmp_path / "ft"
    train(setup["voice_ds"], run, stage="vocoder", init_from=setup["base"], finetune=True,
          overrides=["finetune.epochs=1"], console=QUIET)
    with pytest.raises(UserError, match=r"vocoder/last.pt: a fine-tune of .* resume it with --init-from .* --finetune"):
        train(setup["voice_ds"], run, stage="vocoder", resume=True, epochs=2, console=QUIET)
    assert load_checkpoint(run / "vocoder/last.pt")["meta"]["finetuned_from"] == str(setup["base"])
    zero_shot = tmp_path / "base"
    shutil.copytree(setup["base"], zero_shot)
    with pytest.raises(UserError, match=r"acoustic/last.pt: not a fine-tune; resume it without --init-from"):
        train(setup["voice_ds"], zero_shot, stage="acoustic", init_from=setup["base"], finetune=True, resume=True,
              console=QUIET)


def test_bad_finetune_inputs(setup, tmp_path):
    runner = CliRunner()
    # a voice dataset prepared with another audio config than the base model's
    prepare([setup["root"] / "voice"], tmp_path / "v22", load_recipe("demo", ["audio.sample_rate=22050"]),
            workers=1, console=QUIET)
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "v22"), "--run", str(tmp_path / "a"),
                            "--init-from", str(setup["base"]), "--finetune"])
    assert r.exit_code == 2 and "audio config" in r.output
    # no held-out utterances
    prepare([setup["root"] / "voice"], tmp_path / "v0", load_recipe("demo", ["prepare.val_per_speaker=0"]),
            workers=1, console=QUIET)
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "v0"), "--run", str(tmp_path / "b"),
                            "--init-from", str(setup["base"]), "--finetune"])
    assert r.exit_code == 2 and "validation" in r.output
    r = runner.invoke(app, ["train", "--data", str(setup["voice_ds"]), "--run", str(tmp_path / "c"), "--finetune"])
    assert r.exit_code == 2 and "--init-from" in r.output
    r = runner.invoke(app, ["train", "--data", str(setup["voice_ds"]), "--run", str(tmp_path / "d"), "--init-from",
                            str(setup["base"])])
    assert r.exit_code == 2 and "--finetune" in r.output
    # one voice without either (a fine-tune resumed without them, too): both are named
    r = runner.invoke(app, ["train", "--data", str(setup["voice_ds"]), "--run", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--finetune --init-from MODEL" in " ".join(r.output.split()), r.output


def test_a_recipe_named_for_a_fine_tune_is_refused(tmp_path):
    """A fine-tune is built from its base's recipe: --recipe (its [finetune] included) was silently ignored."""
    from helpers import one_line_error

    (tmp_path / "ft.toml").write_text("[finetune]\nepochs = 1\n")
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "ds"), "--run", str(tmp_path / "run"),
                                 "--init-from", str(tmp_path / "base"), "--finetune", "--recipe",
                                 str(tmp_path / "ft.toml")])
    one_line_error(r, "--recipe", "--set finetune.")
    assert not (tmp_path / "run").exists()


def test_a_vocoder_fine_tune_stopped_before_its_first_epoch_keeps_the_adopted_vocoder(setup, tmp_path, monkeypatch):
    from helpers import ctrl_c_after_step

    run = tmp_path / "ft"
    train(setup["voice_ds"], run, stage="acoustic", init_from=setup["base"], finetune=True,
          overrides=["finetune.epochs=1"], console=QUIET)
    assert load_checkpoint(run / "vocoder/best.pt")["meta"].get("from_base")  # speaks through the base's vocoder
    fired = ctrl_c_after_step(monkeypatch, lambda t: True)  # in the vocoder's first step, before any epoch of its own
    overrides = ["finetune.epochs=1", "vocoder.train.batch_size=2"]  # several steps an epoch
    r = train(setup["voice_ds"], run, stage="vocoder", init_from=setup["base"], finetune=True, overrides=overrides,
              console=QUIET)
    assert fired and r["vocoder"]["interrupted"] and r["vocoder"]["epochs"] == 0
    assert load_checkpoint(run / "vocoder/best.pt")["meta"].get("from_base")  # the run still speaks
    assert load_model(run).vocoder is not None
    # resumed, its first epoch's best replaces the base's
    train(setup["voice_ds"], run, stage="vocoder", init_from=setup["base"], finetune=True, overrides=overrides,
          resume=True, console=QUIET)
    assert not load_checkpoint(run / "vocoder/best.pt")["meta"].get("from_base")
