"""The dataset on disk: per split, contiguous feature arrays with offsets, read through memory maps.

Layout of a dataset folder (docs/architecture.md section 4; data/README.md describes it for users):

    config.json       format name and version, the full resolved recipe, hashes, counts per split
    manifest.jsonl    one utterance a line, splits in any order, each split's rows in its array order
    speakers.json     per speaker: split, utterances, seconds, log-F0 mean/std
    report.json       files skipped and why, counts
    <split>/          for split in train, val, unseen (always all three, possibly empty)
        offsets.npy   [n + 1] int64, frame offset of every utterance (audio offset = frame offset * hop)
        mel.npy       [frames, n_mels] float16, log-mel (audio.log_mel), time-major
        f0.npy        [frames] float32, Hz, 0 = unvoiced
        energy.npy    [frames] float32, log frame energy
        audio.npy     [frames * hop] int16

config.json is written last and removed first when a dataset is replaced, so a folder without it is an
interrupted `prepare`, never a dataset: `Dataset.open` refuses it and `prepare` resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from voiceclone.config import AudioConfig, Recipe, recipe_from_dict
from voiceclone.errors import UserError, writing

FORMAT = "voiceclone-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "unseen")
CONFIG, MANIFEST, SPEAKERS, REPORT = "config.json", "manifest.jsonl", "speakers.json", "report.json"
ARRAYS = ("offsets", "mel", "f0", "energy", "audio")


def fingerprint(recipe: dict[str, Any], manifest_text: str) -> str:
    """Short stable hash of the configuration and the manifest: two datasets with the same one are the same."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "recipe": recipe},
                                  sort_keys=True).encode())
    h.update(manifest_text.encode())
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

    def __init__(self, path: Path, name: str, rows: list[dict], hop: int) -> None:
        self.path, self.name, self.rows, self.hop = Path(path), name, rows, hop
        self._maps: dict[str, np.ndarray] | None = None
        self._headers: dict[str, tuple] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    def _m(self, key: str) -> np.ndarray:
        if self._maps is None:
            self._maps = {k: _array(self.path / f"{k}.npy") for k in ARRAYS}
            if len(self._maps["offsets"]) != len(self.rows) + 1:
                raise UserError(f"{self.path}: offsets do not match the manifest (damaged dataset)")
        return self._maps[key]

    def _span(self, i: int) -> tuple[int, int]:
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"utterance {i} out of range for split '{self.name}' ({len(self.rows)})")
        off = self._m("offsets")
        i = i % len(self.rows)
        return int(off[i]), int(off[i + 1])

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
        """Copies of utterance i's arrays (mel, f0, energy, audio), read with plain file reads.

        `prepare` copies a previous dataset through this rather than through the maps, so the pages of a
        large dataset are not all counted as its resident memory.
        """
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"utterance {i} out of range for split '{self.name}' ({len(self.rows)})")
        if self._headers is None:
            self._headers = {k: _npy_header(self.path / f"{k}.npy") for k in ARRAYS}
        off = np.fromfile(self.path / "offsets.npy", dtype=np.int64, count=2,
                          offset=self._headers["offsets"][2] + 8 * (i % len(self.rows)))
        a, b = int(off[0]), int(off[1])
        out = {}
        for key, lo, hi in (("mel", a, b), ("f0", a, b), ("energy", a, b), ("audio", a * self.hop, b * self.hop)):
            shape, dtype, start = self._headers[key]
            row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            flat = np.fromfile(self.path / f"{key}.npy", dtype=dtype, count=(hi - lo) * row,
                               offset=start + lo * row * dtype.itemsize)
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
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{config_path}: unreadable ({e})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise UserError(f"{path}: not a voiceclone dataset ({CONFIG} has no format '{FORMAT}')")
        if config.get("version") != FORMAT_VERSION:
            raise UserError(f"{path}: dataset format version {config.get('version')!r} is not the supported "
                            f"{FORMAT_VERSION}; prepare it again with this version")
        recipe = recipe_from_dict(config["recipe"], source=str(config_path))
        try:
            speakers = json.loads((path / SPEAKERS).read_text())
            manifest = [json.loads(line) for line in (path / MANIFEST).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: incomplete or damaged dataset ({e})") from None
        _check_arrays(path, config, recipe.audio)
        return cls(path, config, recipe, speakers, manifest)

    def split(self, name: str) -> Split:
        """The split's utterances in array order; the same object on every call (an empty Split if none)."""
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}' (known: {', '.join(SPLITS)})")
        if name not in self._splits:
            rows = [r for r in self.manifest if r["split"] == name]
            self._splits[name] = Split(self.path / name, name, rows, self.audio.hop_length)
        return self._splits[name]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {sum(r['split'] == s for r in self.manifest)}" for s in SPLITS)
        return f"Dataset({str(self.path)!r}, {len(self.speakers)} speakers, {counts}, {self.fingerprint})"


