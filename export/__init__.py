"""Exporter: QDMN checkpoint -> five static-shape ONNX graphs + manifest (-> TensorRT engines).

    export.to_onnx.export_checkpoint(ckpt, out_dir, ...)    python export/to_onnx.py
    export.build_engines.build_engines(dir, ...)             python export/build_engines.py
    export.trt_check.check_model(onnx_model_or_path)         python export/trt_check.py

Nothing is imported here, so `export.trt_check` / `export.build_engines` stay torch-free.
"""
