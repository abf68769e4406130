"""`voiceclone evaluate` end to end on a briefly trained tiny run, and its history-only mode, on CPU."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from voiceclone import audio as A
from voiceclone.evaluation import metrics
from voiceclone.inference.bundle import export, load_model
from voiceclone.cli import app
from voiceclone.config import load_recipe
from voiceclone.evaluation.convergence import STATUSES
from voiceclone.data.prepare import prepare
from voiceclone.data.store import Dataset
from voiceclone.evaluation.verifier import Verifier
from voiceclone.evaluation.report import measure
from voiceclone.train.command import train
from helpers import history, one_line_error, small_filesystem

QUIET = Console(quiet=True)
FAST = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=32", "acoustic.train.warmup_steps=2",
        "vocoder.train.batch_size=4", "vocoder.train.segment_frames=16", "vocoder.train.warmup_steps=2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNSEEN = ("spk001", "spk003")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_dataset) -> Path:
    """5 synthetic voices (2 of them unseen), 4 utterances each; both stages trained for 2 epochs; a bundle."""
    root = tmp_path_factory.mktemp("evaluate")
    make_dataset(root, speakers=5, utterances=4, seconds=1.2, seed=5, unseen_speakers=UNSEEN)
    train(root / "ds", root / "run", stage="all", overrides=FAST, epochs=2, early_stop=False, console=QUIET)
    export(root / "run", root / "model.safetensors")
    return root


def evaluate_cli(*args):
    """`voiceclone evaluate ARGS` through the CLI runner; an exception other than the exit is raised."""
    result = runner.invoke(app, ["evaluate", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def invoke(*args) -> tuple[int, str]:
    result = evaluate_cli(*args)
    return result.exit_code, result.output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_summary(m: dict, unit: str) -> None:
    assert set(m) == {"mean", "std", "median", "n", "unit"} and m["unit"] == unit, m
    assert m["n"] >= 1 and math.isfinite(m["mean"]), m


@pytest.fixture(scope="module")
def run_report(trained, tmp_path_factory) -> dict:
    """One `evaluate` of the trained run with --out and --plot: the report, the terminal output, the paths."""
    out = tmp_path_factory.mktemp("report")
    report_path, png = out / "report.json", out / "curves.png"
    code, output = invoke("--model", trained / "run", "--data", trained / "ds", "--pairs", 5, "--max-utterances", 6,
                          "--out", report_path, "--plot", png)
    assert code == 0, output
    return {"report": json.loads(report_path.read_text()), "output": output, "png": png, "run": trained / "run"}


def test_report_names_what_was_evaluated(run_report, trained):
    report, run = run_report["report"], run_report["run"]
    assert report["format"] == "voiceclone-evaluation" and report["split"] == "unseen"
    assert report["model"]["source"] == str(run) and report["model"]["kind"] == "run"
    assert report["model"]["sha256"] == {"acoustic/best.pt": sha256(run / "acoustic/best.pt"),
                                         "vocoder/best.pt": sha256(run / "vocoder/best.pt")}
    assert report["model"]["acoustic_epoch"] in (1, 2) and report["model"]["vocoder_epoch"] in (1, 2)
    ds = Dataset.open(trained / "ds")
    assert report["dataset"] == {"path": str(trained / "ds"), "fingerprint": ds.fingerprint, "split": "unseen",
                                 "utterances": len(ds.split("unseen")), "speakers": 2}
    assert report["speaker_encoder"]["which"] == "own" and report["speaker_encoder"]["source"] == str(run)


def test_report_validation_is_the_number_training_wrote(run_report):
    report, run = run_report["report"], run_report["run"]
    acoustic_rows, vocoder_rows = history(run, "acoustic"), history(run, "vocoder")
    best_acoustic = acoustic_rows[report["model"]["acoustic_epoch"] - 1]
    best_vocoder = vocoder_rows[report["model"]["vocoder_epoch"] - 1]
    val = report["validation"]
    assert val["acoustic"]["losses"]["mel"]["value"] == pytest.approx(best_acoustic["unseen_loss"], rel=1e-5)
    assert val["vocoder"]["losses"]["mel"]["value"] == pytest.approx(best_vocoder["unseen_loss"], rel=1e-5)
    assert val["acoustic"]["losses"]["mel"]["unit"] and val["vocoder"]["losses"]["f0_rmse_cents"]["unit"] == "cents"
    assert val["vocoder"]["input"] == "dataset mel" and val["vocoder"]["finetuned_on_acoustic"] is False


def test_report_reconstruction_and_copy_synthesis(run_report):
    report = run_report["report"]
    units = {"f0_rmse_cents": "cents", "f0_rmse_hz": "Hz", "vuv_error": "fraction of frames",
             "gpe": "fraction of voiced frames", "f0_corr": "Pearson r", "mcd_db": "dB",
             "speaker_similarity": "cosine"}
    for section in ("reconstruction", "copy_synthesis"):
        rec = report[section]
        assert rec["utterances"] == 6 and rec["speakers"] == 2 and len(rec["items"]) == 6
        assert rec["mcd"] == {"order": 13, "c0": "excluded", "alignment": "frame-aligned by construction (no DTW)"}
        assert set(rec["metrics"]) == set(units)
        for key in ("f0_rmse_cents", "f0_rmse_hz", "vuv_error", "mcd_db", "speaker_similarity"):
            check_summary(rec["metrics"][key], units[key])
        assert all(0 <= item["vuv_error"] <= 1 and item["mcd_db"] > 0 for item in rec["items"])
    # the same utterances, with the same references, in both sections
    assert [i["utterance"] for i in report["reconstruction"]["items"]] == \
        [i["utterance"] for i in report["copy_synthesis"]["items"]]
    assert all(i["reference"] != i["utterance"] for i in report["reconstruction"]["items"])


def test_report_zero_shot_pairs(run_report):
    zs = run_report["report"]["zero_shot"]
    assert zs["pairs"] == 5 and len(zs["items"]) == 5 and zs["speakers"] == 2
    assert all(p["source_speaker"] != p["target_speaker"] and p["source_speaker"] in UNSEEN for p in zs["items"])
    nearer = zs["metrics"]["nearer_target"]
    assert nearer["unit"] == "fraction of pairs" and nearer["n"] == 5 and 0 <= nearer["share"] <= 1
    assert nearer["share"] == pytest.approx(np.mean([p["nearer_target"] for p in zs["items"]]))
    for key in ("similarity_to_target", "similarity_to_source"):
        check_summary(zs["metrics"][key], "cosine")
    check_summary(zs["metrics"]["f0_rmse_cents"], "cents")
    check_summary(zs["metrics"]["pitch_shift"], "semitones")


def test_report_convergence_plot_and_timing(run_report):
    report, png = run_report["report"], run_report["png"]
    conv = report["convergence"]
    assert conv["available"] and list(conv["stages"]) == ["acoustic", "vocoder"]
    for stage in conv["stages"].values():
        assert stage["status"] in STATUSES and stage["epochs"] == 2 and stage["recommendation"]
    assert report["plot"] == {"written": True, "path": str(png)}
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert set(report["timing_seconds"]) >= {"validation", "reconstruction", "copy_synthesis", "zero_shot", "total"}


def test_report_is_printed_on_the_terminal(run_report):
    for text in ("reconstruction", "copy_synthesis", "zero_shot", "nearer_target", "too early", "speaker encoder: own"):
        assert text in run_report["output"], text


def test_a_bundle_judged_by_an_external_encoder(trained, tmp_path):
    bundle = trained / "model.safetensors"
    code, output = invoke("-m", bundle, "-d", trained / "ds", "--pairs", 2, "--max-utterances", 2,
                          "--speaker-encoder", trained / "run", "--out", tmp_path / "r.json",
                          "--plot", tmp_path / "c.png")
    assert code == 0, output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["kind"] == "bundle" and report["model"]["sha256"] == {bundle.name: sha256(bundle)}
    assert report["speaker_encoder"]["which"] == "external"
    assert report["speaker_encoder"]["source"] == str(trained / "run")
    assert report["speaker_encoder"]["sha256"]["acoustic/best.pt"] == sha256(trained / "run/acoustic/best.pt")
    assert report["convergence"]["available"] is False and "bundle" in report["convergence"]["reason"]
    assert report["plot"]["written"] is False and not (tmp_path / "c.png").exists()
    assert report["zero_shot"]["pairs"] == 2 and report["reconstruction"]["utterances"] == 2


def test_measure_is_exact_on_the_dataset_itself(trained):
    """The utterance's own audio scored against its own features: frames line up, so the errors vanish."""
    ds = Dataset.open(trained / "ds")
    s, cfg = ds.split("unseen"), ds.audio
    y, f0, mel = A.from_int16(s.audio(0)), np.array(s.f0(0)), np.array(s.mel(0), dtype=np.float32)
    same = measure(y, f0, cfg, mel)
    assert same["f0_rmse_cents"] < 1.0 and same["vuv_error"] == 0.0 and same["gpe"] == 0.0
    assert same["mcd_db"] < 0.2 and same["f0_corr"] > 0.999 and same["frames"] == s.n_frames(0)
    octave = measure(y, f0 / 2, cfg)  # asked for an octave lower than it is
    assert octave["f0_rmse_cents"] == pytest.approx(1200, abs=1.0) and octave["gpe"] == 1.0
    assert "mcd_db" not in octave


