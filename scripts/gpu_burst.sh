#!/usr/bin/env bash
# A training burst on a lent GPU machine, as the device tool runs it there:
#
#   scripts/gpu_burst.sh DATA_ROOT INIT SECONDS OUT CONFIG...
#
# Each config trains from the weights INIT (.burst/imagenet-init.pth, scripts/burst_data.py) in
# its own process, side by side on the one GPU, each with its own batch workers (the config's
# `workers`), for SECONDS of training (or the config's steps), validating on the GPU as it
# goes. Into OUT, the only folder that comes back: each run's best weights by validation J&F as
# FP16 (NAME-best.pth, ~13 MB) and logs.tgz (every run's log.csv, val.csv, segments.txt and its
# console output). The data is a reduced copy of DAVIS-2016 carried along (the machine reaches
# nothing else); the returned weights are validated again here, on the full-size frames.
set -uo pipefail
data=$1 init=$2 secs=$3 out=$4
shift 4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nproc
pids=()
for cfg in "$@"; do
    name=$(basename "$cfg" .yaml)
    mkdir -p "runs/gpu/$name"
    python training/train.py --config "$cfg" --data-root "$data" --init "$init" \
        --out-dir "runs/gpu/$name" --time-limit "$secs" >"runs/gpu/$name/console.txt" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a run failed (pid $pid): see its console log"; done
for cfg in "$@"; do
    name=$(basename "$cfg" .yaml)
    tail -c 1500 "runs/gpu/$name/console.txt" | tr '\r' '\n' | tail -n 4
    tail -n 3 "runs/gpu/$name/val.csv" 2>/dev/null
    [ -f "runs/gpu/$name/best.pt" ] && python -c "
import sys; from pathlib import Path; from scripts.snapshot_training import half_copy
print('best step', half_copy(Path(sys.argv[1]), Path(sys.argv[2])))" \
        "runs/gpu/$name/best.pt" "$out/$name-best.pth"
done
tar czf "$out/logs.tgz" runs/gpu/*/console.txt runs/gpu/*/log.csv runs/gpu/*/val.csv runs/gpu/*/segments.txt
