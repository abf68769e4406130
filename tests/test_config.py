"""Recipes: every key and type checked, a clear error naming the key, presets, overrides, stored recipes."""

from __future__ import annotations

import json

import pytest

from voiceclone.config import (AcousticModelConfig, AudioConfig, Recipe, build, differences, load_recipe,
                               recipe_from_dict)
from voiceclone.errors import UserError


def write(tmp_path, text: str):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_shipped_recipes_load():
    for name in ("demo", "vctk", "libritts"):
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe) and recipe.name == name


def test_unknown_key_names_the_key_and_suggests_the_close_one(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'audio.sample_rte' \(did you mean 'sample_rate'\?\)"):
        load_recipe(write(tmp_path, "[audio]\nsample_rte = 16000\n"))


def test_unknown_key_without_a_close_one_lists_the_known_keys(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'audio.zzz' \(known: sample_rate, n_fft"):
        load_recipe(write(tmp_path, "[audio]\nzzz = 1\n"))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(UserError, match="unknown key 'acustic'"):
        load_recipe(write(tmp_path, "[acustic.model]\nhidden = 8\n"))


@pytest.mark.parametrize("text, key, expected", [
    ('[audio]\nsample_rate = "16k"\n', "audio.sample_rate", "an integer"),
    ("[audio]\nsample_rate = 16000.5\n", "audio.sample_rate", "an integer"),
    ("[audio]\nsample_rate = true\n", "audio.sample_rate", "an integer"),
    ('[audio]\nfmax = "high"\n', "audio.fmax", "a number"),
    ("[prepare]\nloudness_db = nan\n", "prepare.loudness_db", "a number"),
    ("[prepare]\ntrim_top_db = inf\n", "prepare.trim_top_db", "a number"),
    ("[convergence]\nearly_stop = 1\n", "convergence.early_stop", "true or false"),
    ("[finetune]\nfreeze = \"decoder\"\n", "finetune.freeze", "a list of a string"),
    ("audio = 3\n", "audio", "a table"),
    ("[audio]\nsample_rate = 2024-01-01\n", "audio.sample_rate", "an integer"),  # was a TypeError traceback
    ("[acoustic.train]\nlr = 12:30:00\n", "acoustic.train.lr", "a number"),
    ('[acoustic.model]\nsize = ["tiny"]\n', "acoustic.model.size", "is not one of"),  # was a TypeError
    ('[vocoder.model]\nsize = {a = 1}\n', "vocoder.model.size", "is not one of"),
])
def test_wrong_types_name_the_key_and_the_type(tmp_path, text, key, expected):
    with pytest.raises(UserError) as e:
        load_recipe(write(tmp_path, text))
    assert key in str(e.value) and (expected in str(e.value) or "must be a table" in str(e.value)), str(e.value)


def test_a_date_in_a_recipe_file_is_its_text(tmp_path):
    """A TOML date has no JSON form: it was a TypeError traceback wherever it stood."""
    assert load_recipe(write(tmp_path, "[prepare]\nsplit_salt = 2024-01-01\n")).prepare.split_salt == "2024-01-01"


def test_a_recipe_saved_with_a_byte_order_mark_loads(tmp_path):
    """Notepad's UTF-8 starts with a BOM: it was 'not valid TOML (Invalid statement (at line 1, column 1))'."""
    path = tmp_path / "r.toml"
    path.write_bytes("\ufeff# Zoë's recipe\n[audio]\nfmax = 7000\n".encode("utf-8"))
    assert load_recipe(path).audio.fmax == 7000.0


def test_an_integer_is_accepted_where_a_number_is_expected(tmp_path):
    assert load_recipe(write(tmp_path, "[audio]\nfmax = 7000\n")).audio.fmax == 7000.0


def test_values_are_checked(tmp_path):
    with pytest.raises(UserError, match="setting audio.fmax must not exceed sample_rate / 2"):
        load_recipe(write(tmp_path, "[audio]\nsample_rate = 16000\nfmax = 9000\n"))


@pytest.mark.parametrize("override, key", [
    # both stages share TrainConfig's checks: the message names the stage ("setting train.seed" did not)
    ("acoustic.train.seed=-1", "acoustic.train.seed"),
    ("acoustic.train.seed=99999999999999999999", "acoustic.train.seed"),
    ("acoustic.train.num_workers=-1", "acoustic.train.num_workers"),
    ("acoustic.train.beta1=1.5", "acoustic.train.beta1"),
    ("vocoder.train.weight_decay=-1", "vocoder.train.weight_decay"),
    ("acoustic.train.warmup_steps=-5", "acoustic.train.warmup_steps"),
    ("vocoder.train.epochs=0", "vocoder.train.epochs"),
    ("acoustic.train.grad_clip=0", "acoustic.train.grad_clip"),
    ("vocoder.train.max_bad_steps=0", "vocoder.train.max_bad_steps"),
    ("vocoder.gan.disc_lr=-1", "vocoder.gan.disc_lr"),
    ("acoustic.loss.mel=-1", "acoustic.loss.mel"), ("vocoder.loss.feature=-0.5", "vocoder.loss.feature"),
])
def test_training_settings_that_torch_would_refuse_later_are_refused_here(override, key):
    with pytest.raises(UserError, match=f"setting {key}"):
        load_recipe("demo", [override])


@pytest.mark.parametrize("override, key", [
    ("prepare.loudness_db=23", "prepare.loudness_db"),  # -23 with the sign slipped: silently peak-normalized
    ("prepare.loudness_db=1e9", "prepare.loudness_db"),  # OverflowError: every file 'failed', a bundle's traceback
    ("prepare.trim_top_db=0", "prepare.trim_top_db"), ("prepare.trim_top_db=-40", "prepare.trim_top_db"),
    ("prepare.max_seconds=1e308", "prepare.max_seconds"),  # inf samples: every file 'failed' (OverflowError)
])
def test_level_settings_outside_what_audio_can_be_are_refused(override, key):
    with pytest.raises(UserError, match=f"setting {key}"):
        load_recipe("demo", [override])


@pytest.mark.parametrize("override, key", [
    # each was accepted and failed later: a traceback, an 8 GiB allocation per frame, or training that went wrong
    ("acoustic.model.kernel_size=4", "acoustic.model.kernel_size"),  # ValueError deep in the model, exit 1
    ("audio.f0_min=0.001", "audio.f0_min"),  # the tracker's window for 0.001 Hz: out of memory
    ("audio.f0_max=9000", "audio.f0_max"),  # above the 8 kHz that 16 kHz audio holds
    ("vocoder.model.mrd_resolutions=[[64, 16, 128]]", "vocoder.model.mrd_resolutions"),  # stft's RuntimeError
    ("vocoder.model.mrd_resolutions=[[512, 256, 128]]", "vocoder.model.mrd_resolutions"),  # hop past the window
    ('vocoder.model.mrd_resolutions=[]", "vocoder.model.mpd_periods=[]', "vocoder.model needs at least one"),
    ("finetune.layer_lr_decay=-1", "finetune.layer_lr_decay"),  # every other block learnt backwards, silently
    ("finetune.layer_lr_decay=0", "finetune.layer_lr_decay"),
    ("finetune.layer_lr_decay=1e300", "finetune.layer_lr_decay"),  # OverflowError traceback in the first epoch
    ("finetune.layer_lr_decay=5", "finetune.layer_lr_decay"),  # the input side learnt fastest, not slowest
    ("finetune.frozen_blocks=-1", "finetune.frozen_blocks"), ("finetune.unfreeze_every=-2", "finetune.unfreeze_every"),
    ("finetune.lr=0", "finetune.lr"), ("finetune.epochs=0", "finetune.epochs"),
    # the EQ basis [eq_terms, n_mels]: a 320 GB allocation, RuntimeError traceback in the first step
    ("acoustic.perturb.eq_terms=1000000000", "acoustic.perturb.eq_terms"),
    # inf in the perturbed log-mel: a NaN loss, reported as "lower the learning rate"
    ("acoustic.perturb.gain=1e300", "acoustic.perturb.gain"), ("acoustic.perturb.eq_depth=1e300", "acoustic.perturb.eq_depth"),
    ("acoustic.perturb.virtual_semitones=1e300", "acoustic.perturb.virtual_semitones"),
    ("acoustic.perturb.formant_semitones=-3", "acoustic.perturb.formant_semitones"),
    # every plateau 1.01x above the best was 'diverged': early stopping ended the run there
    ("convergence.diverge_factor=1", "convergence.diverge_factor"),
    ("convergence.diverge_factor=0.5", "convergence.diverge_factor"),
    ("convergence.min_delta=1e308", "convergence.min_delta"),  # no epoch could ever count as an improvement
    ("acoustic.model.aam_scale=1e308", "acoustic.model.aam_scale"),  # inf logits: a NaN loss at epoch 2
    ("acoustic.model.aam_margin=-5", "acoustic.model.aam_margin"),
    # mel bands with no FFT bin: those features were the log floor for every sound, prepared without a word
    ("audio.fmin=7999", "audio.n_mels"),  # all 80 bands within 1 Hz: a dataset of nothing but the floor
    ("audio.n_mels=512", "audio.n_mels"),  # 47 of the lowest bands narrower than the 15.6 Hz bins
])
def test_settings_that_would_crash_or_mislead_later_are_refused_at_load(override, key):
    with pytest.raises(UserError, match=f"setting {key}"):
        load_recipe("demo", override.split('", "'))


def test_size_presets_apply_and_other_keys_override_them():
    base = build(AcousticModelConfig, {"size": "base"})
    assert base.hidden == AcousticModelConfig.PRESETS["base"]["hidden"] != AcousticModelConfig().hidden
    tuned = build(AcousticModelConfig, {"size": "base", "hidden": 128})
    assert tuned.hidden == 128 and tuned.speaker_dim == AcousticModelConfig.PRESETS["base"]["speaker_dim"]
    with pytest.raises(UserError, match="size = 'huge' is not one of"):
        build(AcousticModelConfig, {"size": "huge"}, "acoustic.model")


def test_overrides_are_toml_values_and_checked_like_the_file():
    recipe = load_recipe("demo", ["acoustic.train.lr=1e-3", "convergence.early_stop=false", "name=mine"])
    assert recipe.acoustic.train.lr == 1e-3 and recipe.convergence.early_stop is False and recipe.name == "mine"
    with pytest.raises(UserError, match="did you mean 'lr'"):
        load_recipe("demo", ["acoustic.train.lrr=1e-3"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_recipe("demo", ["acoustic.train.lr"])
    with pytest.raises(UserError, match=r"demo\.toml \(with --set\): 'acoustic.train.lr' must be a number"):
        load_recipe("demo", ["acoustic.train.lr='fast'"])  # the value may be in the file or in --set


def test_a_bad_value_in_the_file_names_the_file_alone(tmp_path):
    with pytest.raises(UserError, match=r"r\.toml: 'prepare.loudness_db' must be a number") as e:
        load_recipe(write(tmp_path, "[prepare]\nloudness_db = 'loud'\n"))
    assert "--set" not in str(e.value)


def test_a_stored_recipe_round_trips():
    recipe = load_recipe("demo")
    assert recipe_from_dict(json.loads(recipe.to_json())) == recipe


def test_a_retired_key_loads_from_stored_recipes_only(tmp_path):
    stored = load_recipe("demo").to_dict()
    stored["acoustic"]["model"]["n_speakers"] = 12  # as older versions saved it
    assert recipe_from_dict(stored) == load_recipe("demo")
    with pytest.raises(UserError, match="unknown key 'acoustic.model.n_speakers'"):
        load_recipe(write(tmp_path, "[acoustic.model]\nn_speakers = 12\n"))


def test_missing_recipe_names_the_known_ones():
    with pytest.raises(UserError, match=r"recipe 'nope' not found \(known: demo, libritts, vctk\)"):
        load_recipe("nope")


def test_a_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """`--recipe demo` in a directory holding a folder `demo` (a corpus, runs/demo's parent) said "demo:
    recipe file not found"; a folder given as the recipe said the same of a folder that exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_recipe("demo").audio.sample_rate == 16000
    (tmp_path / "mine").mkdir()
    with pytest.raises(UserError, match=r"^mine: is a folder, not a recipe file \(recipes: a TOML file, or one of"):
        load_recipe("mine")
    (tmp_path / "x.toml").mkdir()
    with pytest.raises(UserError, match=r"^x.toml: is a folder, not a recipe file$"):
        load_recipe("x.toml")
    with pytest.raises(UserError, match=r"^y.toml: recipe file not found$"):
        load_recipe("y.toml")


def test_differences_lists_each_changed_setting():
    a, b = AudioConfig(sample_rate=16000, fmax=8000.0), AudioConfig(sample_rate=22050, fmax=7000.0)
    assert differences(a, b, "audio") == ["audio.fmax: 8000.0 vs 7000.0", "audio.sample_rate: 16000 vs 22050"]
    assert differences(a, a, "audio") == []


def test_a_new_size_on_a_saved_recipe_takes_the_new_preset():
    """A dataset's saved recipe spells out the tiny preset; `--set acoustic.model.size=base` must train base,
    while a value set apart from the preset stays."""
    saved = load_recipe("demo", ["acoustic.model.kernel_size=7"]).to_dict()
    fresh = load_recipe("demo", ["acoustic.model.size=base", "acoustic.model.kernel_size=7"])
    again = recipe_from_dict(saved, ["acoustic.model.size=base"])
    assert again.acoustic.model == fresh.acoustic.model and again.acoustic.model.hidden > 96
    assert recipe_from_dict(saved).acoustic.model == load_recipe("demo", ["acoustic.model.kernel_size=7"]).acoustic.model
    # list-valued preset keys too: the saved recipe holds them as JSON lists
    again = recipe_from_dict(saved, ["vocoder.model.size=base"])
    assert again.vocoder.model == load_recipe("demo", ["vocoder.model.size=base"]).vocoder.model
    assert again.vocoder.model.mpd_periods == (2, 3, 5, 7, 11)
