"""`voiceclone prepare`: folders or manifests of recordings -> a feature dataset (the format of store.py).

Per file, in a process pool: decode, mix to mono, resample, trim, split long files at quiet points, normalize
each piece's loudness (all through voiceclone.audio, the code path `synthesize` uses), then log-mel, F0,
energy and the audio itself. Every finished file lands in a cache entry inside the output folder, so an
interrupted run resumes where it stopped; a finished dataset is itself the cache of the next run, which
only processes new or changed files. Splits come from stable hashes (see `assign_splits`).
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from voiceclone import __version__
from voiceclone import audio as A
from voiceclone.config import AudioConfig, PrepareConfig, Recipe
from voiceclone.data import store
from voiceclone.data.store import SPLITS, Dataset, SplitWriter
from voiceclone.errors import UserError

# Bump when voiceclone.audio changes what it computes: caches and datasets of other versions then rebuild.
FEATURES_VERSION = 1
CACHE_DIR, LOCK_FILE, TMP_PREFIX = ".prepare-cache", ".prepare-lock", ".prepare-tmp-"
MANIFEST_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# A cache entry's <key>.bin: these arrays of all the file's utterances, back to back (frames from <key>.json)
CACHE_ARRAYS = (("mel", np.float16), ("f0", np.float32), ("energy", np.float32), ("audio", np.int16))
# A seen speaker's utterance is in `val` when its hash falls below val_per_speaker per thousand; see assign_splits.
VAL_RATE_PER_UNIT = 1e-3
PREPARE_KEYS = ("max_seconds", "min_seconds", "trim_top_db", "loudness_db")  # the settings features depend on
NO_USABLE = "no usable audio"
SPLIT_KEYS = ("split_salt", "val_per_speaker", "unseen_fraction", "unseen_speakers")


@dataclass(frozen=True)
class Source:
    """One input file. `file_id` ("<speaker>/<path below the speaker folder or the manifest>") names it in
    utterance ids and split hashes, so it must not depend on where the corpus is mounted."""

    path: str  # absolute
    speaker: str
    file_id: str
    size: int
    mtime_ns: int

    def key(self, features_hash: str) -> str:
        """Cache key: changes when the file or the feature settings change."""
        raw = json.dumps([self.path, self.size, self.mtime_ns, features_hash])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------
# Finding the inputs.


def discover(inputs: Sequence[Path | str], exclude: Path | None = None) -> tuple[list[Source], list[dict], Counter]:
    """Inputs -> (sources sorted by speaker and id, rows skipped before decoding, ignored files by extension).

    An input is a folder laid out ROOT/<speaker>/**/<file> (files directly in ROOT belong to a speaker named
    after ROOT), a .csv/.tsv manifest with `path` and `speaker` columns, or a single audio file (its
    folder names the speaker). A missing input or a folder without audio is a UserError.
    """
    if not inputs:
        raise UserError("no inputs given: name speaker folders or CSV/TSV manifests")
    found: list[Source] = []
    skipped: list[dict] = []
    ignored: Counter = Counter()
    excluded = exclude.resolve() if exclude is not None else None
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if p.is_dir():
            n = _scan_folder(p, found, ignored, excluded)
            if n == 0:
                raise UserError(f"{p}: no audio files found (looked for {', '.join(A.AUDIO_EXTENSIONS)})")
        elif p.suffix.lower() in MANIFEST_DELIMITERS:
            _read_manifest(p, found, skipped)
        elif A.is_audio_file(p):
            found.append(_source(p, p.resolve().parent.name, p.name))
        else:
            raise UserError(f"{p}: not a folder, a .csv/.tsv manifest or an audio file")
    by_path: dict[str, Source] = {}
    by_id: dict[tuple[str, str], Source] = {}
    sources = []
    for s in found:
        if s.path in by_path:  # the same file named twice (two inputs overlap): not an error
            continue
        by_path[s.path] = s
        if (s.speaker, s.file_id) in by_id:
            skipped.append(_skip_record(s.path, "duplicate id", f"{s.file_id} is also {by_id[s.speaker, s.file_id].path}",
                                        s.size, s.mtime_ns))
            continue
        by_id[s.speaker, s.file_id] = s
        sources.append(s)
    sources.sort(key=lambda s: (s.speaker, s.file_id))
    return sources, skipped, ignored


def _source(path: Path, speaker: str, rel: str) -> Source:
    st = path.stat()
    return Source(str(path.resolve()), speaker, f"{speaker}/{rel}", st.st_size, st.st_mtime_ns)


def _scan_folder(root: Path, found: list[Source], ignored: Counter, excluded: Path | None) -> int:
    root_name = root.resolve().name
    n = 0
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        # hidden folders hold tool state (.git, a dataset's cache), never recordings
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (excluded is None or (here / d).resolve() != excluded))
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if not A.is_audio_file(path):
                ignored[path.suffix.lower() or "(no extension)"] += 1
                continue
            parts = path.relative_to(root).parts
            speaker, rel = (root_name, parts[0]) if len(parts) == 1 else (parts[0], "/".join(parts[1:]))
            found.append(_source(path, speaker, rel))
            n += 1
    return n


def _read_manifest(path: Path, found: list[Source], skipped: list[dict]) -> None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read manifest ({e})") from None
    rows = list(csv.reader(text.splitlines(), delimiter=MANIFEST_DELIMITERS[path.suffix.lower()]))
    if not rows:
        raise UserError(f"{path}: empty manifest (expected a header with 'path' and 'speaker' columns)")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "speaker" not in header:
        raise UserError(f"{path}: manifest needs 'path' and 'speaker' columns (found: {', '.join(header) or 'none'})")
    ip, isp = header.index("path"), header.index("speaker")
    base = path.resolve().parent
    n = 0
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        n += 1
        rel = row[ip].strip() if ip < len(row) else ""
        speaker = row[isp].strip() if isp < len(row) else ""
        if not rel or not speaker:
            skipped.append(_skip_record(f"{path}:{line}", "bad manifest row", "empty path or speaker"))
            continue
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        if not file.is_file():
            skipped.append(_skip_record(str(file), "missing", f"listed in {path}:{line}"))
            continue
        resolved = file.resolve()
        name = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.as_posix()
        found.append(_source(file, speaker, name))
    if n == 0:
        raise UserError(f"{path}: manifest lists no files")


def _skip_record(path: str, reason: str, detail: str = "", size: int = -1, mtime_ns: int = -1) -> dict:
    return {"path": path, "reason": reason, "detail": detail, "size": size, "mtime_ns": mtime_ns}


# ---------------------------------------------------------------------------------------------------
# One file (runs in a worker process).


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core: intra-op threads would only fight over the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool


def process_file(path: str, key: str, cache_dir: str, audio_cfg: AudioConfig, prep: PrepareConfig) -> dict:
    """Decode and featurize one file into cache entry `key` (<key>.bin arrays, <key>.json metadata).

    Returns the metadata: ok, seconds (decoded length), and either pieces (one per utterance: start, end,
    frames, F0 statistics) or reason/detail. Bad input never raises: it comes back as a reason.
    """
    sr = audio_cfg.sample_rate
    meta: dict[str, Any] = {"key": key, "path": path, "version": FEATURES_VERSION, "seconds": 0.0}
    try:
        y = A.load_audio(path, sr)
        meta["seconds"] = len(y) / sr
        pieces, dropped = [], 0
        for start, _, piece in A.utterances(y, prep, sr, path):
            feats = A.features(piece, audio_cfg)
            if not (feats.f0 > 0).any():  # noise, a click, a breath: nothing to learn a voice from
                dropped += 1
                continue
            pieces.append((start, feats))
        if not pieces:
            raise A.AudioError(path, "no voiced speech")
    except A.AudioError as e:
        meta.update(ok=False, reason=e.reason, detail=e.detail)
    except Exception as e:  # a file that breaks a library must not end a long run; it is reported instead
        meta.update(ok=False, reason="failed", detail=f"{type(e).__name__}: {e}"[:200])
    else:
        with open(Path(cache_dir) / f"{key}.bin", "wb") as fh:
            for name, dtype in CACHE_ARRAYS:
                data = [A.to_int16(f.audio) if name == "audio" else getattr(f, name) for _, f in pieces]
                fh.write(np.ascontiguousarray(np.concatenate(data), dtype=dtype).data)
        meta.update(ok=True, dropped=dropped, pieces=[_piece_meta(start, f, audio_cfg) for start, f in pieces])
    # The .json, written after the arrays, marks the entry complete; a run killed halfway leaves no .json or an
    # unparsable one, and the file is simply processed again. No fsync or rename: they cost more than the
    # features of a short file, and the cache only saves time.
    with open(Path(cache_dir) / f"{key}.json", "w") as fh:
        json.dump(meta, fh)
    return meta


def _piece_meta(start: int, f: A.Features, cfg: AudioConfig) -> dict:
    voiced = f.f0[f.f0 > 0]
    logf = np.log(voiced.astype(np.float64))
    n = f.n_frames
    return {"start": int(start), "end": int(start + n * cfg.hop_length), "frames": n,
            "seconds": round(n * cfg.hop_length / cfg.sample_rate, 4),
            "voiced_frames": int(voiced.size), "voiced": round(voiced.size / max(n, 1), 4),
            "f0_median": round(A.voiced_median(f.f0) or 0.0, 2),
            "logf0_mean": round(float(logf.mean()), 5) if voiced.size else 0.0,
            "logf0_std": round(float(logf.std()), 5) if voiced.size else 0.0}


# ---------------------------------------------------------------------------------------------------
# Splits.


def _unit(salt: str, *parts: str) -> float:
    """A stable hash of the parts, uniform in [0, 1)."""
    digest = hashlib.sha256("\x1f".join((salt, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(utterances: dict[str, list[str]], prep: PrepareConfig,
                  previous: dict[str, str] | None = None) -> dict[str, str]:
    """utterances: speaker -> utterance ids. Returns utterance id -> 'train' | 'val' | 'unseen'.

    Speakers: the named prep.unseen_speakers if any; otherwise, among three or more speakers (and a
    fraction above 0), a speaker is unseen when hash(salt, speaker) < unseen_fraction, topped up with the
    lowest-hash others to max(1, round(unseen_fraction * speakers)), never all. Fewer than three: none. Utterances of a seen speaker: val when hash(salt, speaker, id) <
    val_per_speaker / 1000; a speaker left with fewer than min(val_per_speaker, n - 1) val utterances is
    topped up with its lowest-hash others. A single speaker therefore gets val utterances and no unseen.

    The threshold rules are pure functions of the hashes: adding files never moves what they decided.
    The two top-ups depend on what else exists, so `previous` (utterance id -> split, from the dataset
    being updated, with the same split settings) pins every utterance it holds, and top-ups choose only
    among new utterances and new speakers. Adding files to a dataset thus never moves an old utterance.
    """
    previous = previous or {}
    salt = prep.split_salt
    speakers = sorted(utterances)
    old_speaker_split = {}
    for spk in speakers:
        kinds = {previous[u] for u in utterances[spk] if u in previous}
        if kinds:
            old_speaker_split[spk] = "unseen" if "unseen" in kinds else "seen"
    if prep.unseen_speakers:
        unknown = sorted(set(prep.unseen_speakers) - set(speakers))
        if unknown:
            shown = ", ".join(speakers[:8]) + (", ..." if len(speakers) > 8 else "")
            raise UserError(f"unseen speaker(s) not in the inputs: {', '.join(unknown)} (speakers: {shown})")
        unseen = set(prep.unseen_speakers)
    else:
        # a speaker once held out stays held out: moving it into train would leak it into the model
        unseen = {s for s in speakers if old_speaker_split.get(s) == "unseen"}
        new = [s for s in speakers if s not in old_speaker_split]
        if len(speakers) >= 3 and prep.unseen_fraction > 0:
            unseen |= {s for s in new if _unit(salt, s) < prep.unseen_fraction}
            # the threshold alone draws a binomial count (1 of 41 happens); top up to the expected one
            want = max(1, round(prep.unseen_fraction * len(speakers)))
            free = sorted((s for s in new if s not in unseen), key=lambda s: _unit(salt, s))
            unseen.update(free[: max(0, want - len(unseen))])
            if unseen == set(speakers):  # never hold out everyone
                unseen.discard(max(new or speakers, key=lambda s: _unit(salt, s)))
    out: dict[str, str] = {}
    rate = prep.val_per_speaker * VAL_RATE_PER_UNIT
    for spk in speakers:
        ids = utterances[spk]
        if spk in unseen:
            out.update((u, "unseen") for u in ids)
            continue
        h = {u: _unit(salt, spk, u) for u in ids}
        val = {u for u in ids if previous.get(u) == "val" or (u not in previous and h[u] < rate)}
        want = min(prep.val_per_speaker, len(ids) - 1)
        if len(val) < want:
            free = sorted((u for u in ids if u not in val and u not in previous), key=h.__getitem__)
            val.update(free[: want - len(val)])
        out.update((u, "val" if u in val else "train") for u in ids)
    return out


# ---------------------------------------------------------------------------------------------------
# The command.


def features_hash(cfg: Recipe) -> str:
    """Hash of everything the stored features depend on."""
    data = {"audio": dataclasses.asdict(cfg.audio), "prepare": {k: getattr(cfg.prepare, k) for k in PREPARE_KEYS},
            "version": FEATURES_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def split_settings(prep: PrepareConfig) -> dict[str, Any]:
    return {k: sorted(getattr(prep, k)) if k == "unseen_speakers" else getattr(prep, k) for k in SPLIT_KEYS}


def prepare(inputs: Sequence[Path | str], out: Path | str, cfg: Recipe, workers: int = 0,
            unseen_speakers: Sequence[str] | None = None, strict: bool = False,
            console: Console | None = None) -> dict[str, Any]:
    """Build (or update) the dataset at `out` from `inputs`; returns the summary printed as a table.

    workers: processes (0 = the cores this process may use; 1 = no pool). unseen_speakers: hold out exactly
    these speakers (overrides the recipe's prepare.unseen_speakers and unseen_fraction). strict: stop with a
    UserError at the first bad file instead of skipping it.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    out = Path(out)
    named = tuple(unseen_speakers) if unseen_speakers else tuple(cfg.prepare.unseen_speakers)
    cfg = dataclasses.replace(cfg, prepare=dataclasses.replace(cfg.prepare, unseen_speakers=named))
    _check_out(out)
    sources, pre_skipped, ignored = discover(inputs, exclude=out)
    if strict and pre_skipped:
        raise UserError(_skip_line(pre_skipped[0]))
    fhash, splits_cfg = features_hash(cfg), split_settings(cfg.prepare)
    digest = hashlib.sha256(json.dumps([[dataclasses.astuple(s) for s in sources], pre_skipped, fhash, splits_cfg,
                                        store.FORMAT_VERSION]).encode()).hexdigest()[:16]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = _prepare_locked(sources, pre_skipped, ignored, out, cfg, fhash, splits_cfg, digest, workers,
                                  strict, console, started)
    except UserError as e:
        if created and str(e).startswith(NO_USABLE):  # nothing worth resuming: leave no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


def _prepare_locked(sources: list[Source], pre_skipped: list[dict], ignored: Counter, out: Path, cfg: Recipe,
                    fhash: str, splits_cfg: dict, digest: str, workers: int, strict: bool, console: Console,
                    started: float) -> dict[str, Any]:
    with _locked(out):
        for stale in out.glob(TMP_PREFIX + "*"):  # left by a run that was killed while assembling
            shutil.rmtree(stale, ignore_errors=True)
        existing, reusable = _open_previous(out, fhash, cfg, console)
        previous = existing if reusable else None
        if previous is not None and previous.config.get("inputs_digest") == digest:
            shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
            console.print(f"[green]{out}: up to date[/] ({len(sources)} files, same settings; fingerprint "
                          f"{previous.fingerprint}); nothing to do", highlight=False)
            summary = _summary_of(previous, started, up_to_date=True)
            print_summary(summary, console)
            return summary
        cache = out / CACHE_DIR
        cache.mkdir(exist_ok=True)
        metas, origin = _reusable(sources, previous, cache, fhash)
        todo = [s for s in sources if s.key(fhash) not in metas]
        _say_reuse(console, origin, len(todo), len(sources))
        if strict:
            for s in sources:
                m = metas.get(s.key(fhash))
                if m is not None and not m["ok"]:
                    raise UserError(_skip_line(m))
        speed = _run(todo, metas, cache, cfg, fhash, workers, strict, console)

        units = [(s, metas[s.key(fhash)]) for s in sources]
        skipped = pre_skipped + [_skip_record(s.path, m["reason"], m.get("detail", ""), s.size, s.mtime_ns)
                                 for s, m in units if not m["ok"]]
        usable = [(s, m) for s, m in units if m["ok"]]
        if not usable:
            reasons = Counter(r["reason"] for r in skipped)
            raise UserError(f"{NO_USABLE}: all {len(sources) + len(pre_skipped)} files were skipped ("
                            + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")")
        # splits stay pinned across feature rebuilds: only the split settings themselves redraw them
        same_split_cfg = existing is not None and existing.config.get("split_settings") == splits_cfg
        if existing is not None and not same_split_cfg:
            console.print("split settings changed since the last run: splits drawn afresh", style="yellow")
        pinned = {r["id"]: r["split"] for r in existing.manifest} if same_split_cfg else None
        utt_ids = _utterance_ids(usable)
        by_speaker: dict[str, list[str]] = defaultdict(list)
        for (s, _), ids in zip(usable, utt_ids):
            by_speaker[s.speaker].extend(ids)
        split_of = assign_splits(dict(by_speaker), cfg.prepare, pinned)
        report = _report(sources, pre_skipped, skipped, ignored, usable, origin)
        fingerprint = _assemble(out, cfg, usable, utt_ids, split_of, previous, report, fhash, splits_cfg, digest,
                                console)
        shutil.rmtree(cache, ignore_errors=True)
    summary = _summary_of(Dataset.open(out), started, up_to_date=False, report=report)
    summary["speed"] = {**speed, "x_real_time": round(speed["hours"] * 3600 / max(speed["seconds"], 1e-9), 1)}
    _warn_single_utterance_speakers(summary, console)
    if speed["files"]:
        console.print(f"processed {speed['files']} files ({speed['hours']:.3f} h of audio) in {speed['seconds']:.1f} s "
                      f"with {speed['workers']} worker(s): {summary['speed']['x_real_time']:.0f}x real time",
                      highlight=False)
    console.print(f"[green]wrote {out}[/] (fingerprint {fingerprint})", highlight=False)
    print_summary(summary, console)
    return summary


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / LOCK_FILE).exists() or (out / CACHE_DIR).exists()
        if not ours and (out / store.CONFIG).is_file():
            try:
                ours = json.loads((out / store.CONFIG).read_text()).get("format") == store.FORMAT
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                ours = False
        if not ours:
            raise UserError(f"{out}: exists and is not a voiceclone dataset; choose a new or empty folder for --out")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One prepare at a time per dataset folder."""
    with open(out / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another prepare is writing this dataset") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_previous(out: Path, fhash: str, cfg: Recipe, console: Console) -> tuple[Dataset | None, bool]:
    """(the complete dataset already at `out` or None, whether its features can be reused); says why not."""
    if not (out / store.CONFIG).is_file():
        return None, False
    try:
        prev = Dataset.open(out)
    except UserError as e:
        console.print(f"previous dataset not reusable ({e}); rebuilding", style="yellow", highlight=False)
        return None, False
    if prev.config.get("features_hash") == fhash:
        return prev, True
    console.print(f"settings changed since the last run ({_differences(prev, cfg)}): rebuilding all features",
                  style="yellow", highlight=False)
    return prev, False


def _differences(prev: Dataset, cfg: Recipe) -> str:
    old, new = prev.recipe, cfg
    diffs = [f"audio.{k}: {getattr(old.audio, k)} -> {getattr(new.audio, k)}"
             for k in (f.name for f in dataclasses.fields(AudioConfig)) if getattr(old.audio, k) != getattr(new.audio, k)]
    diffs += [f"prepare.{k}: {getattr(old.prepare, k)} -> {getattr(new.prepare, k)}"
              for k in PREPARE_KEYS if getattr(old.prepare, k) != getattr(new.prepare, k)]
    version = prev.config.get("features_version")
    if version != FEATURES_VERSION:
        diffs.append(f"feature code version {version} -> {FEATURES_VERSION}")
    return "; ".join(diffs) or "feature settings"


def _reusable(sources: list[Source], previous: Dataset | None, cache: Path,
              fhash: str) -> tuple[dict[str, dict], Counter]:
    """Metadata of files already done, by cache key: from the previous dataset or from cache entries."""
    metas: dict[str, dict] = {}
    origin: Counter = Counter()
    old_rows: dict[tuple, list[tuple[str, int, dict]]] = defaultdict(list)
    old_skips: dict[tuple, dict] = {}
    if previous is not None:
        for name in SPLITS:
            for i, r in enumerate(previous.split(name).rows):
                old_rows[r["source"], r["source_size"], r["source_mtime_ns"]].append((name, i, r))
        report = _read_json(previous.path / store.REPORT) or {}
        for rec in report.get("skipped", []):
            old_skips[rec["path"], rec.get("size"), rec.get("mtime_ns")] = rec
    for s in sources:
        key, ident = s.key(fhash), (s.path, s.size, s.mtime_ns)
        if ident in old_rows:
            rows = sorted(old_rows[ident], key=lambda t: t[2]["start"])
            metas[key] = {"ok": True, "seconds": None, "previous": [(n, i) for n, i, _ in rows],
                          "pieces": [{k: r[k] for k in ("start", "end", "frames", "seconds", "voiced_frames", "voiced",
                                                        "f0_median", "logf0_mean", "logf0_std")} for _, _, r in rows]}
            origin["previous"] += 1
        elif ident in old_skips:
            rec = old_skips[ident]
            metas[key] = {"ok": False, "reason": rec["reason"], "detail": rec.get("detail", ""), "path": s.path}
            origin["previous"] += 1
        else:
            meta = _read_json(cache / f"{key}.json")
            if (meta and meta.get("key") == key and meta.get("version") == FEATURES_VERSION
                    and (not meta["ok"] or (cache / f"{key}.bin").is_file())):
                metas[key] = meta
                origin["cache"] += 1
    return metas, origin


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _say_reuse(console: Console, origin: Counter, todo: int, total: int) -> None:
    parts = []
    if origin["previous"]:
        parts.append(f"{origin['previous']} from the existing dataset")
    if origin["cache"]:
        parts.append(f"{origin['cache']} from an interrupted run")
    if parts:
        console.print(f"reusing {' and '.join(parts)}; {todo} of {total} files to process", highlight=False)


def _workers(requested: int, jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(requested if requested > 0 else cores, jobs))


def _run(todo: list[Source], metas: dict[str, dict], cache: Path, cfg: Recipe, fhash: str, workers: int,
         strict: bool, console: Console) -> dict[str, float]:
    """Process `todo` into cache entries (in a pool when more than one worker), filling `metas`.

    Returns files, hours of audio decoded, wall seconds and workers, for the closing line. The progress
    bars are transient: on a terminal they vanish when done, in a log they print nothing, so an error
    stays the only line.
    """
    if not todo:
        return {"files": 0, "hours": 0.0, "seconds": 0.0, "workers": 0}
    started = time.perf_counter()
    n_workers = _workers(workers, len(todo))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("files  {task.fields[hours]:.2f} h audio"), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("prepare", total=len(todo), hours=0.0)
    hours = 0.0

    def done(meta: dict) -> None:
        nonlocal hours
        metas[meta["key"]] = meta
        hours += (meta.get("seconds") or 0.0) / 3600
        progress.update(task, advance=1, hours=hours)
        if strict and not meta["ok"]:
            raise UserError(_skip_line(meta))

    jobs = [(s.path, s.key(fhash), str(cache), cfg.audio, cfg.prepare) for s in todo]
    threads = torch.get_num_threads()
    try:
        # one intra-op thread, as in a worker: the clips are too short for more to pay off
        torch.set_num_threads(1)
        # built once here, the mel basis and the compiled F0 path finder are inherited by forked workers
        A.features(np.zeros(8 * cfg.audio.hop_length, dtype=np.float32), cfg.audio)
        if n_workers == 1:
            with progress:
                for job in jobs:
                    done(process_file(*job))
        else:
            _run_pool(jobs, n_workers, done, progress)
    except KeyboardInterrupt:
        done_files = sum(1 for _ in cache.glob("*.json"))  # workers may have finished more than reported back
        console.print(f"interrupted: {done_files} processed files are kept in {cache.parent}; run the same command "
                      f"again to resume", style="yellow", highlight=False)
        raise
    finally:
        torch.set_num_threads(threads)
    return {"files": len(todo), "hours": hours, "seconds": time.perf_counter() - started, "workers": n_workers}


def _run_pool(jobs: list[tuple], n_workers: int, done: Callable[[dict], None], progress: Progress) -> None:
    # fork (Linux): workers start in milliseconds and share the parent's imported modules and warm caches;
    # torch is safe here because each worker drops to one intra-op thread before it computes anything.
    # Elsewhere fork is unsafe (macOS system libraries), so workers are spawned.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker)
    try:
        pool.submit(int).result()  # start the workers before the progress display starts its thread
        with progress:
            pending = set()
            it = iter(jobs)
            window = 4 * n_workers  # bounded, so the parent never holds the whole corpus's futures
            for job in it:
                pending.add(pool.submit(process_file, *job))
                if len(pending) >= window:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        done(f.result())
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _skip_line(rec: dict) -> str:
    detail = rec.get("detail") or ""
    return f"{rec['path']}: {rec['reason']}" + (f" ({detail})" if detail else "")


def _utterance_ids(usable: list[tuple[Source, dict]]) -> list[list[str]]:
    """Per file, the ids of its utterances: the file id, with #k appended when the file was split."""
    return [[s.file_id] if len(m["pieces"]) == 1 else [f"{s.file_id}#{k}" for k in range(len(m["pieces"]))]
            for s, m in usable]


