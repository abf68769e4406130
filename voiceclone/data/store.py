"""The dataset on disk: one append-only feature store, per split an index into it, read through memory maps.

Layout of a dataset folder (docs/architecture.md section 4; data/README.md describes it for users):

    config.json       format name and version, the full resolved recipe, hashes, counts per split and store
    manifest.jsonl    one utterance a line, splits in any order, each split's rows in its index order
    speakers.json     per speaker: split, utterances, seconds, log-F0 mean/std
    report.json       files skipped and why, counts
    features/         every utterance's features, in the order `prepare` produced them
        store.json    what the features were computed with (features hash, hop, n_mels)
        journal.jsonl one line per input file whose features are stored (or that was skipped), in store order
        mel.npy       [frames, n_mels] float16, log-mel (audio.log_mel), time-major
        f0.npy        [frames] float32, Hz, 0 = unvoiced
        energy.npy    [frames] float32, log frame energy
        audio.npy     [frames * hop] int16
    <split>/          for split in train, val, unseen (always all three, possibly empty)
        spans.npy     [n, 2] int64: utterance i is frames spans[i, 0]:spans[i, 1] of features/
                      (audio samples hop times those)

`prepare` writes each file's features once, straight into the store (FeatureStore), and never copies them
again: a split is only an index. Resuming and updating need no cache either: the journal says which files
are in the store and where, and a later run appends after them. The store may hold more than the dataset
uses (files since removed or changed); `prepare` compacts it when that waste passes half.

config.json is written last and removed first when a dataset is replaced, so a folder without it is an
interrupted `prepare`, never a dataset: `Dataset.open` refuses it and `prepare` resumes it. The .npy headers
declare the frames of the last complete dataset; a run appends past them, and its commit rewrites them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from voiceclone.config import AudioConfig, Recipe, recipe_from_dict
from voiceclone.errors import UserError, writing
from voiceclone.files import TMP_SUFFIX, write_atomic, write_synced

FORMAT = "voiceclone-dataset"
FORMAT_VERSION = 2
SPLITS = ("train", "val", "unseen")
CONFIG, MANIFEST, SPEAKERS, REPORT = "config.json", "manifest.jsonl", "speakers.json", "report.json"
ROW_KEYS = frozenset({"id", "speaker", "split", "frames", "seconds"})  # what the readers of a manifest row rely on
FEATURES, STORE_META, JOURNAL, SPANS = "features", "store.json", "journal.jsonl", "spans.npy"
ARRAYS = ("mel", "f0", "energy", "audio")
HEADER_BYTES = 128  # fixed .npy header size, so a growing store's header is rewritten in place
FLUSH_SECONDS = 5.0  # journal lines reach the disk (after the arrays they describe) at least this often


def fingerprint(recipe: dict[str, Any], manifest_text: str) -> str:
    """Short stable hash of the configuration and the manifest: two datasets with the same one are the same."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "recipe": recipe},
                                  sort_keys=True).encode())
    h.update(_utf8(manifest_text))  # the bytes of manifest.jsonl
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# Reading.


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran or dtype.hasobject:
            raise ValueError("not a plain C-order array")
        return tuple(shape), dtype, f.tell()


