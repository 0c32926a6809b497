#!/usr/bin/env bash
# Everything behind the numbers in the README, in order (CPU, ~1 h on 2 cores after training).
# Needs a DAVIS-2016 copy (DAVIS=ROOT; default ../shared/data/DAVIS2016) for training and validation.
set -euo pipefail
cd "$(dirname "$0")/.."
DAVIS=${DAVIS:-../shared/data/DAVIS2016}
R=results
VAL=blackswan,cows,libby          # configs/light.yaml's val_sequences (never trained on)

# 1. train in four stages (docs/training-log.md; ~4 h on 2 cores):
#    stage 0, the first recipe (models/qdmn-light-stage0.yaml), 950 steps from ImageNet;
#    stage 1, configs/light.yaml from stage 0, validated every 300 steps, best kept (step 600);
#    stage 2, configs/light-stage2.yaml from stage 1: the key projections alone with the
#    correspondence loss, validated every 100 steps, best kept (step 100).
python training/train.py --config models/qdmn-light-stage0.yaml --resume \
    --export-fp16 runs/light-stage0/model_fp16.pth
python training/train.py --config configs/light.yaml --init runs/light-stage0/model_fp16.pth \
    --steps 600
python scripts/snapshot_training.py runs/light models/training
python training/train.py --config configs/light-stage2.yaml --init models/training/light-best.pth \
    --steps 300
python scripts/snapshot_training.py runs/light-stage2 models/training/stage2 --name light-stage2
#    stage 3, configs/light-davis42.yaml from stage 2: the 42 DAVIS-2016 videos here (less the
#    three held out), 3000 steps on one thread, validated every 300, best kept (step 2700)
python training/train.py --config configs/light-davis42.yaml \
    --init models/training/stage2/light-stage2-best.pth
python scripts/snapshot_training.py runs/light-davis42 models/training/light-davis42 \
    --name light-davis42
#    stage 4, configs/light-identity.yaml from stage 3: clips of up to five objects, look-alikes,
#    crossings and the pet stills, validated every 400 steps with schoolgirls; best kept
#    (step 1200; the run was stopped at step 2000)
python training/train.py --config configs/light-identity.yaml \
    --init models/training/light-davis42/light-davis42-best.pth --steps 2000
python scripts/snapshot_training.py runs/light-identity models/training/light-identity \
    --name light-identity
#    stage 5, configs/light-identity-long.yaml from stage 4's best: objects that leave and come
#    back, many small objects, a weight average validated; best kept (step 1600; the run was
#    stopped at step 2400)
python training/train.py --config configs/light-identity-long.yaml \
    --init models/training/light-identity/light-identity-best.pth --steps 2400
python scripts/snapshot_training.py runs/light-identity-long models/training/light-identity-long \
    --name light-identity-long
#    stage 6, configs/light-identity-carry.yaml from stage 5's best: objects carried by others
#    (a bag on a person), the base lr throughout; best kept (step 2400, its last)
python training/train.py --config configs/light-identity-carry.yaml \
    --init models/training/light-identity-long/light-identity-long-best.pth
python scripts/snapshot_training.py runs/light-identity-carry models/training/light-identity-carry \
    --name light-identity-carry
cp models/training/light-identity-carry/light-identity-carry-best.pth models/qdmn-light.pth
#    (continued to step 4000 once, no check above step 2400: a record, models/training/
#    light-identity-carry-continued/; docs/training-log.md)

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
#    seven objects: DAVIS 2017's schoolgirls (240p), runtime vs reference; the memory gate per video
python export/to_onnx.py models/qdmn-light.pth --out engines/light-7obj --max-objects 7
python benchmarks/evaluate.py --engine-dir engines/light-7obj --data "${DAVIS}/../DAVIS2017" \
    --resolution 240p --sequences schoolgirls --backend ort-cpu --reference models/qdmn-light.pth \
    --out $R/jf-schoolgirls-ort-fp32 --no-progress
python benchmarks/evaluate.py --engine-dir engines/light-7obj --data "${DAVIS}/../DAVIS2017" \
    --resolution 240p --sequences schoolgirls --backend openvino-bf16 \
    --out $R/jf-schoolgirls-openvino-bf16 --no-progress