def _report(sources: list[Source], pre_skipped: list[dict], skipped: list[dict], ignored: Counter,
            usable: list[tuple[Source, dict]], origin: Counter) -> dict[str, Any]:
    return {"files": len(sources) + len(pre_skipped), "used": len(usable), "skipped_count": len(skipped),
            "skipped_by_reason": dict(Counter(r["reason"] for r in skipped).most_common()),
            "skipped": skipped,
            "pieces_dropped": sum(m.get("dropped", 0) for _, m in usable),
            "ignored_non_audio": dict(sorted(ignored.items())),
            "reused_from_dataset": origin["previous"], "resumed_from_cache": origin["cache"],
            "processed": len(sources) - origin["previous"] - origin["cache"]}


def _assemble(out: Path, cfg: Recipe, usable: list[tuple[Source, dict]], utt_ids: list[list[str]],
              split_of: dict[str, str], previous: Dataset | None, report: dict, fhash: str,
              splits_cfg: dict, digest: str, console: Console) -> str:
    """Write the dataset into a temporary folder inside `out`, then move it into place (config.json last)."""
    hop = cfg.audio.hop_length
    totals = {name: [0, 0] for name in SPLITS}
    for (_, m), ids in zip(usable, utt_ids):
        for piece, uid in zip(m["pieces"], ids):
            totals[split_of[uid]][0] += 1
            totals[split_of[uid]][1] += piece["frames"]
    tmp = out / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writers = {name: SplitWriter(tmp / name, n, frames, cfg.audio) for name, (n, frames) in totals.items()}
    rows = []
    speakers: dict[str, dict[str, Any]] = {}
    n_utts = sum(n for n, _ in totals.values())
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("utterances"), TimeElapsedColumn(), console=console, transient=True)
    with progress:
        task = progress.add_task("write", total=n_utts)
        for (s, m), ids in zip(usable, utt_ids):
            arrays = _piece_arrays(s, m, out / CACHE_DIR, previous, hop, cfg.audio.n_mels)
            for piece, uid, data in zip(m["pieces"], ids, arrays):
                split = split_of[uid]
                writers[split].append(data["mel"], data["f0"], data["energy"], data["audio"])
                rows.append({"id": uid, "speaker": s.speaker, "split": split, "source": s.path,
                             "source_size": s.size, "source_mtime_ns": s.mtime_ns, **piece})
                sp = speakers.setdefault(s.speaker, {"split": "unseen" if split == "unseen" else "train",
                                                     "utterances": 0, "seconds": 0.0, "voiced_frames": 0,
                                                     "_sum": 0.0, "_sumsq": 0.0})
                sp["utterances"] += 1
                sp["seconds"] += piece["seconds"]
                n = piece["voiced_frames"]
                sp["voiced_frames"] += n
                sp["_sum"] += n * piece["logf0_mean"]
                sp["_sumsq"] += n * (piece["logf0_std"] ** 2 + piece["logf0_mean"] ** 2)
            progress.update(task, advance=len(ids))
    for w in writers.values():
        w.close()
    for sp in speakers.values():
        n, s1, s2 = sp["voiced_frames"], sp.pop("_sum"), sp.pop("_sumsq")
        mean = s1 / n if n else 0.0
        sp["logf0_mean"] = round(mean, 5)
        sp["logf0_std"] = round(math.sqrt(max(s2 / n - mean**2, 0.0)), 5) if n else 0.0
        sp["seconds"] = round(sp["seconds"], 3)
    manifest_text = store.write_lines(tmp / store.MANIFEST, rows)
    store.write_json(tmp / store.SPEAKERS, dict(sorted(speakers.items())))
    store.write_json(tmp / store.REPORT, report)
    recipe = cfg.to_dict()
    fingerprint = store.fingerprint(recipe, manifest_text)
    config = {"format": store.FORMAT, "version": store.FORMAT_VERSION, "voiceclone": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fingerprint": fingerprint,
              "features_hash": fhash, "features_version": FEATURES_VERSION, "split_settings": splits_cfg,
              "inputs_digest": digest,
              "splits": {name: {"utterances": n, "frames": f} for name, (n, f) in totals.items()},
              "recipe": recipe}
    store.write_json(tmp / store.CONFIG, config)
    _commit(tmp, out)
    return fingerprint


