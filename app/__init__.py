"""`qdmn-app`: a local web page to segment your own video: mark objects on any frame (a box
through GrabCut, a brush, an eraser), propagate with the runtime, correct a frame and propagate
again, export masks, run.json and an overlay video (`python -m app.server --help`)."""
