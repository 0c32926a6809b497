"""Segment your own video in the browser: a local web app over the runtime.

    qdmn-app --root DIR [--engine-dir DIR] [--host 127.0.0.1] [--port N] [--no-browser]
        [--backend auto|...] [--work-dir DIR] [--max-upload-mb N]

Serves a page (127.0.0.1 only, by default) where you open a video (an upload, or a video file
or frame folder under --root: nothing outside it is read), mark objects on any frame (a box
through GrabCut, a brush, an eraser), propagate them with the model, correct any frame and
propagate again from there, and export the masks, run.json and an overlay video as a zip. The
graphs are loaded once; each browser tab is a session of its own in a sub-folder of the work
folder (default: a fresh temporary folder, removed at exit), which is the only place the app
writes.

FastAPI (on Starlette and uvicorn): typed, validated JSON requests, a WebSocket for the
propagation's progress (a tab that goes away ends its run), a test client, and a small page of
our own instead of a UI framework's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from app import annotate
from app.export import export_zip
from app.paths import list_folder, under_root
from app.propagation import run_propagation
from app.sessions import DEFAULT_IDLE_S, Session, Sessions, UnknownSession
from runtime.backends import create_backend
from runtime.cli import fail, one_line, path_arg, warnings_as_lines
from runtime.core.errors import QDMNRuntimeError
from runtime.core.manifest import Manifest
from runtime.media.outputs import interrupt_exit_code, terminate_as_interrupt
from runtime.media.palette import PALETTE
from runtime.options import add_execution_options, add_runtime_options, runtime_config
from runtime.segmenter import Segmenter

STATIC = Path(__file__).parent / "static"
DEFAULT_ENGINES = Path("engines/light")
DEFAULT_UPLOAD_MB = 500
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_CHUNK = 1 << 20


class Refused(Exception):
    """A request the app answers with a message for the page (HTTP status, one line)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class AppState:
    """What every request shares: the one segmenter (one run at a time), the sessions, the
    root the page may read and the upload limit."""

    segmenter: Segmenter
    root: Path
    sessions: Sessions
    max_upload_mb: float
    model_lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------------------- requests
class OpenPath(BaseModel):
    path: str = Field(max_length=4096)


class Box(BaseModel):
    frame: int
    object: int = Field(ge=1, le=254)
    box: tuple[float, float, float, float]


class Stroke(BaseModel):
    frame: int
    object: int = Field(ge=1, le=254)
    points: list[tuple[float, float]] = Field(min_length=1, max_length=10_000)
    radius: float
    erase: bool = False