def _piece_arrays(s: Source, m: dict, cache: Path, previous: Dataset | None, hop: int,
                  n_mels: int) -> list[dict[str, np.ndarray]]:
    """The stored arrays of each of a file's utterances: from its cache entry or from the previous dataset."""
    if "previous" in m:
        return [previous.split(name).read(i) for name, i in m["previous"]]
    frames = sum(p["frames"] for p in m["pieces"])
    sizes = {"mel": frames * n_mels, "f0": frames, "energy": frames, "audio": frames * hop}
    raw = np.fromfile(cache / f"{m['key']}.bin", dtype=np.uint8)
    if raw.size != sum(sizes[k] * np.dtype(t).itemsize for k, t in CACHE_ARRAYS):  # only a machine crash does this
        (cache / f"{m['key']}.json").unlink(missing_ok=True)
        raise UserError(f"{s.path}: its cache entry was damaged and is removed; run prepare again")
    data, at = {}, 0
    for name, dtype in CACHE_ARRAYS:
        data[name] = np.frombuffer(raw, dtype=dtype, count=sizes[name], offset=at)
        at += sizes[name] * np.dtype(dtype).itemsize
    data["mel"] = data["mel"].reshape(frames, n_mels)
    out, a = [], 0
    for piece in m["pieces"]:
        b = a + piece["frames"]
        out.append({"mel": data["mel"][a:b], "f0": data["f0"][a:b], "energy": data["energy"][a:b],
                    "audio": data["audio"][a * hop : b * hop]})
        a = b
    return out