def _array(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file (an empty array when it has no elements: mmap needs a byte)."""
    shape, dtype, _ = _npy_header(path)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


class Split:
    """One split's utterances. Accessors return views into memory-mapped arrays: nothing is loaded up front.

    Arrays are mapped on first use and dropped when pickled, so a Split sent to a loader worker maps the
    files again there instead of copying them.
    """

    def __init__(self, path: Path, name: str, rows: list[dict], hop: int, features: Path | None = None) -> None:
        self.path, self.name, self.rows, self.hop = Path(path), name, rows, hop
        self.features = Path(features) if features is not None else self.path.parent / FEATURES
        self._maps: dict[str, np.ndarray] | None = None
        self._spans: np.ndarray | None = None
        self._headers: dict[str, tuple] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, i: int) -> str:
        """How reports name utterance i: split/id."""
        return f"{self.name}/{self.rows[i].get('id', i)}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    def _m(self, key: str) -> np.ndarray:
        if self._maps is None:
            self._maps = {k: _array(self.features / f"{k}.npy") for k in ARRAYS}
        return self._maps[key]

    def _span(self, i: int) -> tuple[int, int]:
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"utterance {i} out of range for split '{self.name}' ({len(self.rows)})")
        if self._spans is None:  # small: [n, 2], read whole
            spans = np.load(self.path / SPANS, allow_pickle=False)
            if spans.shape != (len(self.rows), 2):
                raise UserError(f"{self.path / SPANS}: spans do not match the manifest (damaged dataset)")
            self._spans = spans
        a, b = self._spans[i % len(self.rows)]
        return int(a), int(b)

    def speaker(self, i: int) -> str:
        return self.rows[i]["speaker"]

    def n_frames(self, i: int) -> int:
        return int(self.rows[i]["frames"])

    def mel(self, i: int) -> np.ndarray:
        """[frames, n_mels] float16 log-mel, a view into the memory map."""
        a, b = self._span(i)
        return self._m("mel")[a:b]

    def f0(self, i: int) -> np.ndarray:
        """[frames] float32, Hz, 0 where unvoiced."""
        a, b = self._span(i)
        return self._m("f0")[a:b]

    def energy(self, i: int) -> np.ndarray:
        """[frames] float32 log frame energy."""
        a, b = self._span(i)
        return self._m("energy")[a:b]

    def audio(self, i: int) -> np.ndarray:
        """[frames * hop] int16 (audio.from_int16 gives [-1, 1])."""
        a, b = self._span(i)
        return self._m("audio")[a * self.hop : b * self.hop]

    def read(self, i: int) -> dict[str, np.ndarray]:
        """Copies of utterance i's arrays (mel, f0, energy, audio), read with plain file reads, so reading a
        large dataset through this does not count its pages as this process's resident memory."""
        a, b = self._span(i)
        if self._headers is None:
            self._headers = {k: _npy_header(self.features / f"{k}.npy") for k in ARRAYS}
        return read_frames(self.features, self._headers, a, b, self.hop)


def read_frames(folder: Path, headers: dict[str, tuple], a: int, b: int, hop: int) -> dict[str, np.ndarray]:
    """Frames a:b of the store in `folder` (headers: _npy_header of each array), read with plain file reads."""
    out = {}
    for key, lo, hi in (("mel", a, b), ("f0", a, b), ("energy", a, b), ("audio", a * hop, b * hop)):
        shape, dtype, start = headers[key]
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        flat = np.fromfile(folder / f"{key}.npy", dtype=dtype, count=(hi - lo) * row,
                           offset=start + lo * row * dtype.itemsize)
        if flat.size != (hi - lo) * row:
            raise UserError(f"{folder / f'{key}.npy'}: shorter than its journal says (damaged store)")
        out[key] = flat.reshape((hi - lo,) + tuple(shape[1:]))
    return out


class Dataset:
    """A prepared dataset folder. `Dataset.open(path)`; then `.split('train' | 'val' | 'unseen')`."""

    def __init__(self, path: Path, config: dict[str, Any], recipe: Recipe, speakers: dict[str, dict],
                 manifest: list[dict]) -> None:
        self.path, self.config, self.recipe = path, config, recipe
        self.audio: AudioConfig = recipe.audio
        self.speakers, self.manifest = speakers, manifest
        self.fingerprint: str = config["fingerprint"]
        self._splits: dict[str, Split] = {}

    @classmethod
    def open(cls, path: Path | str) -> "Dataset":
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such dataset folder")
        if not path.is_dir():
            raise UserError(f"{path}: not a dataset folder (a file)")
        config_path = path / CONFIG
        if not config_path.is_file():
            if (path / MANIFEST).exists() or any(path.glob(".prepare-*")):
                raise UserError(f"{path}: incomplete dataset (an interrupted prepare); run prepare again to finish it")
            raise UserError(f"{path}: not a dataset (no {CONFIG}); create one with `voiceclone prepare`")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{config_path}: unreadable ({e})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise UserError(f"{path}: not a voiceclone dataset ({CONFIG} has no format '{FORMAT}')")
        if config.get("version") != FORMAT_VERSION:
            raise UserError(f"{path}: dataset format version {config.get('version')!r} is not the supported "
                            f"{FORMAT_VERSION}; prepare it again with this version")
        _check_config(config_path, config)
        recipe = recipe_from_dict(config["recipe"], source=str(config_path))
        _check_features_hash(config_path, config, recipe)
        try:
            speakers = json.loads((path / SPEAKERS).read_text(encoding="utf-8"))
            lines = (path / MANIFEST).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: incomplete or damaged dataset ({e})") from None
        manifest = []
        for n, line in enumerate(lines, 1):  # one by one: the error names the file's line, not "line 1" of it
            if line.strip():
                try:
                    manifest.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path / MANIFEST}: line {n} is damaged ({e.msg}: column {e.colno}); "
                                    "prepare the dataset again") from None
        # valid JSON of the wrong shape would fail far from here, in training or evaluation, as a traceback
        if not isinstance(speakers, dict) or not all(isinstance(v, dict) for v in speakers.values()):
            raise UserError(f"{path / SPEAKERS}: damaged (expected an object of speakers, got "
                            f"{type(speakers).__name__})")
        for n, row in enumerate(manifest, 1):
            if (not isinstance(row, dict) or not ROW_KEYS <= row.keys() or row["split"] not in SPLITS
                    or isinstance(row["seconds"], bool) or not isinstance(row["seconds"], (int, float))):
                raise UserError(f"{path / MANIFEST}: row {n} is damaged (expected an object with "
                                f"{', '.join(sorted(ROW_KEYS))} and a split of {', '.join(SPLITS)})")
        # speakers.json is read by name (the summary's utterance counts, the speakers a checkpoint records for
        # resume): an entry without its counts was a KeyError traceback when `prepare` ran again, and one copied
        # from another dataset recorded that dataset's speakers in every checkpoint
        named = {str(row["speaker"]) for row in manifest}
        if set(speakers) != named:
            raise UserError(f"{path / SPEAKERS}: names other speakers than {MANIFEST} ({len(speakers)} vs "
                            f"{len(named)}; from another dataset?); prepare the dataset again")
        bad = next((k for k, v in speakers.items() if v.get("split") not in ("train", "unseen")
                    or not _count(v.get("utterances"))), None)
        if bad is not None:
            raise UserError(f"{path / SPEAKERS}: the entry of {bad!r} is damaged (expected a split of train or "
                            "unseen and a whole number of utterances); prepare the dataset again")
        _check_arrays(path, config, recipe.audio)
        _check_spans(path, config["store"]["frames"], manifest)
        return cls(path, config, recipe, speakers, manifest)

    def split(self, name: str) -> Split:
        """The split's utterances in array order; the same object on every call (an empty Split if none)."""
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}' (known: {', '.join(SPLITS)})")
        if name not in self._splits:
            rows = [r for r in self.manifest if r["split"] == name]
            self._splits[name] = Split(self.path / name, name, rows, self.audio.hop_length, self.path / FEATURES)
        return self._splits[name]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {sum(r['split'] == s for r in self.manifest)}" for s in SPLITS)
        return f"Dataset({str(self.path)!r}, {len(self.speakers)} speakers, {counts}, {self.fingerprint})"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_config(config_path: Path, config: dict[str, Any]) -> None:
    """The entries of config.json that opening and reading rely on, of the right JSON type: a damaged or
    hand-edited one was a KeyError or AttributeError traceback."""
    splits = config.get("splits")
    store = config.get("store")
    problem = ("'fingerprint' must be a string" if not isinstance(config.get("fingerprint"), str) else
               "'recipe' must be an object" if not isinstance(config.get("recipe"), dict) else
               "'store' must be an object with a whole number of 'frames'"
               if not isinstance(store, dict) or not _count(store.get("frames")) else
               "'splits' must be an object" if not isinstance(splits, dict) else
               next((f"split '{name}' must be an object with a whole number of 'utterances'" for name in SPLITS
                     if not isinstance(splits.get(name), dict) or not _count(splits[name].get("utterances"))), None))
    if problem:
        raise UserError(f"{config_path}: damaged ({problem}); prepare the dataset again")


