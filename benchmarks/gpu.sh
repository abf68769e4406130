#!/usr/bin/env bash
# Every benchmark on this machine's CUDA device; the tables go to benchmarks/results/<device>.md.
#
#   bash benchmarks/gpu.sh [OUT.md]
#
# Needs a CUDA build of torch and a visible GPU, and stops with one line otherwise. The scripts add their
# CUDA rows by themselves when torch sees a GPU (bf16 autocast there): acoustic training it/s and loader
# headroom (train_speed.py), vocoder x real time at batch 1 x 10 s and 16 x 1 s and GAN training it/s
# (vocoder_speed.py), synthesize end to end in process (synthesize_speed.py) and as a whole `voiceclone
# synthesize --device cuda` process (startup.py). Their CPU rows are the host's. Then a smoke run of
# `torchrun ... voiceclone train` on every GPU (NCCL, one epoch of each stage) says whether DDP works at all.
# A script that fails is reported in the file with its exit code and the others still run; the exit code
# of this script is then 1.
# Not run here: realtime.py (streaming runs on one CPU thread by design), contention.py and prepare_speed.py
# (CPU only), zero_shot_quality.py (needs a trained run and its dataset).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

device=$($PY -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA device visible to torch " + torch.__version__)
print(torch.cuda.get_device_name(0))') || exit 2
slug=$(printf '%s' "$device" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
out=${1:-benchmarks/results/$slug.md}
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gpus=$($PY -c 'import torch; print(torch.cuda.device_count())')
failed=0

{
    echo "# Benchmarks on $device"
    echo
    echo "Written by \`bash benchmarks/gpu.sh\` on $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo "GPUs: $gpus x $device; torch $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)');"
    echo "host CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc) cores."
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
    echo
} > "$out"

section() {  # section TITLE TIMEOUT_S COMMAND...: run it, put its output in the file
    local title=$1 limit=$2
    shift 2
    echo "== $title" >&2
    local start=$SECONDS
    COLUMNS=160 timeout "$limit" "$@" > "$work/log" 2>&1
    local rc=$?
    { echo "## $title"; echo; echo "\`$*\` ($((SECONDS - start)) s)"; echo; echo '```'; cat "$work/log"; echo '```'; } >> "$out"
    if [ $rc -ne 0 ]; then
        failed=1
        echo "**FAILED with exit code $rc** (124: over the ${limit} s limit)" >> "$out"
        tail -5 "$work/log" >&2
    fi
    echo >> "$out"
}

section "acoustic training: it/s (bf16 on CUDA), loader headroom" 900 \
    $PY benchmarks/train_speed.py --steps 20 --json "$work/train.json"
section "vocoder: x real time at batch 1 and 16 x 1 s, GAN training it/s" 900 \
    $PY benchmarks/vocoder_speed.py --sizes tiny base vocos --json "$work/vocoder.json"
section "synthesize end to end, in process" 900 \
    $PY benchmarks/synthesize_speed.py --seconds 30 --json "$work/synthesize.json"
section "voiceclone synthesize --device cuda, whole process, 30 s source, base" 900 \
    $PY benchmarks/startup.py --seconds 30 --size base --device cuda --repeats 5 --json "$work/startup.json"

# DDP smoke: a tiny dataset, one epoch of each stage on every GPU under torchrun (NCCL).
if $PY - "$work" > "$work/prep.log" 2>&1 <<'EOF'
import sys
from pathlib import Path
from rich.console import Console
from voiceclone.config import load_recipe
from voiceclone.data.prepare import prepare
from voiceclone.synthetic import write_corpus
work = Path(sys.argv[1])
write_corpus(work / "corpus", n_speakers=6, utterances=6, seconds=2.0, sample_rate=16000)
prepare([work / "corpus"], work / "ds", load_recipe("demo"), console=Console(quiet=True))
EOF
then
    section "DDP smoke: torchrun --nproc_per_node=$gpus, one epoch of each stage" 900 \
        $PY -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m voiceclone train \
        --data "$work/ds" --run-dir "$work/run" --stage all --epochs 1 --device cuda
else
    failed=1
    { echo "## DDP smoke"; echo; echo '```'; cat "$work/prep.log"; echo '```'; echo "**FAILED**: could not prepare its dataset"; echo; } >> "$out"
fi

echo "wrote $out" >&2
exit $failed