def _check_arrays(path: Path, config: dict[str, Any], cfg: AudioConfig) -> None:
    """Every split's arrays exist with the shapes config.json promises and are not cut short."""
    for name in SPLITS:
        info = config.get("splits", {}).get(name)
        if info is None:
            raise UserError(f"{path}: {CONFIG} lists no split '{name}' (damaged dataset)")
        n, frames = int(info["utterances"]), int(info["frames"])
        expect = {"offsets": ((n + 1,), np.int64), "mel": ((frames, cfg.n_mels), np.float16),
                  "f0": ((frames,), np.float32), "energy": ((frames,), np.float32),
                  "audio": ((frames * cfg.hop_length,), np.int16)}
        for key, (shape, dtype) in expect.items():
            p = path / name / f"{key}.npy"
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


class _NpyAppender:
    """A .npy file of known final shape, filled by appending rows in order (no memory map, so the writer's
    resident memory stays flat however large the array)."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.rows = 0
        self.f: BinaryIO = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": shape})

    def append(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: row shape {x.shape[1:]} != {self.shape[1:]}")
        with writing(self.path):  # a full disk: name the file
            self.f.write(x.data)
        self.rows += len(x)

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: wrote {self.rows} rows, declared {self.shape[0]}")
        with writing(self.path):
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


class SplitWriter:
    """Writes one split folder. Declare the totals first, then append utterances in manifest order."""

    def __init__(self, path: Path, utterances: int, frames: int, cfg: AudioConfig) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.hop, self.n = path, cfg.hop_length, utterances
        self.offsets = np.zeros(utterances + 1, dtype=np.int64)
        self.count = 0
        self.arrays = {"mel": _NpyAppender(path / "mel.npy", np.float16, (frames, cfg.n_mels)),
                       "f0": _NpyAppender(path / "f0.npy", np.float32, (frames,)),
                       "energy": _NpyAppender(path / "energy.npy", np.float32, (frames,)),
                       "audio": _NpyAppender(path / "audio.npy", np.int16, (frames * cfg.hop_length,))}

    def append(self, mel: np.ndarray, f0: np.ndarray, energy: np.ndarray, audio: np.ndarray) -> None:
        """mel [frames, n_mels], f0 [frames], energy [frames], audio [frames * hop] int16."""
        n = len(f0)
        if not (len(mel) == len(energy) == n and len(audio) == n * self.hop):
            raise ValueError(f"misaligned utterance: mel {len(mel)}, f0 {n}, energy {len(energy)}, "
                             f"audio {len(audio)} (expected {n * self.hop})")
        for key, x in (("mel", mel), ("f0", f0), ("energy", energy), ("audio", audio)):
            self.arrays[key].append(x)
        self.offsets[self.count + 1] = self.offsets[self.count] + n
        self.count += 1

    def close(self) -> None:
        if self.count != self.n:
            raise ValueError(f"{self.path}: wrote {self.count} utterances, declared {self.n}")
        for a in self.arrays.values():
            a.close()
        with open(self.path / "offsets.npy", "wb") as f:
            np.lib.format.write_array(f, self.offsets, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a cache or report is then rebuilt)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_lines(path: Path, rows: Iterable[dict]) -> str:
    """Write JSON lines (fsynced); returns the text, which the fingerprint hashes."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