def test_an_external_encoder_hears_audio_at_its_own_rate(trained):
    model = load_model(trained / "run", need_vocoder=False)
    verifier = Verifier(model.acoustic, model.recipe.audio, {})
    y = A.from_int16(Dataset.open(trained / "ds").split("unseen").audio(0))
    y22 = librosa.resample(y, orig_sr=16000, target_sr=22050, res_type="soxr_hq")
    assert metrics.cosine_similarity(verifier.embed(y, 16000), verifier.embed(y22, 22050)) > 0.99


def rows_for(status: str) -> list[dict]:
    """A history the detector (default settings: window 3, patience 5) classifies as `status`."""
    e = np.arange(1, 31)
    if status == "too early":
        unseen, train_loss = np.array([1.0, 0.9]), np.array([1.1, 1.0])
    elif status == "improving":
        unseen, train_loss = 0.3 + np.exp(-e[:12] / 4), 0.25 + np.exp(-e[:12] / 4)
    elif status == "converged":
        unseen = np.where(e < 12, 0.5 + 0.5 * (12 - e) / 12, 0.5)[:20]
        train_loss = (0.4 + 0.5 * np.exp(-e / 5))[:20]
    elif status == "overfitting":
        unseen, train_loss = (0.5 + 0.002 * (e - 12.0) ** 2)[:16], (0.8 / e)[:16]
    else:
        unseen = np.array([1.0, 0.8, 0.7, 0.6, math.nan])
        train_loss = np.array([1.0, 0.8, 0.7, 0.6, 0.55])
    return [{"epoch": i + 1, "train_loss": float(t), "val_loss": float(0.95 * u), "unseen_loss": float(u)}
            for i, (u, t) in enumerate(zip(unseen, train_loss))]