def _check_features_hash(config_path: Path, config: dict[str, Any], recipe: Recipe) -> None:
    """The recipe's audio and prepare settings are the ones the features were computed with: a sample rate
    edited into config.json trained a '22050 Hz' model on 16 kHz features, silently (its output played at the
    wrong speed and pitch). Hashed with the dataset's own feature code version, so a newer one still opens it."""
    from voiceclone.data.worker import features_hash  # imports torch: only here, where a dataset is opened

    if config.get("features_hash") != features_hash(recipe, config.get("features_version")):
        raise UserError(f"{config_path}: its recipe's audio or prepare settings are not the ones its features were "
                        "computed with (edited by hand?); run `voiceclone prepare` on it again to recompute them")


def _check_arrays(path: Path, config: dict[str, Any], cfg: AudioConfig) -> None:
    """The store's arrays exist with the frames config.json promises and are not cut short; every split has its
    spans, within the store."""
    frames = config["store"]["frames"]
    expect = {"mel": ((frames, cfg.n_mels), np.float16), "f0": ((frames,), np.float32),
              "energy": ((frames,), np.float32), "audio": ((frames * cfg.hop_length,), np.int16)}
    for key, (shape, dtype) in expect.items():
        _check_npy(path / FEATURES / f"{key}.npy", shape, dtype)
    for name in SPLITS:
        _check_npy(path / name / SPANS, (config["splits"][name]["utterances"], 2), np.int64)