def create_app(segmenter: Segmenter, root: Path, work_dir: Path, *,
               max_upload_mb: float = DEFAULT_UPLOAD_MB,
               hosts: Sequence[str] = ("127.0.0.1", "localhost"),
               session_idle_s: float = DEFAULT_IDLE_S) -> FastAPI:
    """The web app over one loaded segmenter. hosts: the names the page may be reached by
    (others are refused, against DNS rebinding by a web page the browser shows);
    session_idle_s: how long a session no tab asks about is kept."""
    sessions = Sessions(work_dir, segmenter.manifest, session_idle_s)
    state = AppState(segmenter, root, sessions, max_upload_mb)
    app = FastAPI(title="qdmn-app", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.qdmn = state
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))

    @app.middleware("http")
    async def same_origin(request: Request, call_next: Any) -> Response:
        """A request that changes something comes from the page itself: another site's page
        in the same browser (which may POST here) is refused by its Origin."""
        if request.method not in ("GET", "HEAD") and not _own_origin(request.headers, hosts):
            return JSONResponse({"error": "refused: a request from another site"},
                                status_code=403)
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _errors(app)
    _routes(app, state, tuple(hosts))
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(UnknownSession)
    async def unknown(request: Request, e: UnknownSession) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=404)

    @app.exception_handler(QDMNRuntimeError)
    async def runtime_error(request: Request, e: QDMNRuntimeError) -> JSONResponse:
        return JSONResponse({"error": one_line(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"},
                            status_code=422)


def _routes(app: FastAPI, state: AppState, hosts: tuple[str, ...]) -> None:
    sessions, manifest = state.sessions, state.segmenter.manifest

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.post("/api/sessions")
    def new_session() -> dict[str, Any]:
        session = sessions.create()
        return {"id": session.id, "max_upload_mb": state.max_upload_mb,
                "max_objects": manifest.max_objects,
                "model": f"{manifest.width}x{manifest.height}",
                "backend": state.segmenter.backend.describe().get("name"),
                "palette": PALETTE.tolist()}

    @app.post("/api/s/{sid}/close")
    def close(sid: str) -> dict[str, Any]:
        sessions.close(sid)
        return {}

    @app.get("/api/s/{sid}/alive")
    def alive(sid: str) -> dict[str, Any]:
        """The open page's heartbeat: its session is not idle."""
        sessions.get(sid)
        return {}

    @app.get("/api/browse")
    def browse(path: str = "") -> dict[str, Any]:
        entries = list_folder(state.root, path)
        return {"path": path, "entries": [{"name": e.name, "kind": e.kind} for e in entries]}

    @app.post("/api/s/{sid}/open")
    def open_path(sid: str, body: OpenPath) -> dict[str, Any]:
        session = sessions.get(sid)
        real = under_root(state.root, body.path)
        session.open(real, body.path or ".", state.root)
        return _state(session, list(session.require_video().notes))

    @app.put("/api/s/{sid}/upload")
    async def upload(sid: str, request: Request, name: str = "video") -> dict[str, Any]:
        session = sessions.get(sid)
        session.check_idle()  # before the body lands: a running propagation reads the video
        suffix = Path(name).suffix
        path = _fresh(session, "upload-", suffix if _SUFFIX.fullmatch(suffix) else "")
        await _receive(request, path, state.max_upload_mb, name)
        try:
            await run_in_threadpool(session.open, path, Path(name).name)
        except QDMNRuntimeError:
            path.unlink(missing_ok=True)
            raise
        return _state(session, list(session.require_video().notes))

    @app.get("/api/s/{sid}/state")
    def get_state(sid: str) -> dict[str, Any]:
        return _state(sessions.get(sid))

    @app.get("/api/s/{sid}/frame/{index}.jpg")
    def frame(sid: str, index: int) -> FileResponse:
        video = sessions.get(sid).require_video()
        return FileResponse(video.frame_path(index), media_type="image/jpeg")

    @app.get("/api/s/{sid}/mask/{index}.png")
    def mask(sid: str, index: int) -> Response:
        labels = sessions.get(sid).frame_labels(index)
        return Response(_display_png(labels), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.put("/api/s/{sid}/mask/{index}")
    async def put_mask(sid: str, index: int, request: Request,
                       name: str = "mask.png") -> dict[str, Any]:
        session = sessions.get(sid)
        path = _fresh(session, "mask-", ".png")
        await _receive(request, path, state.max_upload_mb, name)
        try:
            await run_in_threadpool(session.put_mask, index, path, Path(name).name)
        finally:
            path.unlink(missing_ok=True)
        return _state(session, await run_in_threadpool(_size_notes, state, session, index))

    @app.post("/api/s/{sid}/box")
    def box(sid: str, body: Box) -> dict[str, Any]:
        session = sessions.get(sid)
        session.check_idle()  # before GrabCut's work, which `edit` would refuse anyway
        rgb = session.require_video().frame(body.frame)
        region = annotate.grabcut_box(rgb, body.box)
        session.edit(body.frame, lambda lab: annotate.set_object(lab, body.object, region),
                     {body.object})
        return _state(session, _size_notes(state, session, body.frame))

    @app.post("/api/s/{sid}/stroke")
    def stroke(sid: str, body: Stroke) -> dict[str, Any]:
        session = sessions.get(sid)
        video = session.require_video()
        region = annotate.stroke((video.height, video.width), body.points, body.radius)
        if body.erase:
            session.edit(body.frame, lambda lab: annotate.erase(lab, region), set())
        else:
            session.edit(body.frame, lambda lab: annotate.paint(lab, body.object, region),
                         {body.object})
        return _state(session, _size_notes(state, session, body.frame))

    @app.websocket("/api/s/{sid}/propagate")
    async def propagate_ws(ws: WebSocket, sid: str) -> None:
        if not _own_origin(ws.headers, hosts):
            await ws.close(code=1008)  # policy violation: another site's page
            return
        await ws.accept()
        await _propagate(ws, state, sid)

    @app.post("/api/s/{sid}/export")
    def export(sid: str) -> dict[str, Any]:
        session = sessions.get(sid)
        video = session.require_video()
        stem = re.sub(r"[^A-Za-z0-9_+-]", "_", Path(video.name).stem).strip("_")
        name = f"{stem or 'video'}-qdmn.zip"
        zipped, movie = export_zip(session, state.segmenter, session.folder / "export" / name)
        return {"url": f"/api/s/{sid}/export/{zipped.name}", "name": zipped.name,
                "video": f"/api/s/{sid}/export/{movie.name}"}

    @app.get("/api/s/{sid}/export/{name}")
    def download(sid: str, name: str) -> FileResponse:
        path = sessions.get(sid).folder / "export" / name
        kind = {".zip": "application/zip", ".mp4": "video/mp4"}.get(path.suffix)
        if "/" in name or name.startswith(".") or kind is None or not path.is_file():
            raise Refused(404, f"no export named {name}: export again")
        return FileResponse(path, media_type=kind,
                            filename=name if kind == "application/zip" else None)


def _own_origin(headers: Any, hosts: Sequence[str]) -> bool:
    """No Origin (not a browser's cross-site request), or one naming a host the page is
    served as."""
    origin = headers.get("origin")
    return origin is None or "*" in hosts or urlsplit(origin).hostname in hosts


def _fresh(session: Session, prefix: str, suffix: str) -> Path:
    """A new file's path in the session's folder: an upload never lands on a file in use."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=session.folder)
    os.close(fd)
    return Path(name)


def _state(session: Session, notes: list[str] | None = None) -> dict[str, Any]:
    """What the page shows of a session: its video, the frames with masks, the objects, and
    after an edit what the model will make of it (`notes`)."""
    video = session.video
    if video is None:
        return {"video": None}
    assert session.labels is not None
    # id: the decoded frames' folder, new for every opened video (the page's cache key)
    return {"video": {"id": video.frames_dir.name, "name": video.name,
                      "frames": video.length, "width": video.width,
                      "height": video.height, "fps": video.fps},
            "given": sorted(session.given), "done": session.labels.indices(),
            "objects": session.objects(), "running": session.stop is not None,
            "notes": notes or []}


def _size_notes(state: AppState, session: Session, index: int) -> list[str]:
    """The objects of frame `index` too small for the graphs' memory read (an edit may shrink
    an object it did not mark)."""
    video = session.require_video()
    return state.segmenter.size_notes((video.height, video.width), session.frame_labels(index))


def _display_png(labels: np.ndarray) -> bytes:
    """A frame's labels as the page draws them over the frame: palette colours, background
    transparent (the exported PNGs are run.py's, without transparency)."""
    im = Image.fromarray(np.ascontiguousarray(labels, np.uint8))
    im.putpalette(PALETTE.tobytes())
    buf = BytesIO()
    im.save(buf, "PNG", transparency=0, compress_level=1)
    return buf.getvalue()


async def _receive(request: Request, path: Path, limit_mb: float, name: str) -> None:
    """Stream a request's body into `path` (in the session's folder), refusing it past
    `limit_mb` with a message that says the limit."""
    limit = int(limit_mb * 2**20)
    too_big = Refused(413, f"{Path(name).name} is larger than this server's upload limit of "
                           f"{limit_mb:g} MB (qdmn-app --max-upload-mb)")
    declared = request.headers.get("content-length")
    size = 0
    try:
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        with path.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise Refused(400, f"{Path(name).name} is empty")


async def _propagate(ws: WebSocket, state: AppState, sid: str) -> None:
    """The propagation socket: the page sends {"start": frame}; the server answers with a
    message per frame and a closing one ("done" or "error"). {"cancel": true} from the page, or
    the page going away, sets the run's stop event: it ends after the current frame."""
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def emit(message: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(messages.put_nowait, message)

    try:
        session = state.sessions.get(sid)
        try:
            request = json.loads(await ws.receive_text())
            start = request.get("start", 0)
        except (ValueError, AttributeError):
            raise Refused(400, 'bad request: expected {"start": frame}') from None
        if isinstance(start, bool) or not isinstance(start, int):
            raise Refused(400, f"start={start!r}: expected a frame index")
    except WebSocketDisconnect:
        return
    except (UnknownSession, Refused) as e:
        await ws.send_json({"type": "error", "message": str(e)})
        await ws.close()
        return

    def work() -> None:
        try:
            emit(run_propagation(session, state.segmenter, state.model_lock, start, stop,
                                 emit))
        except QDMNRuntimeError as e:
            emit({"type": "error", "message": one_line(e)})
        except Exception as e:  # noqa: BLE001 - a failed run is reported to its page
            emit({"type": "error", "message": one_line(e)})

    async def watch() -> None:
        """Cancel on request or when the page goes away."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                text = await ws.receive_text()
                with contextlib.suppress(ValueError, AttributeError):
                    if json.loads(text).get("cancel"):
                        stop.set()
        stop.set()

    worker = loop.run_in_executor(None, work)
    watcher = asyncio.create_task(watch())
    try:
        while True:
            message = await messages.get()
            await ws.send_json(message)
            if message["type"] in ("done", "error"):
                break
        await ws.close()
    except (WebSocketDisconnect, RuntimeError, OSError):
        stop.set()
    finally:
        watcher.cancel()
        await worker


# ---------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qdmn-app", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, type=path_arg,
                   help="the folder whose videos and frame folders the page may open")
    p.add_argument("--engine-dir", type=path_arg, default=DEFAULT_ENGINES,
                   help=f"the exported graphs (default: {DEFAULT_ENGINES})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--work-dir", type=path_arg,
                   help="where sessions keep their files (default: a fresh temporary folder, "
                        "removed at exit)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_UPLOAD_MB,
                   help=f"largest upload accepted (default {DEFAULT_UPLOAD_MB})")
    p.add_argument("--session-idle-min", type=float, default=DEFAULT_IDLE_S / 60,
                   help="forget a tab's session (and remove its files) when its page has not "
                        f"been heard from for this long, e.g. it crashed (default "
                        f"{DEFAULT_IDLE_S / 60:g}; an open page is heard from every minute)")
    add_execution_options(p)
    add_runtime_options(p)
    return p.parse_args(argv)


class _Fail(Exception):
    """A bad argument (message printed as is)."""


def _check(args: argparse.Namespace) -> None:
    if not args.root.is_dir():
        raise _Fail(f"--root {args.root}: not a folder")
    if not 0 < args.max_upload_mb <= 1 << 20:
        raise _Fail(f"--max-upload-mb {args.max_upload_mb:g}: expected a size in MB > 0")
    if not args.session_idle_min >= 2:
        raise _Fail(f"--session-idle-min {args.session_idle_min:g}: expected at least 2 (an open "
                    "page is heard from every minute)")
    if not 0 <= args.port <= 65535:
        raise _Fail(f"--port {args.port}: expected 0..65535")
    if not (args.engine_dir / "manifest.json").is_file():
        raise _Fail(f"--engine-dir {args.engine_dir}: no exported graphs there; export the "
                    f"shipped model with `python export/to_onnx.py models/qdmn-light.pth --out "
                    f"{args.engine_dir} --max-objects 4`")
    if args.work_dir is not None and args.work_dir.exists() and not args.work_dir.is_dir():
        raise _Fail(f"--work-dir {args.work_dir}: not a folder")


def _bind(host: str, port: int) -> socket.socket:
    """Listen before the model loads, so that a port in use fails at once and `--port 0`
    knows its port."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        raise _Fail(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return sock


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """The graphs, backend and settings, as `runtime/run.py` builds them."""
    manifest = Manifest.load(args.engine_dir)
    config = runtime_config(args, manifest)
    backend = create_backend(args.backend, manifest, args.engine_dir, config)
    return Segmenter.from_backend(manifest, backend, config)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings_as_lines()
    try:
        _check(args)
        sock = _bind(args.host, args.port)
        segmenter = load_segmenter(args)
        work = _work_dir(args.work_dir)
    except _Fail as e:
        return fail(str(e))
    except (QDMNRuntimeError, OSError) as e:
        return fail(e)
    sessions: Sessions | None = None
    try:
        # uvicorn shuts down on Ctrl-C / SIGTERM, then raises the signal again: as an
        # interrupt here, so that the sessions' folders are removed before the process ends
        with terminate_as_interrupt():
            app = create_app(segmenter, args.root.resolve(), work,
                             max_upload_mb=args.max_upload_mb, hosts=_hosts(args.host, sock),
                             session_idle_s=60 * args.session_idle_min)
            sessions = app.state.qdmn.sessions
            _serve(app, sock, args, work)
    except KeyboardInterrupt as e:
        return interrupt_exit_code(e)
    finally:
        if sessions is not None:
            sessions.close_all()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        segmenter.close()
    return 0


def _hosts(host: str, sock: socket.socket) -> list[str]:
    """The Host names requests may carry: this machine's, and the one served on."""
    if host in ("0.0.0.0", "::"):
        return ["*"]
    return ["127.0.0.1", "localhost", host, sock.getsockname()[0]]


def _serve(app: FastAPI, sock: socket.socket, args: argparse.Namespace, work: Path) -> None:
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach it may use the page and "
              f"read the videos under {args.root} (there is no login)", file=sys.stderr)
    print(f"qdmn-app: {url} (root {args.root}, work folder {work}; Ctrl-C stops)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="wsproto")).run(sockets=[sock])


def _work_dir(work_dir: Path | None) -> Path:
    if work_dir is None:
        return Path(tempfile.mkdtemp(prefix="qdmn-app-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(work_dir, os.W_OK | os.X_OK):
        raise _Fail(f"--work-dir {work_dir}: not writable")
    return work_dir


if __name__ == "__main__":
    sys.exit(main())