@pytest.mark.parametrize("status", STATUSES)
def test_history_only_mode_reports_every_status(status, tmp_path):
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    rows = rows_for(status)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = invoke("--run", run, "--out", tmp_path / "status.json", "--plot", tmp_path / "curves.png")
    assert code == 0, output
    report = json.loads((tmp_path / "status.json").read_text())
    stage = report["convergence"]["stages"]["acoustic"]
    assert stage["status"] == status and stage["epochs"] == len(rows)
    assert stage["recommendation"] and stage["evidence"]["epochs"] == len(rows)
    assert (stage["stop_epoch"] is not None) == (status in ("converged", "overfitting", "diverged"))
    assert f"{status} (unseen_loss)" in output and "train_loss" in output
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "reconstruction" not in report and "model" not in report


def test_curves_leave_out_a_loss_the_run_never_measured(tmp_path):
    """The demo holds no seen-speaker validation clips: its val_loss column was all dashes, unexplained."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    rows = [{**r, "val_loss": None} for r in rows_for("improving")]
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = invoke("--run", run)
    assert code == 0, output
    assert "val_loss" not in output and "unseen_loss" in output and "no val split" in output


def test_history_only_mode_reads_a_run_still_training(tmp_path):
    """A last row cut short by a writer mid-line is ignored; the vocoder stage is listed after the acoustic."""
    run = tmp_path / "run"
    for stage in ("vocoder", "acoustic"):
        (run / stage).mkdir(parents=True)
        text = "".join(json.dumps(r) + "\n" for r in rows_for("improving"))
        (run / stage / "history.jsonl").write_text(text + '{"epoch": 13, "train_lo')
    code, output = invoke("--run", run)
    assert code == 0, output
    assert output.index("acoustic") < output.index("vocoder") and "improving" in output


def test_model_without_data_says_it_reports_the_history_only(tmp_path):
    """`--model RUN` without --data printed only the curves, as if the evaluation had measured nothing."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for("improving")))
    code, output = invoke("--model", run)
    assert code == 0 and "without --data" in output and "--data DATASET" in output, output
    for spelling in ("--run", "--run-dir"):  # --run-dir as train spells it under torchrun
        code, output = invoke(spelling, run)
        assert code == 0 and "without --data" not in output and "improving" in output, output


