"""`voiceclone prepare` and the dataset store: layout, reader, splits, incremental runs, bad input, the CLI."""

from __future__ import annotations

import copy
import io
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console
from typer.testing import CliRunner

from test_audio import cents_error, rms, write_bad_files
from voiceclone.cli import app
from voiceclone.config import PrepareConfig, load_recipe
from voiceclone.data import prepare as P
from voiceclone.data import splits as S
from voiceclone.data.prepare import prepare
from voiceclone.data.splits import assign_splits
from voiceclone.data.store import SPLITS, Dataset
from voiceclone.errors import UserError
from voiceclone.synthetic import make_speakers, synth_utterance, write_corpus

DEMO = load_recipe("demo")


def run(inputs, out, recipe=DEMO, **kwargs) -> tuple[dict, str]:
    """prepare() with its console captured: (summary, printed text)."""
    buf = io.StringIO()
    summary = prepare(inputs if isinstance(inputs, list) else [inputs], out, recipe,
                      console=Console(file=buf, width=200), **{"workers": 1, **kwargs})
    return summary, buf.getvalue()


def splits_by_id(path: Path) -> dict[str, str]:
    return {r["id"]: r["split"] for r in Dataset.open(path).manifest}


def small_corpus(root: Path, speakers: int = 4, utterances: int = 4, seed: int = 0) -> Path:
    write_corpus(root, n_speakers=speakers, utterances=utterances, seconds=1.0, sample_rate=16000, seed=seed)
    return root


# ---------------------------------------------------------------------------------------------------
# Layout and reader.


def test_dataset_layout_and_reader(prepared_dataset):
    ds = Dataset.open(prepared_dataset)
    cfg = ds.audio
    assert ds.recipe.to_dict() == DEMO.to_dict() and cfg == DEMO.audio
    config = json.loads((prepared_dataset / "config.json").read_text())
    assert config["format"] == "voiceclone-dataset" and config["version"] == 2 and config["recipe"] == json.loads(DEMO.to_json())
    assert len(ds.fingerprint) == 12 and ds.fingerprint == config["fingerprint"]
    assert len(ds.manifest) == 36 and len(ds.speakers) == 6
    for name in SPLITS:
        split = ds.split(name)
        assert split is ds.split(name)  # one object per split: reference pools compare by identity
        assert [r["id"] for r in split.rows] == [r["id"] for r in ds.manifest if r["split"] == name]
        for i in range(len(split)):
            mel, f0, energy, wav = split.mel(i), split.f0(i), split.energy(i), split.audio(i)
            n = split.n_frames(i)
            assert mel.shape == (n, cfg.n_mels) and mel.dtype == np.float16 and isinstance(mel, np.memmap)
            assert f0.shape == energy.shape == (n,) and f0.dtype == energy.dtype == np.float32
            assert wav.shape == (n * cfg.hop_length,) and wav.dtype == np.int16
            assert split.speaker(i) == split.rows[i]["speaker"]
            assert np.isfinite(mel.astype(np.float32)).all() and (f0 > 0).any()
    row = ds.manifest[0]
    for key in ("id", "speaker", "split", "source", "start", "end", "frames", "seconds", "voiced", "f0_median",
                "logf0_mean", "logf0_std"):
        assert key in row, key
    assert row["end"] - row["start"] == row["frames"] * cfg.hop_length
    for info in ds.speakers.values():
        assert set(info) >= {"split", "utterances", "seconds", "logf0_mean", "logf0_std"}
        assert info["split"] in ("train", "unseen") and 3.5 < info["logf0_mean"] < 6.5
    report = json.loads((prepared_dataset / "report.json").read_text())
    assert report["files"] == 36 and report["used"] == 36 and report["skipped"] == []
    assert not any(p.name.startswith(".prepare-") and p.is_dir() for p in prepared_dataset.iterdir())


def test_reader_does_not_load_the_arrays(prepared_dataset):
    split = Dataset.open(prepared_dataset).split("train")
    mel = split.mel(len(split) - 1)
    assert isinstance(mel.base, np.memmap) or isinstance(mel, np.memmap)
    assert mel.base is not None  # a view into the map, not a copy
    clone = copy.deepcopy(split)  # what pickling to a loader worker does: the maps are dropped, then remade
    assert clone._maps is None and np.array_equal(clone.audio(0), split.audio(0))
    copies = split.read(1)
    assert np.array_equal(copies["mel"], split.mel(1)) and np.array_equal(copies["audio"], split.audio(1))