def _check_spans(path: Path, frames: int, manifest: list[dict]) -> None:
    """Every split's spans lie within the store and hold the frames their manifest rows say: a span past the
    store's end, reversed or of another length gave silently short features or a traceback in evaluation."""
    for name in SPLITS:
        rows = [r for r in manifest if r["split"] == name]
        p = path / name / SPANS
        spans = np.load(p, allow_pickle=False)
        if len(spans) != len(rows):
            raise UserError(f"{p}: {len(spans)} spans for the manifest's {len(rows)} '{name}' rows (damaged dataset; "
                            "prepare it again)")
        for row, (a, b) in zip(rows, spans.tolist()):
            if not 0 <= a < b <= frames or row["frames"] != b - a or isinstance(row["frames"], bool):
                raise UserError(f"{p}: the span of {row.get('id', '?')!r} ({a}:{b}) does not hold its manifest row's "
                                f"{row['frames']!r} frames within the store's {frames} (damaged dataset; prepare it "
                                "again)")


def _check_npy(p: Path, shape: tuple[int, ...], dtype: Any) -> None:
    try:
        got_shape, got_dtype, start = _npy_header(p)
        size = p.stat().st_size
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: missing or unreadable ({e}); prepare the dataset again") from None
    if got_shape != shape or got_dtype != np.dtype(dtype):
        raise UserError(f"{p}: shape {got_shape} {got_dtype}, expected {shape} {np.dtype(dtype)} "
                        f"(damaged dataset; prepare it again)")
    need = start + int(np.prod(shape)) * got_dtype.itemsize
    if size < need:
        raise UserError(f"{p}: truncated ({size} bytes, {need} needed for {shape} {got_dtype}); "
                        "damaged dataset, prepare it again")


# ---------------------------------------------------------------------------------------------------
# Writing.