@pytest.mark.parametrize("name", ["curves.svg", "curves.pdf", "curves.txt"])
def test_a_plot_named_for_another_format_is_one_line(tmp_path, name):
    """The curves were written as PNG under any name: a curves.svg that no SVG viewer opens, exit 0."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for("improving")))
    one_line_error(evaluate_cli("--run", run, "--plot", tmp_path / name), name, "PNG")
    assert not (tmp_path / name).exists()
    code, output = invoke("--run", run, "--plot", tmp_path / "curves.PNG")
    assert code == 0 and (tmp_path / "curves.PNG").read_bytes().startswith(PNG_SIGNATURE), output


def fill(fs: Path) -> None:
    """Fill the file system at `fs` up to its last block."""
    import contextlib

    with open(fs / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_a_report_that_does_not_fit_keeps_the_previous_one(tmp_path):
    """report.json was rewritten in place: on a full disk the last report was lost, and a truncated one took its
    name."""
    from voiceclone.errors import UserError
    from voiceclone.evaluation.report import write_report

    with small_filesystem(tmp_path / "fs", 64 * 1024) as fs:
        (fs / "report.json").write_text('{"previous": true}\n')
        fill(fs)
        with pytest.raises(UserError, match="no space left .* writing .*report.json"):
            write_report({"figures": ["x" * 100] * 100}, fs / "report.json")
        assert (fs / "report.json").read_text() == '{"previous": true}\n'
        assert sorted(p.name for p in fs.iterdir()) == ["filler", "report.json"]


def test_a_report_and_a_plot_of_one_path_is_one_line(tmp_path):
    """The JSON report silently overwrote the figure written to the same path, exit 0."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for("improving")))
    one_line_error(evaluate_cli("--run", run, "--out", tmp_path / "x.png", "--plot", tmp_path / "x.png"),
                   "--out and --plot", "x.png")


def test_a_report_onto_what_is_evaluated_is_one_line(tmp_path):
    """--out model.safetensors replaced the bundle with the report, and --out RUN/acoustic/history.jsonl the run's
    history, exit 0. A report or figure written before may be replaced."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for("improving")))
    kept = (run / "acoustic" / "history.jsonl").read_bytes()
    one_line_error(evaluate_cli("--run", run, "--out", run / "acoustic" / "history.jsonl"), "--out", "would replace",
                   "--run")
    one_line_error(evaluate_cli("--run", run, "--plot", run / "acoustic" / "history.png", "--out",
                                run / "acoustic" / "history.jsonl"), "--out", "would replace")
    assert (run / "acoustic" / "history.jsonl").read_bytes() == kept
    bundle = tmp_path / "model.safetensors"
    bundle.write_bytes(b"weights")
    one_line_error(evaluate_cli("--model", bundle, "--data", tmp_path / "ds", "--out", bundle), "--out",
                   "would replace the --model")
    assert bundle.read_bytes() == b"weights"
    for _ in range(2):
        code, output = invoke("--run", run, "--out", run / "report.json", "--plot", run / "curves.png")
        assert code == 0, output


def test_a_plot_with_a_baseline_is_one_line(tmp_path):
    """A comparison draws no curves: --plot was silently not written, exit 0."""
    one_line_error(evaluate_cli("--model", tmp_path / "a", "--baseline", tmp_path / "b", "--data", tmp_path / "d",
                           "--plot", tmp_path / "c.png"), "--plot", "--baseline")


def test_an_explicit_unseen_split_with_a_baseline_is_one_line(tmp_path, monkeypatch):
    """--split unseen was the default, so an explicit one was silently compared on val instead."""
    import voiceclone.evaluation.evaluate as E

    args = ("--model", tmp_path / "a", "--baseline", tmp_path / "b", "--data", tmp_path / "d")
    one_line_error(evaluate_cli(*args, "--split", "unseen"), "--split unseen", "--split val")
    used = []
    monkeypatch.setattr(E, "compare_models", lambda *a, split, **k: used.append(split) or {})
    for extra, split in (((), "val"), (("--split", "val"), "val"), (("--split", "train"), "train")):
        code, output = invoke(*args, *extra)
        assert code == 0 and used[-1] == split, (extra, output, used)


def test_a_comparisons_bad_options_are_named(tmp_path):
    """--max-utterances 0 compared nothing, after loading both models, and blamed the dataset: 'no held-out
    utterance has a speaker with training clips'; a misspelt --split was 'unknown split', naming no option."""
    args = ("--model", tmp_path / "a", "--baseline", tmp_path / "b", "--data", tmp_path / "d")
    for count in ("0", "-2"):
        one_line_error(evaluate_cli(*args, "--max-utterances", count), f"--max-utterances {count}", "at least 1")
    one_line_error(evaluate_cli(*args, "--split", "vla"), "--split 'vla'", "train, val, unseen")