def _commit(tmp: Path, out: Path) -> None:
    """Move the assembled dataset from `tmp` into `out`. config.json goes first and comes back last, so at
    every instant `out` is either complete or recognisably incomplete (the next run resumes from the cache)."""
    (out / store.CONFIG).unlink(missing_ok=True)
    store.fsync_dir(out)
    for name in (*SPLITS, store.MANIFEST, store.SPEAKERS, store.REPORT):
        src, dst = tmp / name, out / name
        if src.is_dir():
            if dst.exists():
                os.rename(dst, tmp / f"old-{name}")
            os.rename(src, dst)
        else:
            os.replace(src, dst)
    os.replace(tmp / store.CONFIG, out / store.CONFIG)
    store.fsync_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Summary.


def _summary_of(ds: Dataset, started: float, up_to_date: bool, report: dict | None = None) -> dict[str, Any]:
    report = report if report is not None else (_read_json(ds.path / store.REPORT) or {})
    splits = {}
    for name in SPLITS:
        rows = ds.split(name).rows
        splits[name] = {"speakers": len({r["speaker"] for r in rows}), "utterances": len(rows),
                        "hours": round(sum(r["seconds"] for r in rows) / 3600, 4)}
    return {"out": str(ds.path), "fingerprint": ds.fingerprint, "up_to_date": up_to_date,
            "files": report.get("files", 0), "used": report.get("used", 0),
            "processed": 0 if up_to_date else report.get("processed", 0),
            "reused": report.get("reused_from_dataset", 0), "resumed": report.get("resumed_from_cache", 0),
            "skipped": report.get("skipped_by_reason", {}), "ignored_non_audio": report.get("ignored_non_audio", {}),
            "speakers": len(ds.speakers), "splits": splits,
            "hours": round(sum(v["hours"] for v in splits.values()), 4),
            "single_utterance_speakers": sorted(k for k, v in ds.speakers.items() if v["utterances"] == 1),
            "speed": {"files": 0, "hours": 0.0, "seconds": 0.0, "workers": 0, "x_real_time": 0.0},
            "wall_seconds": round(time.perf_counter() - started, 2)}


def _warn_single_utterance_speakers(summary: dict, console: Console) -> None:
    single = summary["single_utterance_speakers"]
    if single:
        shown = ", ".join(single[:5]) + (", ..." if len(single) > 5 else "")
        console.print(f"{len(single)} speaker(s) have a single utterance ({shown}): training must use it as its "
                      f"own reference", style="yellow", highlight=False)


def print_summary(summary: dict, console: Console) -> None:
    table = Table(title=f"dataset {summary['out']}", title_justify="left")
    for col in ("split", "speakers", "utterances", "hours"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, row in summary["splits"].items():
        table.add_row(name, str(row["speakers"]), str(row["utterances"]), f"{row['hours']:.3f}")
    table.add_row("total", str(summary["speakers"]), str(sum(r["utterances"] for r in summary["splits"].values())),
                  f"{summary['hours']:.3f}", style="bold")
    console.print(table)
    if summary["skipped"]:
        skipped = Table(title="files skipped (details in report.json)", title_justify="left")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        for reason, n in summary["skipped"].items():
            skipped.add_row(reason, str(n))
        console.print(skipped)