def test_stored_f0_follows_the_known_contour_through_trimming(tmp_path):
    """Silence is trimmed before the features, so the manifest's start must map frames back to the source."""
    sr, hop = 16000, DEMO.audio.hop_length
    truth = {}
    for i, speaker in enumerate(make_speakers(2, seed=3)):
        y, f0_samples = synth_utterance(speaker, 2.0, sr, seed=20 + i)
        pad = np.zeros(3000 + 700 * i, dtype=np.float32)
        (tmp_path / "c" / speaker.name).mkdir(parents=True)
        sf.write(tmp_path / "c" / speaker.name / "u.wav", np.concatenate([pad, y, pad]), sr, subtype="FLOAT")
        truth[speaker.name] = np.concatenate([np.zeros(len(pad)), f0_samples, np.zeros(len(pad))])
    run(tmp_path / "c", tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    errors = []
    for name in SPLITS:
        split = ds.split(name)
        for i, row in enumerate(split.rows):
            assert row["start"] > 0  # the leading silence was trimmed
            known = truth[row["speaker"]][row["start"] + (np.arange(row["frames"]) * hop + hop // 2)]
            e, vuv = cents_error(split.f0(i), known)
            assert vuv < 0.06
            errors.append(e)
    assert rms(np.concatenate(errors)) < 15


# ---------------------------------------------------------------------------------------------------
# Splits.


def test_unseen_speakers_never_reach_train(prepared_dataset):
    ds = Dataset.open(prepared_dataset)
    unseen = {s for s, info in ds.speakers.items() if info["split"] == "unseen"}
    assert 1 <= len(unseen) < 6
    assert not unseen & {r["speaker"] for r in ds.manifest if r["split"] in ("train", "val")}
    assert unseen == {r["speaker"] for r in ds.manifest if r["split"] == "unseen"}
    for spk in set(ds.speakers) - unseen:  # demo recipe: one val utterance per seen speaker
        assert sum(r["speaker"] == spk and r["split"] == "val" for r in ds.manifest) >= 1


def test_named_unseen_speakers(prepared_dataset, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    shutil.copytree(prepared_dataset, out)
    summary, text = run(Path(Dataset.open(out).manifest[0]["source"]).parent.parent, out,
                        unseen_speakers=["spk001", "spk004"])
    assert "reusing 36 from the existing dataset" in text and "splits drawn afresh" in text
    ds = Dataset.open(out)
    assert {s for s, i in ds.speakers.items() if i["split"] == "unseen"} == {"spk001", "spk004"}
    assert ds.recipe.prepare.unseen_speakers == ("spk001", "spk004")
    assert summary["splits"]["unseen"]["speakers"] == 2
    assert "train split holds" not in text
    # a mistyped name is refused before any file is decoded, not once all are
    monkeypatch.setattr(P, "process_file", lambda *a: pytest.fail("decoded a file before the name was checked"))
    with pytest.raises(UserError, match="spk999"):
        run(Path(ds.manifest[0]["source"]).parent.parent, tmp_path / "new", unseen_speakers=["spk999"])
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    # every voice named unseen: the dataset is written (it can be evaluated on), with word that it cannot train
    summary, text = run(Path(ds.manifest[0]["source"]).parent.parent, out, unseen_speakers=sorted(ds.speakers))
    assert summary["splits"]["train"]["speakers"] == 0
    assert "the train split holds 0 speaker(s)" in " ".join(text.split()), text


def ids_for(n_speakers: int, n_utts: int, offset: int = 0) -> dict[str, list[str]]:
    return {f"s{s}": [f"s{s}/u{u}" for u in range(offset, offset + n_utts)] for s in range(n_speakers)}


def test_split_rules():
    prep = PrepareConfig(val_per_speaker=2, unseen_fraction=0.1)
    many = ids_for(40, 30)
    split = assign_splits(many, prep)
    unseen = {s for s, ids in many.items() if split[ids[0]] == "unseen"}
    assert unseen and all(split[u] == "unseen" for s in unseen for u in many[s])
    for s in set(many) - unseen:
        kinds = Counter(split[u] for u in many[s])
        assert kinds["val"] >= 2 and kinds["unseen"] == 0 and kinds["train"] >= 25
    one = assign_splits(ids_for(1, 5), prep)  # a single speaker: held-out utterances, no unseen speaker
    assert Counter(one.values()) == Counter({"train": 3, "val": 2})
    assert Counter(assign_splits(ids_for(1, 1), prep).values()) == Counter({"train": 1})
    assert "unseen" in assign_splits(ids_for(3, 3), prep).values()  # at least one among three speakers
    assert "unseen" not in assign_splits(ids_for(2, 3), prep).values()
    assert "unseen" not in assign_splits(ids_for(5, 3), PrepareConfig(unseen_fraction=0.0)).values()
    assert assign_splits(many, prep) == split  # a pure function of the ids
    assert assign_splits(many, PrepareConfig(val_per_speaker=2, unseen_fraction=0.1, split_salt="x")) != split


def test_adding_utterances_never_moves_old_ones():
    prep = PrepareConfig(val_per_speaker=2, unseen_fraction=0.2)
    rng = random.Random(0)
    for trial in range(20):
        n_spk = rng.randint(1, 8)
        old = {f"s{s}": [f"s{s}/u{u}" for u in range(rng.randint(1, 6))] for s in range(n_spk)}
        before = assign_splits(old, prep)
        grown = {s: ids + [f"{s}/new{k}" for k in range(rng.randint(0, 4))] for s, ids in old.items()}
        grown.update({f"t{trial}x{k}": [f"t{trial}x{k}/u{u}" for u in range(3)] for k in range(rng.randint(0, 3))})
        after = assign_splits(grown, prep, previous=before)
        assert all(after[u] == before[u] for u in before), trial
        for s, ids in grown.items():  # the guarantees still hold for the grown set
            kinds = {after[u] for u in ids}
            assert kinds == {"unseen"} or "unseen" not in kinds
            if "unseen" not in kinds and len(ids) >= 2:
                assert "val" in kinds
        # without the previous dataset, the hash thresholds alone still keep every unseen speaker unseen
        fresh = assign_splits(grown, prep)
        assert all(fresh[u] == "unseen" for u in before if before[u] == "unseen" and n_spk >= 3
                   and S._unit(prep.split_salt, u.split("/")[0]) < prep.unseen_fraction)


def test_split_stability_when_files_are_added(tmp_path):
    corpus = small_corpus(tmp_path / "c", speakers=4, utterances=3)
    run(corpus, tmp_path / "ds")
    before = splits_by_id(tmp_path / "ds")
    # two more utterances per speaker and a new speaker, with other content
    extra = small_corpus(tmp_path / "extra", speakers=5, utterances=2, seed=9)
    for f in sorted(extra.rglob("*.wav")):
        target = corpus / f.parent.name / f"new_{f.name}"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(f, target)
    _, text = run(corpus, tmp_path / "ds")
    assert "reusing 12 from the existing dataset; 10 of 22 files to process" in text
    after = splits_by_id(tmp_path / "ds")
    assert len(after) == 22 and all(after[u] == s for u, s in before.items())
    ds = Dataset.open(tmp_path / "ds")
    unseen = {s for s, i in ds.speakers.items() if i["split"] == "unseen"}
    assert unseen and not unseen & {r["speaker"] for r in ds.manifest if r["split"] != "unseen"}


def test_a_held_out_speaker_whose_files_all_changed_name_stays_held_out(tmp_path):
    """Its files converted to FLAC (new ids, none in the previous manifest), the held-out speaker was taken for
    a new one, and a speaker added beside it with a lower hash took its place: it moved into train."""
    every = small_corpus(tmp_path / "all", speakers=11, utterances=2)
    corpus = tmp_path / "c"
    corpus.mkdir()
    # among these three no hash is under unseen_fraction, so the top-up holds out spk004; spk010's hash is lower
    for name in ("spk001", "spk002", "spk004"):
        shutil.move(every / name, corpus / name)
    run(corpus, tmp_path / "ds")
    assert Dataset.open(tmp_path / "ds").speakers["spk004"]["split"] == "unseen"
    for f in sorted((corpus / "spk004").glob("*.wav")):
        y, sr = sf.read(f)
        sf.write(f.with_suffix(".flac"), y, sr)
        f.unlink()
    shutil.move(every / "spk010", corpus / "spk010")
    run(corpus, tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    assert ds.speakers["spk004"]["split"] == "unseen" and ds.speakers["spk001"]["split"] == "train"
    assert {r["split"] for r in ds.manifest if r["speaker"] == "spk004"} == {"unseen"}


def test_single_speaker_dataset(synthetic_corpus, tmp_path):
    """A folder of one voice's files (fine-tuning): its name is the speaker; val holds held-out utterances."""
    summary, _ = run(synthetic_corpus / "spk002", tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    assert list(ds.speakers) == ["spk002"]
    assert len(ds.split("val")) >= 1 and len(ds.split("train")) >= 1 and len(ds.split("unseen")) == 0
    assert summary["splits"]["unseen"] == {"speakers": 0, "utterances": 0, "hours": 0.0}
    assert ds.split("unseen").rows == [] and len(ds.split("unseen")) == 0


# ---------------------------------------------------------------------------------------------------
# Incremental runs, interruption.


def test_incremental_reruns(tmp_path):
    corpus = small_corpus(tmp_path / "c")
    out = tmp_path / "ds"
    first, _ = run(corpus, out)
    assert first["processed"] == 16 and not first["up_to_date"]
    again, text = run(corpus, out)
    assert again["up_to_date"] and "up to date" in text and again["fingerprint"] == first["fingerprint"]
    f = sorted(corpus.rglob("*.wav"))[5]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # the file changed
    _, text = run(corpus, out)
    assert "reusing 15 from the existing dataset; 1 of 16 files to process" in text
    loud = load_recipe("demo", ["prepare.loudness_db=-20"])
    before = splits_by_id(out)
    summary, text = run(corpus, out, loud)
    assert "settings changed" in text and "prepare.loudness_db: -23.0 -> -20.0" in text
    assert summary["processed"] == 16 and splits_by_id(out) == before  # features rebuilt, splits kept
    assert Dataset.open(out).recipe.prepare.loudness_db == -20.0


def test_preparing_again_without_a_recipe_keeps_the_datasets_own(tmp_path):
    """`prepare` defaulted to the demo recipe: run again without --recipe to add files, a dataset prepared at
    22.05 kHz was rebuilt at 16 kHz, its splits drawn afresh and its runs unable to resume."""
    from typer.testing import CliRunner

    from voiceclone.cli import app

    corpus = small_corpus(tmp_path / "c")
    out = tmp_path / "ds"
    custom = tmp_path / "mine.toml"
    custom.write_text("[audio]\nsample_rate = 22050\n[prepare]\nloudness_db = -20.0\n")
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", str(corpus), "--out", str(out), "--recipe", str(custom), "-j", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", str(corpus), "--out", str(out), "-j", "1"])
    assert r.exit_code == 0 and "up to date" in r.output and "settings changed" not in r.output, r.output
    r = runner.invoke(app, ["prepare", str(corpus), "--out", str(out), "-j", "1", "--set", "prepare.loudness_db=-21"])
    assert r.exit_code == 0 and "prepare.loudness_db: -20.0 -> -21.0" in " ".join(r.output.split()), r.output
    recipe = Dataset.open(out).recipe
    assert recipe.audio.sample_rate == 22050 and recipe.prepare.loudness_db == -21.0 and recipe.name == "mine"
    r = runner.invoke(app, ["prepare", str(corpus), "--out", str(tmp_path / "new"), "-j", "1"])
    assert r.exit_code == 0 and Dataset.open(tmp_path / "new").recipe.name == "demo", r.output  # a new one: demo


def test_features_are_written_once_into_the_store(tmp_path):
    """No per-file cache: every file's features go straight into the store's four arrays; a split is an index,
    and an update appends to the same files instead of copying the dataset."""
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=3)
    out = tmp_path / "ds"
    run(corpus, out)
    features = out / "features"
    assert sorted(p.name for p in features.iterdir()) == ["audio.npy", "energy.npy", "f0.npy", "journal.jsonl",
                                                          "mel.npy", "store.json"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["spans.npy"]
    before = {p.name: (p.stat().st_ino, p.stat().st_size) for p in features.glob("*.npy")}
    write_corpus(tmp_path / "more", n_speakers=1, utterances=2, seconds=1.0, sample_rate=16000, seed=5)
    shutil.move(str(tmp_path / "more" / "spk000"), str(corpus / "spk_new"))
    summary, text = run(corpus, out)
    assert "reusing 9 from the existing dataset; 2 of 11 files to process" in text
    after = {p.name: (p.stat().st_ino, p.stat().st_size) for p in features.glob("*.npy")}
    assert all(after[k][0] == before[k][0] and after[k][1] > before[k][1] for k in before)  # appended in place
    ds = Dataset.open(out)
    assert len(ds.manifest) == 11 and len((features / "journal.jsonl").read_text().splitlines()) == 11
    # the arrays read back are the ones computed: utterances of every split cover the store without overlap
    spans = sorted((a, b) for name in SPLITS for a, b in np.load(out / name / "spans.npy"))
    assert spans[0][0] == 0 and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert spans[-1][1] == ds.config["store"]["frames"]


def test_the_store_is_compacted_when_mostly_waste(tmp_path):
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=3)
    out = tmp_path / "ds"
    run(corpus, out)
    frames = Dataset.open(out).config["store"]["frames"]
    for f in sorted(corpus.rglob("*.wav"))[:6]:
        f.unlink()
    _, text = run(corpus, out)
    ds = Dataset.open(out)
    assert "compacting" in text and len(ds.manifest) == 3
    assert ds.config["store"]["frames"] == sum(r["frames"] for r in ds.manifest) < frames / 2
    assert len((out / "features" / "journal.jsonl").read_text().splitlines()) == 3
    for name in SPLITS:
        split = ds.split(name)
        for i in range(len(split)):
            assert (split.f0(i) > 0).any() and split.mel(i).shape[0] == split.n_frames(i)


def test_a_torn_journal_or_array_tail_is_cut_back(tmp_path):
    """After a crash, the store keeps exactly the entries whose journal line and arrays are both complete."""
    from voiceclone.data.store import FeatureStore

    cfg = DEMO.audio
    rng = np.random.default_rng(0)

    def arrays(n):
        return {"mel": rng.standard_normal((n, cfg.n_mels)).astype(np.float16), "f0": rng.random(n, np.float32),
                "energy": rng.random(n, np.float32), "audio": rng.integers(-99, 99, n * cfg.hop_length, np.int16)}

    st = FeatureStore.create(tmp_path / "s", "h", cfg)
    a, b = arrays(10), arrays(7)
    st.add({"key": "a", "ok": True, "pieces": [{"frames": 4}, {"frames": 6}]}, **a)
    st.skip({"key": "bad", "ok": False, "reason": "silent"})
    st.add({"key": "b", "ok": True, "pieces": [{"frames": 7}]}, **b)
    st.flush()
    st.close()
    with open(tmp_path / "s" / "audio.npy", "ab") as f:  # a file's arrays written, its journal line not
        f.write(b"\1" * 999)
    with open(tmp_path / "s" / "journal.jsonl", "a") as f:  # a torn last line
        f.write('{"key": "c", "ok": tr')
    again = FeatureStore.open(tmp_path / "s")
    assert [e["key"] for e in again.entries] == ["a", "bad", "b"] and again.frames == 17
    assert (tmp_path / "s" / "journal.jsonl").read_text().count("\n") == 3
    got = store_frames(again, 10, 17)
    assert np.array_equal(got["mel"], b["mel"]) and np.array_equal(got["audio"], b["audio"])
    c = arrays(5)
    assert again.add({"key": "c", "ok": True, "pieces": [{"frames": 5}]}, **c) == 17
    again.seal()
    assert np.array_equal(np.load(tmp_path / "s" / "f0.npy")[17:], c["f0"])


def store_frames(st, a, b):
    from voiceclone.data.store import read_frames

    return read_frames(st.folder, st.headers(), a, b, st.hop)


@pytest.mark.parametrize("edit", [{"hop": 128}, {"n_mels": 40}, {"hop": 0}, {"committed": None}, {"committed": "all"}])
def test_a_damaged_store_json_is_not_used_and_the_dataset_is_rebuilt(tmp_path, edit):
    """features/store.json was trusted: another hop cut audio.npy to half its frames (the dataset lost, then a
    ValueError traceback), a hop of 0 divided by zero, a 'committed' that is no count was a TypeError."""
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    out = tmp_path / "ds"
    run(corpus, out)
    meta_path = out / "features" / "store.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **edit}))
    f = sorted(corpus.rglob("*.wav"))[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a change, so the store is opened
    summary, _ = run(corpus, out)
    assert summary["processed"] == 6  # rebuilt from the recordings, not appended to a store it misreads
    ds = Dataset.open(out)
    assert len(ds.manifest) == 6 and ds.split("train").read(0)["audio"].size > 0


def test_a_journal_entry_without_a_pieces_numbers_is_redone(tmp_path):
    """An entry whose piece lost its seconds was a KeyError traceback when the dataset was assembled again."""
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    out = tmp_path / "ds"
    run(corpus, out)
    journal = out / "features" / "journal.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    entries[0]["pieces"][0].pop("seconds")
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    f = sorted(corpus.rglob("*.wav"))[-1]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a change, so the store is opened
    summary, _ = run(corpus, out)
    assert summary["processed"] == 2  # the damaged entry's file and the changed one
    ds = Dataset.open(out)
    assert len(ds.manifest) == 6 and all(row["seconds"] > 0 for row in ds.manifest)


def test_an_interrupted_run_resumes_and_never_looks_complete(tmp_path, monkeypatch):
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=3)
    out = tmp_path / "ds"
    real, calls = P.process_file, []

    def dies_on_the_fifth(*args):
        calls.append(args[0])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(P, "process_file", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, out)
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(out)
    monkeypatch.setattr(P, "process_file", real)
    _, text = run(corpus, out)
    assert "4 from an interrupted run" in text and "5 of 9 files" in text
    good = Dataset.open(out).fingerprint

    # a crash while the new dataset is moved into place: the folder reads as incomplete, never as complete
    (corpus / "spk000" / "spk000_000.wav").unlink()

    def crash(tmp, dest, *rest):
        (dest / "config.json").unlink()
        raise OSError("disk full")

    monkeypatch.setattr(P, "_commit", crash)
    with pytest.raises(OSError):
        run(corpus, out)
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(out)
    monkeypatch.undo()
    summary, _ = run(corpus, out)
    assert summary["used"] == 8 and Dataset.open(out).fingerprint != good


def test_previous_dataset_survives_an_interrupted_update(tmp_path, monkeypatch):
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    out = tmp_path / "ds"
    run(corpus, out)
    before = Dataset.open(out).fingerprint
    monkeypatch.setattr(P, "process_file", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(corpus, out, load_recipe("demo", ["prepare.trim_top_db=30"]))
    assert Dataset.open(out).fingerprint == before  # still the complete previous dataset


def test_an_update_stopped_while_committing_keeps_its_recipe_and_splits(tmp_path, monkeypatch):
    """The commit removes config.json first: an update stopped there (Ctrl-C, SIGTERM, SIGKILL) was finished
    by the next run with the demo's recipe (every feature rebuilt at other settings) and splits drawn afresh,
    which moved the speaker held out as unseen into train."""
    from voiceclone.data.store import FeatureStore

    every = small_corpus(tmp_path / "all", speakers=11, utterances=2)
    corpus = tmp_path / "c"
    corpus.mkdir()
    # among these three no hash is under unseen_fraction, so the top-up holds out spk004; spk010, added
    # later, has a lower hash than spk004 and would be the one a fresh draw holds out
    for name in ("spk001", "spk002", "spk004"):
        shutil.move(every / name, corpus / name)
    out = tmp_path / "ds"
    run(corpus, out, load_recipe("demo", ["prepare.trim_top_db=30"]))
    assert {s for s, i in Dataset.open(out).speakers.items() if i["split"] == "unseen"} == {"spk004"}
    for name in ("spk008", "spk010"):
        shutil.move(every / name, corpus / name)
    expected = tmp_path / "expected"
    shutil.copytree(out, expected)
    run(corpus, expected, P.recipe_for(expected, None))

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureStore, "seal", stopped)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, out, P.recipe_for(out, None))
    assert not (out / "config.json").exists()
    monkeypatch.undo()
    recipe = P.recipe_for(out, None)
    assert recipe.prepare.trim_top_db == 30
    _, text = run(corpus, out, recipe)
    assert "drawn afresh" not in text and "settings changed" not in text
    ds = Dataset.open(out)
    assert {s for s, i in ds.speakers.items() if i["split"] == "unseen"} == {"spk004"}
    assert splits_by_id(out) == splits_by_id(expected) and ds.fingerprint == Dataset.open(expected).fingerprint
    assert not any(out.glob(".prepare-commit*"))


# ---------------------------------------------------------------------------------------------------
# Inputs: formats, manifests, bad files.


def test_mixed_formats_and_bad_files(tmp_path):
    good = tmp_path / "c" / "alice"
    good.mkdir(parents=True)
    speaker = make_speakers(2)[0]
    for k, (ext, fmt, subtype, rate, channels) in enumerate([
            ("wav", "WAV", "PCM_24", 48000, 2), ("flac", "FLAC", "PCM_16", 8000, 1), ("ogg", "OGG", "VORBIS", 22050, 1),
            ("mp3", "MP3", "MPEG_LAYER_III", 16000, 1), ("wav", "WAV", "FLOAT", 44100, 1)]):
        y, _ = synth_utterance(speaker, 1.2, rate, seed=k)
        sf.write(good / f"a{k}.{ext}", np.stack([y, y], 1) if channels == 2 else y, rate, format=fmt, subtype=subtype)
    expected = write_bad_files(tmp_path / "c" / "bob")
    hiss = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    sf.write(tmp_path / "c" / "bob" / "hiss.wav", hiss, 16000)  # sound, but no voice in it
    expected["hiss.wav"] = "no voiced speech"
    (tmp_path / "c" / "bob" / "transcript.txt").write_text("not audio, and not named as audio: ignored\n")
    summary, text = run(tmp_path / "c", tmp_path / "ds")
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    got = {Path(r["path"]).name: r["reason"] for r in report["skipped"]}
    assert got == expected
    assert report["skipped_by_reason"] == dict(Counter(expected.values()))
    assert report["ignored_non_audio"] == {".txt": 1} and report["used"] == 5
    assert summary["skipped"] == report["skipped_by_reason"] and "files skipped" in text
    assert list(Dataset.open(tmp_path / "ds").speakers) == ["alice"]


def test_broken_and_looping_links_in_a_corpus(tmp_path):
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    os.symlink("gone.wav", corpus / "spk000" / "dangling.wav")
    os.symlink("self.wav", corpus / "spk000" / "self.wav")
    os.symlink("..", corpus / "spk000" / "up")  # back to the corpus root: its files are not spk000's
    summary, _ = run(corpus, tmp_path / "ds")
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert {Path(r["path"]).name: r["reason"] for r in report["skipped"]} == {"dangling.wav": "missing",
                                                                              "self.wav": "missing"}
    ds = Dataset.open(tmp_path / "ds")
    assert sorted(ds.speakers) == ["spk000", "spk001", "spk002"] and summary["used"] == 6
    assert all(r["id"].split("/")[0] == r["speaker"] for r in ds.manifest)


def test_two_folders_linked_to_each_other_are_walked_once(tmp_path):
    # spk000/sub -> spk001 and spk001/sub -> spk000 were walked about 40 levels deep: 123 "two speakers" skip
    # records, and spk001 merged into spk000
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    os.symlink("../spk001", corpus / "spk000" / "sub")
    os.symlink("../spk000", corpus / "spk001" / "sub")
    run(corpus, tmp_path / "ds")
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert len(report["skipped"]) <= 2, report["skipped"]  # spk001's two files, met under spk000 and spk001
    assert max(len(Path(r["path"]).parts) for r in report["skipped"]) <= len((corpus / "spk000" / "sub").parts) + 1


def test_a_linked_file_or_folder_given_as_an_input_is_named_by_the_link(tmp_path):
    """git-annex and DataLad keep each file as a link into a folder of its own: given as single files, each was
    filed under its target's folder, one speaker per file; a linked speaker folder took its target's name."""
    corpus = small_corpus(tmp_path / "c", speakers=2, utterances=2)
    store = tmp_path / "annex"
    for f in sorted(corpus.rglob("*.wav")):
        target = store / f.stem / f.name  # one folder per file, as git-annex's objects
        target.parent.mkdir(parents=True)
        shutil.move(f, target)
        os.symlink(target, f)
    os.symlink(corpus / "spk000", tmp_path / "alice")
    run(sorted(corpus.rglob("*.wav")), tmp_path / "ds")
    assert sorted(Dataset.open(tmp_path / "ds").speakers) == ["spk000", "spk001"]
    run(tmp_path / "alice", tmp_path / "ds2")
    assert list(Dataset.open(tmp_path / "ds2").speakers) == ["alice"]


def test_file_names_that_are_not_utf8(tmp_path):
    # names from an old Latin-1 archive: Python sees their stray bytes as lone surrogates, which libsndfile's
    # path encoding refused ("corrupt") and report.json and manifest.jsonl could not hold (a traceback at the end)
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=2)
    os.rename(corpus / "spk000" / "spk000_000.wav", os.fsencode(corpus / "spk000") + b"/caf\xe9.wav")
    os.rename(corpus / "spk001", os.fsencode(corpus) + b"/jos\xe9")
    with open(os.fsencode(corpus) + b"/jos\xe9/broken\xff.wav", "wb") as f:  # and a bad file so named
        f.write(b"not audio")
    summary, _ = run(corpus, tmp_path / "ds")
    assert summary["used"] == 6 and summary["skipped"] == {"not audio": 1}
    ds = Dataset.open(tmp_path / "ds")
    assert os.fsdecode(b"jos\xe9") in ds.speakers
    assert any(r["id"] == os.fsdecode(b"spk000/caf\xe9.wav") for r in ds.manifest)
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert [Path(r["path"]).name for r in report["skipped"]] == [os.fsdecode(b"broken\xff.wav")]
    summary, _ = run(corpus, tmp_path / "ds")  # and a second run finds it all done
    assert summary["used"] == 6


def test_a_manifest_with_a_long_text_column_is_read(synthetic_corpus, tmp_path):
    # a transcript column holding a whole chapter passed csv's 131072-character field limit: _csv.Error traceback
    files = sorted(synthetic_corpus.rglob("*.wav"))[:2]
    (tmp_path / "list.csv").write_text("path,speaker,text\n" + "".join(f"{f},{f.parent.name},{'word ' * 40000}\n"
                                                                        for f in files))
    summary, _ = run(tmp_path / "list.csv", tmp_path / "ds")
    assert summary["used"] == 2


def test_manifests(synthetic_corpus, tmp_path):
    files = sorted(synthetic_corpus.rglob("*.wav"))[:8]
    shutil.copytree(synthetic_corpus, tmp_path / "audio")
    lines = ["speaker,path,notes"] + [f"voice{i % 2},audio/{f.parent.name}/{f.name},x" for i, f in enumerate(files)]
    lines.append("voice1,audio/missing.wav,x")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "more.tsv").write_text("path\tspeaker\n" + f"{tmp_path / 'audio/spk005/spk005_000.wav'}\tvoice2\n")
    summary, _ = run([tmp_path / "list.csv", tmp_path / "more.tsv"], tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds")
    assert sorted(ds.speakers) == ["voice0", "voice1", "voice2"] and summary["used"] == 9
    assert summary["skipped"] == {"missing": 1}
    assert any(r["id"].startswith("voice0/audio/spk000/") for r in ds.manifest)
    # one file under two speakers is a labelling mistake: counted once, and the report says which label won
    (tmp_path / "clash.tsv").write_text("path\tspeaker\n" + f"{tmp_path / 'audio/spk005/spk005_000.wav'}\tvoice9\n")
    summary, _ = run([tmp_path / "list.csv", tmp_path / "more.tsv", tmp_path / "clash.tsv"], tmp_path / "ds3")
    assert summary["used"] == 9 and summary["skipped"] == {"missing": 1, "two speakers": 1}
    assert "voice9" not in Dataset.open(tmp_path / "ds3").speakers
    (tmp_path / "bad.csv").write_text("file,who\na.wav,x\n")
    with pytest.raises(UserError, match="'path' and 'speaker'"):
        run(tmp_path / "bad.csv", tmp_path / "ds2")


def test_a_manifest_saved_by_excel_as_unicode_text_is_read(synthetic_corpus, tmp_path):
    # Excel's "Unicode Text" export is UTF-16 with a byte-order mark: refused as "'utf-8' codec can't decode"
    files = sorted(synthetic_corpus.rglob("*.wav"))[:3]
    text = "path\tspeaker\r\n" + "".join(f"{f}\t{f.parent.name}\r\n" for f in files)
    (tmp_path / "le.tsv").write_text(text, encoding="utf-16")  # Python writes the BOM, as Excel does
    (tmp_path / "be.tsv").write_bytes(b"\xfe\xff" + text.encode("utf-16-be"))
    for name in ("le.tsv", "be.tsv"):
        summary, _ = run(tmp_path / name, tmp_path / f"ds-{name}")
        assert summary["used"] == 3 and sorted(Dataset.open(tmp_path / f"ds-{name}").speakers) == ["spk000"]

    # a plain "CSV" export is in the system's 8-bit code page: refused, saying how to save it instead
    (tmp_path / "cp1252.csv").write_bytes("path,speaker,notes\r\na.wav,x,café\r\n".encode("cp1252"))
    with pytest.raises(UserError, match=r"cp1252.csv: not UTF-8 text \(byte 31: b'\\xe9'\); save it as UTF-8"):
        run(tmp_path / "cp1252.csv", tmp_path / "ds-cp1252")


def test_a_manifest_with_another_separator_than_its_extension_says_is_read(synthetic_corpus, tmp_path):
    # European Excel saves "CSV" with ';' (the comma is its decimal point), and a tab-separated export is often
    # named .csv: both were refused with "manifest needs 'path' and 'speaker' columns (found: path;speaker)"
    files = sorted(synthetic_corpus.rglob("*.wav"))[:3]
    (tmp_path / "semi.csv").write_text("path;speaker;notes\r\n" + "".join(f"{f};{f.parent.name};1,5 s, clean\r\n"
                                                                           for f in files))
    (tmp_path / "tabs.csv").write_text("path\tspeaker\n" + "".join(f"{f}\t{f.parent.name}\n" for f in files))
    for name in ("semi.csv", "tabs.csv"):
        summary, _ = run(tmp_path / name, tmp_path / f"ds-{name}")
        assert summary["used"] == 3 and sorted(Dataset.open(tmp_path / f"ds-{name}").speakers) == ["spk000"]
    (tmp_path / "pipes.csv").write_text("path|speaker\n" + "".join(f"{f}|{f.parent.name}\n" for f in files))
    with pytest.raises(UserError, match="'path' and 'speaker' columns"):  # only , ; and tab are guessed
        run(tmp_path / "pipes.csv", tmp_path / "ds-pipes")


def test_a_manifest_text_column_with_unicode_line_separators_keeps_its_rows(synthetic_corpus, tmp_path):
    # str.splitlines also breaks at form feeds, U+2028, U+0085...: a transcript holding one cut its row in two,
    # and every row of the manifest was skipped as a "bad manifest row"
    files = sorted(synthetic_corpus.rglob("*.wav"))[:3]
    (tmp_path / "list.csv").write_text("path,speaker,text\n" + "".join(
        f"{f},{f.parent.name},one\u2028two\x0cthree\x85four\x1cfive\n" for f in files))
    summary, _ = run(tmp_path / "list.csv", tmp_path / "ds")
    assert summary["used"] == 3 and summary["skipped"] == {}


def test_a_manifest_speaker_with_a_control_character_is_a_bad_row(synthetic_corpus, tmp_path):
    # "spk000\0" (a NUL from a C tool's fixed-width field) was accepted as a speaker of its own, printed exactly
    # like spk000 and splitting its utterances between two "voices"; an escape character reaches the terminal
    files = sorted(synthetic_corpus.rglob("*.wav"))[:4]
    speakers = ["spk000\0", "spk000", "\x1b[31mspk000", "spk000"]
    (tmp_path / "list.csv").write_text("path,speaker\n" + "".join(f"{f},{s}\n" for f, s in zip(files, speakers)))
    summary, _ = run(tmp_path / "list.csv", tmp_path / "ds")
    assert summary["used"] == 2 and list(Dataset.open(tmp_path / "ds").speakers) == ["spk000"]
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert [(r["path"], r["reason"]) for r in report["skipped"]] == [(f"{tmp_path / 'list.csv'}:2", "bad manifest row"),
                                                                    (f"{tmp_path / 'list.csv'}:4", "bad manifest row")]
    assert "control character" in report["skipped"][0]["detail"] and "\\x00" in report["skipped"][0]["detail"]


def test_one_speaker_name_in_two_unicode_spellings_is_one_speaker(tmp_path):
    # "café" as one code point (NFC) and as "e" + a combining accent (NFD, how macOS names files) print alike,
    # but were two speakers: one voice split in two, and --unseen-speakers found only the spelling typed
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    corpus = small_corpus(tmp_path / "c", speakers=3, utterances=3)
    os.rename(corpus / "spk000", corpus / nfc)
    (corpus / nfd).mkdir()
    os.rename(corpus / nfc / "spk000_002.wav", corpus / nfd / "spk000_002.wav")
    shutil.copy(corpus / nfc / "spk000_000.wav", corpus / nfd / "spk000_000.wav")  # one id twice: skipped, and why
    summary, _ = run(corpus, tmp_path / "ds", unseen_speakers=[nfd])
    ds = Dataset.open(tmp_path / "ds")
    assert sorted(ds.speakers) == sorted([nfc, "spk001", "spk002"]) and ds.speakers[nfc]["split"] == "unseen"
    assert sorted(r["id"] for r in ds.manifest if r["speaker"] == nfc) == [f"{nfc}/spk000_00{k}.wav" for k in range(3)]
    assert all(r["id"].split("/")[0] == r["speaker"] and Path(r["source"]).is_file() for r in ds.manifest)
    assert any(nfd in r["source"] for r in ds.manifest)  # the file keeps its own spelling, so it still opens
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert [r["reason"] for r in report["skipped"]] == ["duplicate id"] and summary["used"] == 9
    assert "another Unicode spelling" in report["skipped"][0]["detail"]
    assert ds.recipe.prepare.unseen_speakers == (nfc,)
    summary, text = run(corpus, tmp_path / "ds", unseen_speakers=[nfc])  # either spelling: the same settings
    assert "up to date" in text

    # a manifest's speaker column, in either spelling: one speaker too
    files = sorted((corpus / "spk001").glob("*.wav"))
    rows = "".join(f"{f},{name}\n" for f, name in zip(files, [nfc, nfd, nfd]))
    (tmp_path / "list.csv").write_text("path,speaker\n" + rows)
    summary, _ = run(tmp_path / "list.csv", tmp_path / "ds-list")
    assert summary["used"] == 3 and list(Dataset.open(tmp_path / "ds-list").speakers) == [nfc]


def test_long_files_are_split(tmp_path):
    sr = 16000
    speaker = make_speakers(1)[0]
    gap = np.zeros(int(0.3 * sr), dtype=np.float32)
    y = np.concatenate([np.concatenate([synth_utterance(speaker, 2.5, sr, seed=s)[0], gap]) for s in range(6)])
    (tmp_path / "c" / "solo").mkdir(parents=True)
    sf.write(tmp_path / "c" / "solo" / "long.wav", y, sr)  # 16.8 s; the demo recipe's maximum is 10 s
    run(tmp_path / "c", tmp_path / "ds")
    rows = Dataset.open(tmp_path / "ds").manifest
    assert len(rows) >= 2 and all(r["seconds"] <= 10.0 for r in rows)
    assert sorted(r["id"] for r in rows) == [f"solo/long.wav#{k}" for k in range(len(rows))]
    assert all(a["end"] <= b["start"] for a, b in zip(sorted(rows, key=lambda r: r["start"]),
                                                       sorted(rows, key=lambda r: r["start"])[1:]))


def test_strict_stops_at_the_first_bad_file(tmp_path):
    small_corpus(tmp_path / "c", speakers=2, utterances=2)
    write_bad_files(tmp_path / "c" / "bad")
    with pytest.raises(UserError) as err:
        run(tmp_path / "c", tmp_path / "ds", strict=True)
    name, reason = str(err.value).split(": ", 1)
    assert Path(name).parent.name == "bad" and reason.split(" (")[0] in {
        "empty file", "not audio", "truncated", "corrupt", "non-finite samples", "silent", "too short",
        "unsupported sample rate"}


def test_dataset_open_errors(prepared_dataset, tmp_path):
    with pytest.raises(UserError, match="no such dataset"):
        Dataset.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a dataset"):
        Dataset.open(tmp_path / "empty")
    shutil.copytree(prepared_dataset, tmp_path / "v9")
    config = json.loads((tmp_path / "v9" / "config.json").read_text())
    (tmp_path / "v9" / "config.json").write_text(json.dumps({**config, "version": 9}))
    with pytest.raises(UserError, match="version 9"):
        Dataset.open(tmp_path / "v9")
    (tmp_path / "v9" / "config.json").write_text(json.dumps(config))
    with open(tmp_path / "v9" / "features" / "mel.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(UserError, match="mel.npy"):
        Dataset.open(tmp_path / "v9")
    with pytest.raises(UserError, match="not a voiceclone dataset"):  # prepare never writes into a stranger
        run(tmp_path / "v9" / "train", tmp_path / "empty" / ".." / "v9" / "train")


@pytest.mark.parametrize("name, text, where", [("speakers.json", "[]", "speakers.json: damaged"),
                                               ("manifest.jsonl", "[1]\n", "manifest.jsonl: row 1 is damaged"),
                                               ("manifest.jsonl", '{"id": "a"}\n', "manifest.jsonl: row 1 is damaged")])
def test_valid_json_of_the_wrong_shape_in_a_dataset_is_one_line(prepared_dataset, tmp_path, name, text, where):
    shutil.copytree(prepared_dataset, tmp_path / "ds")
    (tmp_path / "ds" / name).write_text(text)
    with pytest.raises(UserError, match=where):
        Dataset.open(tmp_path / "ds")


@pytest.mark.parametrize("damage, where", [
    ("speakers of another dataset", "speakers.json: names other speakers"),
    ("speaker without counts", "speakers.json: the entry of 'spk001' is damaged"),
    ("row without seconds", "manifest.jsonl: row 1 is damaged")])
def test_dataset_metadata_its_readers_rely_on_is_checked_when_opened(prepared_dataset, tmp_path, damage, where):
    """Each opened, then was a KeyError traceback when `prepare` ran again (its summary reads them), or, a
    speakers.json copied from another dataset, recorded that dataset's speakers in every checkpoint."""
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    speakers = json.loads((ds / "speakers.json").read_text())
    if damage == "speakers of another dataset":
        speakers.pop("spk000")
    elif damage == "speaker without counts":
        speakers["spk001"].pop("utterances")
    else:
        rows = [json.loads(line) for line in (ds / "manifest.jsonl").read_text().splitlines()]
        rows[0].pop("seconds")
        (ds / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ds / "speakers.json").write_text(json.dumps(speakers))
    with pytest.raises(UserError, match=where):
        Dataset.open(ds)


@pytest.mark.parametrize("report", ["[1]", '{"skipped_by_reason": [1], "ignored_non_audio": "none"}'])
def test_preparing_an_up_to_date_dataset_with_an_odd_report_json_says_so(prepared_dataset, synthetic_corpus,
                                                                        tmp_path, report):
    """report.json only informs; one of another shape was an AttributeError traceback on the next prepare."""
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    (ds / "report.json").write_text(report)
    result = cli(str(synthetic_corpus), "--out", str(ds), "-j", "1")
    assert result.exit_code == 0 and "up to date" in result.output, result.output


@pytest.mark.parametrize("edit, where", [(lambda c: c.pop("fingerprint"), "'fingerprint'"),
                                         (lambda c: c.pop("recipe"), "'recipe'"),
                                         (lambda c: c.update(store=[1]), "'store'"),
                                         (lambda c: c["store"].update(frames="12"), "'store'"),
                                         (lambda c: c.update(splits=[]), "'splits'"),
                                         (lambda c: c["splits"]["val"].pop("utterances"), "split 'val'")])
def test_a_config_json_of_the_wrong_shape_is_one_line(prepared_dataset, tmp_path, edit, where):
    """Each was a KeyError, ValueError or AttributeError traceback."""
    shutil.copytree(prepared_dataset, tmp_path / "ds")
    config = json.loads((tmp_path / "ds" / "config.json").read_text())
    edit(config)
    (tmp_path / "ds" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"config.json: damaged \\({where}"):
        Dataset.open(tmp_path / "ds")


def test_a_recipe_edited_in_config_json_after_its_features_is_refused(prepared_dataset, tmp_path):
    """A sample rate edited into config.json opened, and trained a '22050 Hz' model on 16 kHz features without a
    word: its output played at the wrong speed and pitch. Settings the features do not depend on may change."""
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    config = json.loads((ds / "config.json").read_text())
    config["recipe"]["acoustic"]["train"]["lr"] = 1e-4
    (ds / "config.json").write_text(json.dumps(config))
    assert Dataset.open(ds).recipe.acoustic.train.lr == 1e-4
    config["recipe"]["audio"]["sample_rate"] = 22050
    (ds / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json: its recipe's audio or prepare settings are not the ones"):
        Dataset.open(ds)


@pytest.mark.parametrize("damage", ["past the end", "reversed", "row frames", "row dropped"])
def test_spans_that_disagree_with_the_store_or_manifest_are_one_line(prepared_dataset, tmp_path, damage):
    """A span past the store's end read silently short features; a reversed one, or a row whose frames are
    not its span's, was a traceback in evaluation."""
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    spans = np.load(ds / "train" / "spans.npy")
    rows = [json.loads(line) for line in (ds / "manifest.jsonl").read_text().splitlines()]
    if damage == "past the end":
        spans[-1, 1] = 10**9
    elif damage == "reversed":
        spans[0] = spans[0][::-1].copy()
    elif damage == "row frames":
        next(r for r in rows if r["split"] == "train")["frames"] = "12"
    else:
        rows.remove(next(r for r in rows if r["split"] == "train"))
    np.save(ds / "train" / "spans.npy", spans)
    (ds / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="train/spans.npy: .*damaged dataset"):
        Dataset.open(ds)


# ---------------------------------------------------------------------------------------------------
# The command line.


def cli(*args: str):
    return CliRunner().invoke(app, ["prepare", *args])


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_prepare_with_a_pool(synthetic_corpus, tmp_path):
    result = cli(str(synthetic_corpus), "--out", str(tmp_path / "ds"), "--workers", "2",
                 "--unseen-speakers", "spk000,spk003")
    assert result.exit_code == 0, result.output
    assert "unseen" in result.output and "total" in result.output
    ds = Dataset.open(tmp_path / "ds")
    assert {s for s, i in ds.speakers.items() if i["split"] == "unseen"} == {"spk000", "spk003"}
    assert len(ds.manifest) == 36


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    assert_one_line_error(cli(str(tmp_path / "missing"), "--out", str(tmp_path / "ds")), "missing", "no such")
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("hi")
    assert_one_line_error(cli(str(tmp_path / "texts"), "--out", str(tmp_path / "ds")), "no audio files")
    write_bad_files(tmp_path / "bad" / "spk")
    result = cli(str(tmp_path / "bad"), "--out", str(tmp_path / "ds"))
    assert_one_line_error(result, "no usable audio", "8 files")
    assert not (tmp_path / "ds").exists()  # nothing worth resuming was left behind
    small_corpus(tmp_path / "c", speakers=1, utterances=2)
    write_bad_files(tmp_path / "c" / "zz")
    assert_one_line_error(cli(str(tmp_path / "c"), "--out", str(tmp_path / "ds"), "--strict"), "zz")


def test_an_unclosed_quote_in_a_manifest_is_named_not_a_silent_loss(synthetic_corpus, tmp_path):
    # csv reads from an unclosed quote to the end of the file as one field: the report showed one bad row and
    # every file listed after it was dropped without a word
    files = sorted(synthetic_corpus.rglob("*.wav"))[:4]
    rows = [f"{f},{f.parent.name}\n" for f in files]
    rows[1] = f'"{files[1]},{files[1].parent.name}\n'
    (tmp_path / "list.csv").write_text("path,speaker\n" + "".join(rows))
    with pytest.raises(UserError, match=r"list.csv: row 3: a quote opened there is never closed, so the 2 line"):
        run(tmp_path / "list.csv", tmp_path / "ds")
    # a quoted transcript may hold line breaks: only path and speaker are held to one line
    (tmp_path / "ok.csv").write_text("path,speaker,text\n" + "".join(f'{f},{f.parent.name},"one\ntwo"\n'
                                                                     for f in files))
    summary, _ = run(tmp_path / "ok.csv", tmp_path / "ds-ok")
    assert summary["used"] == 4