def test_bad_inputs_exit_2_with_one_line(trained, tmp_path):
    ds, run = trained / "ds", trained / "run"
    empty = tmp_path / "empty_run"
    empty.mkdir()
    one_line_error(evaluate_cli("--run", empty), "no training history")
    one_line_error(evaluate_cli("--run", tmp_path / "missing"), "run folder not found")
    one_line_error(evaluate_cli("--run", trained / "model.safetensors"), "bundle has no training history")
    one_line_error(evaluate_cli("--pairs", 3), "--data")
    # a run whose history is gone: the models load, the convergence part cannot be made
    bare = tmp_path / "bare_run"
    for stage in ("acoustic", "vocoder"):
        (bare / stage).mkdir(parents=True)
        shutil.copy(run / stage / "best.pt", bare / stage / "best.pt")
    one_line_error(evaluate_cli("-m", bare, "-d", ds), "no training history")
    one_line_error(evaluate_cli("-m", run, "-d", ds, "--split", "test"), "--split")

    # the same voices prepared at another sample rate
    other = tmp_path / "ds22k"
    prepare([trained / "corpus"], other, load_recipe("demo", ["audio.sample_rate=22050"]), workers=2,
            unseen_speakers=UNSEEN, console=QUIET)
    one_line_error(evaluate_cli("-m", run, "-d", other), "another audio config", "audio.sample_rate: 16000 vs 22050")

    # one held-out speaker: no pairs of different speakers can be drawn from it
    few = tmp_path / "corpus3"
    for name in ("spk000", "spk001", "spk002"):
        shutil.copytree(trained / "corpus" / name, few / name)
    prepare([few], tmp_path / "ds1", load_recipe("demo"), workers=2, unseen_speakers=("spk001",), console=QUIET)
    one_line_error(evaluate_cli("-m", run, "-d", tmp_path / "ds1"), "split 'unseen' has 1 speaker")


def test_report_independent_judges(run_report):
    """With the `eval` extra, the zero-shot outputs are judged by Resemblyzer, Whisper and DNSMOS, each named."""
    pytest.importorskip("resemblyzer")
    pytest.importorskip("faster_whisper")
    pytest.importorskip("speechmos")
    ind = run_report["report"]["independent"]
    assert ind["available"] and ind["pairs"] == 5
    assert "Resemblyzer" in ind["judges"]["speaker_similarity"] and "Whisper" in ind["judges"]["wer"]
    assert "DNSMOS" in ind["judges"]["dnsmos"]
    for key in ("secs_to_target", "secs_to_source", "dnsmos_ovrl"):
        check_summary(ind["zero_shot"][key], ind["zero_shot"][key]["unit"])
    assert -1 <= ind["zero_shot"]["secs_to_target"]["mean"] <= 1
    assert 1 <= ind["copy_synthesis"]["dnsmos_ovrl"]["mean"] <= 5
    assert 0 <= ind["zero_shot"]["nearer_target"]["share"] <= 1
    # the corpus WER: edits over all the pairs' words, not a mean of per-pair rates
    items = [r["independent"] for r in run_report["report"]["zero_shot"]["items"]]
    words = sum(r["words"] for r in items)  # the synthetic voices may say no word Whisper knows
    assert ind["zero_shot"]["wer_out_pooled"]["n"] == words
    pooled = ind["zero_shot"]["wer_out_pooled"]["value"]
    assert pooled is None if words == 0 else pooled == pytest.approx(sum(r["word_edits"] for r in items) / words)
    assert "wer_out_pooled" in run_report["output"]
    assert "independent judge, speaker_similarity: Resemblyzer" in " ".join(run_report["output"].split())


