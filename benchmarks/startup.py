"""Whole-process cost of short commands: `voiceclone synthesize` on a 30 s source, start-up and imports.

    python benchmarks/startup.py [--seconds 30] [--size base] [--repeats 5] [--threads 0] [--device cpu] [--json OUT]

Times, as fresh processes (medians of --repeats, interleaved so drifting load hits all alike): the bare
interpreter, `import torch`, `voiceclone --help`, and `voiceclone synthesize` with a random bundle of
--size on a --seconds source (44.1 kHz flac in, 22.05 kHz wav out), whose x real time is the goal figure
(>= 20x for base on 30 s). Then one `python -X importtime` run of the synthesize command lists what its
imports cost, by top-level package: what is left of the fixed cost after torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name, make_bundle, make_speech, median  # noqa: E402


def wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def import_costs(cmd: list[str], env: dict) -> list[tuple[str, float]]:
    """Seconds of import per top-level package: the self time of every module, summed by package."""
    done = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True,
                          check=True)
    totals: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _, name = line[len("import time:"):].split("|")
        if own.strip().isdigit():  # not the header line
            totals[name.strip().split(".")[0]] += int(own) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="base", choices=["tiny", "base"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="--threads for synthesize (0 = its policy)")
    ap.add_argument("--device", default="cpu", help="--device for synthesize (cpu or cuda)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp / f"{args.size}.safetensors", args.size)
        source, reference = make_speech(tmp, args.seconds)
        vc = [sys.executable, "-m", "voiceclone"]
        synth = vc + ["synthesize", "--model", str(bundle), "--reference", str(reference), "--source", str(source),
                      "--out", str(tmp / "out.wav"), "--device", args.device]
        if args.threads:  # not given: the command's own policy (and a version without --threads still runs)
            synth += ["--threads", str(args.threads)]
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
                    "voiceclone --help": vc + ["--help"],
                    f"voiceclone synthesize ({args.seconds:g} s, {args.size}, {args.device})": synth}
        wall(synth, env)  # page cache, pyc files
        times: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                times[name].append(wall(cmd, env))
        imports = import_costs(synth, env)

    table = Table(title=f"whole processes on {cpu_name()}, {os.cpu_count()} cores; medians of {args.repeats}",
                  title_justify="left")
    for col in ("command", "wall s (median)", "min", "max", "x real time"):
        table.add_column(col, justify="right")
    rows = []
    for name, t in times.items():
        is_synth = name.startswith("voiceclone synthesize")
        rows.append({"command": name, "wall_s": median(t), "min_s": min(t), "max_s": max(t),
                     "x_real_time": args.seconds / median(t) if is_synth else None})
        table.add_row(name, f"{median(t):.2f}", f"{min(t):.2f}", f"{max(t):.2f}",
                      f"{args.seconds / median(t):.1f}x" if is_synth else "")
    console.print(table)
    it = Table(title="import time of the synthesize process by package (s, one run)", title_justify="left")
    it.add_column("package")
    it.add_column("s", justify="right")
    for name, s in imports[:12]:
        it.add_row(name, f"{s:.3f}")
    console.print(it)
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "rows": rows, "imports_s": dict(imports)}, indent=1))


if __name__ == "__main__":
    main()