python scripts/gate_report.py models/qdmn-light.pth --out $R/gate
#    schoolgirls exported at 480x864 (its small objects, the backpacks, cover four times the
#    feature cells), and whether the model can express each object at a size at all
python export/to_onnx.py models/qdmn-light.pth --out engines/light-7obj-480x864 --max-objects 7 \
    --size 480 864
python benchmarks/evaluate.py --engine-dir engines/light-7obj-480x864 --data "${DAVIS}/../DAVIS2017" \
    --resolution 240p --sequences schoolgirls --backend ort-cpu \
    --out $R/jf-schoolgirls-480x864-ort-fp32 --no-progress
python scripts/read_back.py models/qdmn-light.pth --sizes 240x432 480x864 720x1296 \
    --out models/report/read_back.json

# 4. the demo (two real clips, one and two objects), its picture, and the model report (one- and
# two-object validation through the runtime at 240x432 and 480x864, QAM score vs IoU)
python demo.py --backend ort-cpu
python demo.py
python scripts/overlay_grid.py --out docs/images/demo_overlay.jpg
python scripts/model_report.py models/qdmn-light.pth --data "$DAVIS" --out models/report
# the runtime's locality width, chosen on two-object clips of training videos (runtime/core/locality.py)
python scripts/locality_sweep.py models/qdmn-light.pth --data "$DAVIS" \
    --widths 0 0.1 0.2 0.35 0.5 1 --out models/report/locality_sweep.json
python scripts/locality_sweep.py models/qdmn-light.pth --data "$DAVIS" --size 480 864 \
    --widths 0.1 0.5 --out models/report/locality_sweep_480x864.json
# the absent-object case: another scene spliced into blackswan (what the gate keeps)
python scripts/scene_cut_check.py models/qdmn-light.pth --data "$DAVIS" > models/report/scene_cut.txt
# would a perfect quality score change J&F? (the gate fed the true IoU, all, none)
python scripts/gate_oracle.py models/qdmn-light.pth --data "$DAVIS" --out models/report/gate_oracle.json
python scripts/key_matching.py models/qdmn-light.pth --data "$DAVIS" --out models/report/key_matching.json
python scripts/key_matching.py models/training/light-best.pth --data "$DAVIS" \
    --out models/report/key_matching_stage1.json

# 5. speed (2-object graphs, beta = 25: the README's configuration), the memory read's options,
# long-video stability and the O(beta) read
python export/to_onnx.py models/qdmn-light.pth --out engines/light-2obj --max-objects 2
python benchmarks/speed.py --engine-dir engines/light-2obj --checkpoint models/qdmn-light.pth \
    --variants torch-fp32,torch-bf16,ort-cpu,openvino,openvino-bf16 --frames 100 --threads 2 --out $R
python benchmarks/read_options.py --engine-dir engines/light-2obj --threads 2 --out $R
# QDMN at beta=25 over 5000 frames; then the other limits and the unbounded baseline over 1000
# frames, and the memory read alone per beta (separate folders: each run writes its own plot)
python benchmarks/long_video.py --engine-dir engines/light-2obj --checkpoint models/qdmn-light.pth \
    --frames 5000 --memory-sizes 25 --backend openvino-bf16 --threads 2 --out $R/long_video_5000
python benchmarks/long_video.py --engine-dir engines/light-1obj --checkpoint models/qdmn-light.pth \
    --frames 1000 --memory-sizes 5,10,25,50 --per-size-engines --unbounded \
    --unbounded-max-seconds 420 --backend openvino-bf16 --threads 2 --out $R/long_video_sizes
python benchmarks/long_video.py --engine-dir engines/light-2obj --memory-sizes none \
    --read-scaling 5,10,25,50,100 --backend openvino-bf16 --threads 2 --out $R/read_scaling
# QDMN's own architecture (ResNet-50, 480x864, 1 object, beta = 5) with random weights: speed only
python benchmarks/official_speed_checkpoint.py engines/official-random-speed-only.pth
python export/to_onnx.py engines/official-random-speed-only.pth --out engines/official-b5 \
    --size 480 864 --max-objects 1 --memory-size 5