def test_judges_asked_for_but_missing_is_one_line(trained, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "resemblyzer", None)  # as if the extra were not installed
    code, output = invoke("--model", trained / "run", "--data", trained / "ds", "--pairs", 1, "--max-utterances", 1,
                          "--judges")
    assert code == 2 and 'pip install "voiceclone[eval]"' in output, output
    assert "Traceback" not in output
@pytest.mark.parametrize("columns", ["40", "80"])
def test_convergence_table_keeps_its_header_and_nothing_is_cut_off(columns, tmp_path):
    """Not a terminal (CliRunner), narrow or default width: headers print, wide text wraps, no "…"."""
    run = tmp_path / "run"
    (run / "acoustic").mkdir(parents=True)
    (run / "acoustic" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for("converged")))
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--out", str(tmp_path / "r.json")],
                           env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "…" not in out
    lines = out[out.index("convergence:"):].splitlines()
    head = lines[next(i for i, x in enumerate(lines) if x.startswith("┏")) + 1:
                 next(i for i, x in enumerate(lines) if x.startswith("┡"))]
    cells = [x.strip("┃").split("┃") for x in head]  # a folded header spans lines: join each column's pieces
    headers = ["".join("".join(c[k].split()) for c in cells) for k in range(len(cells[0]))]
    assert headers == ["stage", "epochs", "status", "best@epoch", "monitor", "earlystop"], head
    recommendation = json.loads((tmp_path / "r.json").read_text())["convergence"]["stages"]["acoustic"]["summary"]
    assert "".join(recommendation.split()) in "".join(out.split())  # every word of it, wrapped, none cut


@pytest.mark.parametrize("columns", [40, 80])
def test_report_table_keeps_metric_names_whole_at_80_columns(columns):
    """At 80 columns the name column folded "vocoder f0_rmse_cents" into a line that read as a section header;
    narrower, a long unit was cut with "…"."""
    from voiceclone.evaluation.printing import print_report

    summary = {"mean": 0.7122, "std": 0.0951, "median": 0.6692, "n": 4, "unit": "cosine"}
    report = {"model": {"source": "run"}, "dataset": {"path": "ds"}, "split": "unseen",
              "speaker_encoder": {"which": "own", "source": "run"},
              "validation": {"vocoder": {"segments": 448, "losses": {"f0_rmse_cents": {"value": 86.68,
                                                                                        "unit": "cents"}}}},
              "reconstruction": {"metrics": {}}, "copy_synthesis": {"metrics": {}},
              "zero_shot": {"metrics": {"similarity_to_target": summary}, "pairs": 4},
              "independent": {"available": True, "judges": {}, "copy_synthesis": {},
                              "zero_shot": {"wer_out_pooled": {"value": 0.4783, "n": 23, "unit":
                                            "word error rate over all words (n = words)"}}},
              "convergence": {"available": False, "reason": "no history"}}
    console = Console(width=columns, record=True)
    print_report(report, console)
    shown = console.export_text()
    assert "…" not in shown
    if columns >= 80:
        assert "vocoder f0_rmse_cents" in shown and "similarity_to_target" in shown, shown


def test_more_pairs_than_the_split_can_make_are_capped(trained, tmp_path):
    """--pairs 99999999999 cycled over the split's utterances with random targets and never ended."""
    code, output = invoke("--model", trained / "run", "--data", trained / "ds", "--pairs", 10**11,
                          "--max-utterances", 1, "--no-judges", "--out", tmp_path / "r.json")
    assert code == 0, output
    n = len(Dataset.open(trained / "ds").split("unseen"))  # 2 unseen speakers: each utterance into the other one
    assert json.loads((tmp_path / "r.json").read_text())["zero_shot"]["pairs"] == n
    assert f"note: {n} zero-shot pairs, not {10**11}: capped" in " ".join(output.split())