def _write_header(f: Any, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """A .npy (version 1.0) header padded to exactly HEADER_BYTES, at the start of the open file `f`."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    if len(body) + 10 != HEADER_BYTES:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    f.seek(0)
    f.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1"))


class FeatureStore:
    """The append-only feature arrays of a dataset and their journal (see the module docstring).

    One writer (the `prepare` parent) appends a file's utterances back to back with `add`, or records a
    skipped file with `skip`; either way the file's state (a JSON-able dict with its `key`) goes to the
    journal with `at`, the frame where its utterances start. Journal lines are written only after the
    arrays they describe are on disk (`flush`, at least every FLUSH_SECONDS), so after a crash every line
    read back describes data that is there. `open` keeps the journal's entries and cuts whatever the arrays
    hold past the last one.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], entries: list[dict[str, Any]], frames: int) -> None:
        self.folder, self.meta, self.entries, self.frames = folder, meta, entries, frames
        self.hop, self.n_mels = int(meta["hop"]), int(meta["n_mels"])
        self._files: dict[str, Any] | None = None
        self._pending: list[str] = []
        self._flushed = time.monotonic()

    @classmethod
    def create(cls, folder: Path, features_hash: str, cfg: AudioConfig) -> "FeatureStore":
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"features_hash": features_hash, "hop": cfg.hop_length, "n_mels": cfg.n_mels}
        for key, dtype, shape in _layout(0, cfg.hop_length, cfg.n_mels):
            with open(folder / f"{key}.npy", "wb") as f:
                _write_header(f, dtype, shape)
        (folder / JOURNAL).write_bytes(b"")
        write_json(folder / STORE_META, meta)
        return cls(folder, meta, [], 0)

    @classmethod
    def open(cls, folder: Path, cfg: AudioConfig | None = None) -> "FeatureStore | None":
        """The store in `folder` with its journaled entries, or None when there is none to use. cfg: the audio
        settings its features hash stands for; a store.json that disagrees with them is not used."""
        try:
            meta = json.loads((folder / STORE_META).read_text(encoding="utf-8"))
            raw = (folder / JOURNAL).read_bytes()
            sizes = {k: (folder / f"{k}.npy").stat().st_size for k in ARRAYS}
            hop, n_mels = meta["hop"], meta["n_mels"]
            declared = _npy_header(folder / "f0.npy")[0][0]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        # an edited or damaged store.json: a hop of 0 divided by zero, another hop or n_mels cut the arrays below
        # at the wrong sizes (the dataset they hold was lost), a 'committed' that is not a count was a TypeError
        if (not all(_count(v) and v > 0 for v in (hop, n_mels)) or not _count(meta.get("committed", 0))
                or (cfg is not None and (hop, n_mels) != (cfg.hop_length, cfg.n_mels))):
            return None
        row_bytes = {"mel": 2 * n_mels, "f0": 4, "energy": 4, "audio": 2 * hop}
        room = min((sizes[k] - HEADER_BYTES) // row_bytes[k] for k in ARRAYS)  # whole frames in every array
        lines, entries, frames = raw.split(b"\n"), [], 0
        for line in lines:
            try:
                entry = json.loads(line)
                end = entry["at"] + sum(p["frames"] for p in entry.get("pieces", [])) if entry["ok"] else frames
            except (ValueError, KeyError, TypeError):
                break  # a torn last line: it and anything after it are redone
            if entry["ok"] and (entry["at"] != frames or end > room):
                break
            entries.append(entry)
            frames = end
        if frames < declared:  # the journal lost entries a complete dataset uses: never cut into those
            return None
        store = cls(folder, meta, entries, frames)
        kept = b"".join(line + b"\n" for line in lines[: len(entries)])
        store._truncate(kept if kept != raw else None)
        return store

    def _truncate(self, journal: bytes | None) -> None:
        """Cut the arrays back to the entries kept, and the journal to `journal` when given."""
        for key, dtype, shape in _layout(self.frames, self.hop, self.n_mels):
            path = self.folder / f"{key}.npy"
            size = HEADER_BYTES + int(np.prod(shape)) * np.dtype(dtype).itemsize
            if path.stat().st_size > size:
                os.truncate(path, size)
        if journal is not None:
            tmp = self.folder / (JOURNAL + ".tmp")
            tmp.write_bytes(journal)
            os.replace(tmp, self.folder / JOURNAL)

    def _open_files(self) -> dict[str, Any]:
        if self._files is None:
            self._files = {k: open(self.folder / f"{k}.npy", "r+b") for k in ARRAYS}
            row = {"mel": 2 * self.n_mels, "f0": 4, "energy": 4, "audio": 2 * self.hop}
            for k, f in self._files.items():
                f.seek(HEADER_BYTES + self.frames * row[k])
            self._files["journal"] = open(self.folder / JOURNAL, "a")
        return self._files

    def add(self, entry: dict[str, Any], mel: np.ndarray, f0: np.ndarray, energy: np.ndarray,
            audio: np.ndarray) -> int:
        """Append a file's utterances (mel [frames, n_mels] float16, f0 and energy [frames] float32, audio
        [frames * hop] int16, all pieces back to back); returns the frame where they start."""
        n = len(f0)
        if not (mel.shape == (n, self.n_mels) and len(energy) == n and len(audio) == n * self.hop):
            raise ValueError(f"misaligned features: mel {mel.shape}, f0 {n}, energy {len(energy)}, audio {len(audio)}")
        files = self._open_files()
        for key, x, dtype in (("mel", mel, np.float16), ("f0", f0, np.float32), ("energy", energy, np.float32),
                              ("audio", audio, np.int16)):
            with writing(self.folder / f"{key}.npy"):  # a full disk: name the file
                files[key].write(np.ascontiguousarray(x, dtype=dtype).data)
        at = self.frames
        self._journal({**entry, "at": at})
        self.frames += n
        return at

    def skip(self, entry: dict[str, Any]) -> None:
        """Record a file that gave no utterances (entry["ok"] is false), so a later run does not redo it."""
        self._open_files()
        self._journal({**entry, "at": self.frames})

    def _journal(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._pending.append(json.dumps(entry, separators=(",", ":")) + "\n")
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Arrays to disk, then the journal lines that describe them."""
        self._flushed = time.monotonic()
        if self._files is None or not self._pending:
            return
        for k in ARRAYS:
            with writing(self.folder / f"{k}.npy"):
                self._files[k].flush()
                os.fsync(self._files[k].fileno())
        journal = self._files["journal"]
        with writing(self.folder / JOURNAL):
            journal.writelines(self._pending)
            journal.flush()
            os.fsync(journal.fileno())
        self._pending.clear()

    def seal(self) -> None:
        """Flush, make every array's header declare all frames stored, and record that the journal's entries
        so far are committed (the commit of a dataset)."""
        self.flush()
        self.close()
        for key, dtype, shape in _layout(self.frames, self.hop, self.n_mels):
            with open(self.folder / f"{key}.npy", "r+b") as f:
                _write_header(f, dtype, shape)
                f.flush()
                os.fsync(f.fileno())
        self.meta = {**self.meta, "committed": len(self.entries)}
        write_json(self.folder / STORE_META, self.meta)

    def close(self) -> None:
        if self._files is not None:
            for f in self._files.values():
                f.close()
            self._files = None

    def headers(self) -> dict[str, tuple]:
        """What read_frames needs to read this store's frames, whatever its headers declare now."""
        return {k: (shape, np.dtype(dtype), HEADER_BYTES) for k, dtype, shape in _layout(self.frames, self.hop, self.n_mels)}


def _layout(frames: int, hop: int, n_mels: int) -> list[tuple[str, Any, tuple[int, ...]]]:
    return [("mel", np.float16, (frames, n_mels)), ("f0", np.float32, (frames,)),
            ("energy", np.float32, (frames,)), ("audio", np.int16, (frames * hop,))]


def write_spans(path: Path, spans: np.ndarray) -> None:
    """A split's index, [n, 2] int64 (fsynced)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / SPANS, "wb") as f:
        np.lib.format.write_array(f, np.asarray(spans, dtype=np.int64).reshape(-1, 2), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a report is then rebuilt)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _utf8(text: str) -> bytes:
    """JSON text as UTF-8, as the readers here read it whatever the locale. A file name that is not UTF-8
    reaches Python with lone surrogates, which UTF-8 cannot hold; "backslashreplace" writes each as JSON's own
    escape (\\udcXX), which json reads back as the same name, and touches nothing else (all else encodes)."""
    return text.encode("utf-8", "backslashreplace")


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, _utf8(text), tmp=path.with_name(path.name + TMP_SUFFIX))


def write_lines(path: Path, rows: Iterable[dict]) -> str:
    """Write JSON lines (fsynced); returns the text, which the fingerprint hashes."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
    write_synced(path, _utf8(text))
    return text
