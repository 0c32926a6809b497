#!/usr/bin/env bash
# Everything behind the numbers in the README, in order (CPU, ~1 h on 2 cores after training).
# Needs the DAVIS-2016 copy at ../shared/data/DAVIS2016 for training and validation.
set -euo pipefail
cd "$(dirname "$0")/.."
DAVIS=../shared/data/DAVIS2016
R=benchmarks/results
VAL=blackswan,cows,libby          # configs/light.yaml's val_sequences (never trained on)

# 1. train (resumable; ~50 min on 1 core), validate on the held-out sequences, ship FP16 weights
python training/train.py --config configs/light.yaml --resume --validate \
    --export-fp16 runs/light/model_fp16.pth
cp runs/light/model_fp16.pth models/qdmn-light.pth

# 2. export: one-object graphs for DAVIS-2016 (FP32 and INT8 QDQ)
python export/to_onnx.py models/qdmn-light.pth --out engines/light-1obj --max-objects 1
python export/to_onnx.py models/qdmn-light.pth --out engines/light-1obj-int8 --max-objects 1 \
    --int8 --calib "$DAVIS/JPEGImages/480p"

# 3. J&F on the validation sequences: runtime per backend/precision vs the PyTorch reference
python benchmarks/evaluate.py --engine-dir engines/light-1obj --data "$DAVIS" --sequences $VAL \
    --backend ort-cpu --reference models/qdmn-light.pth --out $R/jf-val-ort-fp32 --no-progress
python benchmarks/evaluate.py --engine-dir engines/light-1obj --data "$DAVIS" --sequences $VAL \
    --backend openvino-bf16 --out $R/jf-val-openvino-bf16 --no-progress
python benchmarks/evaluate.py --engine-dir engines/light-1obj-int8 --data "$DAVIS" --sequences $VAL \
    --backend ort-cpu --out $R/jf-val-ort-int8 --no-progress

# 4. the demo (two real clips, one and two objects)
python demo.py

# 5. speed and long-video stability
python benchmarks/speed.py --engine-dir engines/light-1obj --checkpoint models/qdmn-light.pth \
    --int8-engine-dir engines/light-1obj-int8 --variants all --frames 100 --threads 2 --out $R
# QDMN at beta=25 over 5000 frames; then the other limits, the unbounded baseline and the
# O(beta) memory-read scaling over 1000 frames (separate folders: each run writes its own plot)
python benchmarks/long_video.py --engine-dir engines/light-1obj --checkpoint models/qdmn-light.pth \
    --frames 5000 --memory-sizes 25 --backend openvino-bf16 --threads 2 --out $R/long_video_5000
python benchmarks/long_video.py --engine-dir engines/light-1obj --checkpoint models/qdmn-light.pth \
    --frames 1000 --memory-sizes 5,10,25,50 --per-size-engines --unbounded \
    --unbounded-max-seconds 420 --read-scaling 5,10,25,50,100 --backend openvino-bf16 --threads 2 \
    --out $R/long_video_sizes

# 6. videos of another aspect ratio than the graphs' (letterbox vs stretch), and graphs exported
# at the video's 9:16
python benchmarks/aspect_fit.py --engine-dir engines/light-1obj --data "$DAVIS" --sequences $VAL \
    --aspects 9:16,1:1 --threads 2 --out $R/aspect_fit
python export/to_onnx.py models/qdmn-light.pth --out engines/light-1obj-9x16 --max-objects 1 \
    --size 432 240
python benchmarks/aspect_fit.py --engine-dir engines/light-1obj-9x16 --data "$DAVIS" \
    --sequences $VAL --aspects 9:16 --threads 2 --out $R/aspect_fit_native_9x16