python benchmarks/speed.py --engine-dir engines/official-b5 \
    --checkpoint engines/official-random-speed-only.pth \
    --variants torch-fp32,torch-bf16,ort-cpu,openvino-bf16 --frames 6 --warmup 26 --threads 2 \
    --note "official architecture, random weights (speed only)" --out $R/speed_official

# 6. videos of another aspect ratio than the graphs' (letterbox vs stretch), and graphs exported
# at the video's 9:16
python benchmarks/aspect_fit.py --engine-dir engines/light-1obj --data "$DAVIS" --sequences $VAL \
    --aspects 9:16,1:1 --threads 2 --out $R/aspect_fit
python export/to_onnx.py models/qdmn-light.pth --out engines/light-1obj-9x16 --max-objects 1 \
    --size 432 240
python benchmarks/aspect_fit.py --engine-dir engines/light-1obj-9x16 --data "$DAVIS" \
    --sequences $VAL --aspects 9:16 --threads 2 --out $R/aspect_fit_native_9x16

# 7. the larger backbone, EfficientNet-Lite2 (docs/training-log.md; ~1.5 h training on 2 cores): the
# light model's three stages with the backbone changed; stage 1's best is step 900, stage 2's
# step 100, exported at 480x864 by default. Shipped until it no longer paid (docs/training-log.md;
# the file: `git show d5898b8:models/qdmn-lite2.pth`), so it is written to runs/ here.
python training/train.py --config configs/lite2-stage0.yaml --resume \
    --export-fp16 runs/lite2-stage0/model_fp16.pth
python training/train.py --config configs/lite2.yaml --init runs/lite2-stage0/model_fp16.pth \
    --steps 1200
python scripts/snapshot_training.py runs/lite2 models/training/lite2 --name lite2
python training/train.py --config configs/lite2-stage2.yaml --init models/training/lite2/lite2-best.pth \
    --steps 300
python scripts/snapshot_training.py runs/lite2-stage2 models/training/lite2-stage2 --name lite2-stage2
python scripts/ship_model.py models/training/lite2-stage2/lite2-stage2-best.pth runs/qdmn-lite2.pth \
    --size 480 864
python scripts/model_report.py runs/qdmn-lite2.pth --data "$DAVIS" --out models/report-lite2 \
    --sizes 480x864 240x432
python scripts/scene_cut_check.py runs/qdmn-lite2.pth --data "$DAVIS" > models/report-lite2/scene_cut.txt
python scripts/gate_oracle.py runs/qdmn-lite2.pth --data "$DAVIS" --size 480 864 \
    --out models/report-lite2/gate_oracle.json
# the light model's reference (and QAM) at 480x864, for the side-by-side table
python scripts/model_report.py models/qdmn-light.pth --data "$DAVIS" --out models/report-480x864 \
    --sizes 480x864
# the light model at 304x544, the middle of its training scales (docs/training-log.md, "Export size")
python scripts/model_report.py models/qdmn-light.pth --data "$DAVIS" --out models/report-304x544 \
    --sizes 304x544
python export/to_onnx.py models/qdmn-light.pth --out engines/light-2obj-304x544 --max-objects 2 --size 304 544
python benchmarks/speed.py --engine-dir engines/light-2obj-304x544 --variants ort-cpu,openvino-bf16 \
    --frames 40 --warmup 130 --threads 2 --out $R/speed_models/light-304x544
# both models' speed at both sizes (2-object graphs, beta = 25), one right after the other
for m in light lite2; do
  ckpt=models/qdmn-light.pth; [ $m = lite2 ] && ckpt=runs/qdmn-lite2.pth
  for size in "240 432" "480 864"; do
    python export/to_onnx.py $ckpt --out engines/$m-2obj-${size/ /x} --max-objects 2 --size $size
    python benchmarks/speed.py --engine-dir engines/$m-2obj-${size/ /x} --variants ort-cpu,openvino-bf16 \
        --frames 40 --warmup 130 --threads 2 --out $R/speed_models/$m-${size/ /x}
  done
done
