"""qdmn-app through FastAPI's test client, with the shipped model on a short real clip: open,
mark (a box through GrabCut), propagate, correct a frame, propagate again, export; and what the
app refuses (paths outside its root, bad uploads, masks of another size), sessions kept apart,
runs ended by a cancel or a tab that goes away."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from app_support import box_of, iou, shipped_engine, write_clip
from conftest import REAL_FRAMES
from PIL import Image

pytest.importorskip("fastapi", reason="the [app] extra is not installed")
from fastapi.testclient import TestClient

from app import server
from app.h264 import video_codec

FRAMES = 16
HEIGHT = 240  # 427x240: an odd width, which the H.264 overlay pads
HOST = "127.0.0.1"  # the test client's requests name the host the app accepts


@pytest.fixture(scope="module")
def segmenter(request):
    args = server.parse_args(["--root", ".", "--engine-dir", str(shipped_engine(request)),
                              "--backend", "ort-cpu"])
    with server.load_segmenter(args) as seg:
        yield seg


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(root, ground truth): the root holds `clip/` (frames) and `clip.mp4` (the same as a video)."""
    root = tmp_path_factory.mktemp("root")
    truth = write_clip(root / "clip", FRAMES, HEIGHT)
    files = sorted((root / "clip").glob("*.jpg"))
    h, w = truth[0].shape
    out = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 24, (w, h))
    for f in files:
        out.write(cv2.imread(str(f)))
    out.release()
    return root, truth


def make_client(segmenter, root: Path, work: Path, **kw) -> TestClient:
    return TestClient(server.create_app(segmenter, root, work, **kw), base_url=f"http://{HOST}")


@pytest.fixture
def client(segmenter, clip, tmp_path):
    return make_client(segmenter, clip[0], tmp_path / "work")


def new_session(client: TestClient) -> str:
    r = client.post("/api/sessions")
    assert r.status_code == 200, r.text
    return r.json()["id"]


def mask_of(client: TestClient, sid: str, frame: int) -> np.ndarray:
    r = client.get(f"/api/s/{sid}/mask/{frame}.png")
    assert r.status_code == 200, r.text
    return np.array(Image.open(io.BytesIO(r.content)))


def propagate(client: TestClient, sid: str, start: int) -> list[dict]:
    """Run a propagation over the socket as the page does; every message until the last."""
    with client.websocket_connect(f"ws://{HOST}/api/s/{sid}/propagate") as ws:
        ws.send_json({"start": start})
        messages = [ws.receive_json()]
        while messages[-1]["type"] == "frame":
            messages.append(ws.receive_json())
    return messages


def error(r) -> str:
    assert r.status_code >= 400, r.text
    return r.json()["error"]


def test_mark_propagate_correct_propagate_again_export(client, clip):
    _, truth = clip
    sid = new_session(client)
    st = client.post(f"/api/s/{sid}/open", json={"path": "clip"}).json()
    assert st["video"].pop("id")
    assert st["video"] == {"name": "clip", "frames": FRAMES, "width": truth[0].shape[1],
                           "height": HEIGHT, "fps": None}
    frame0 = client.get(f"/api/s/{sid}/frame/0.jpg")
    assert frame0.headers["content-type"] == "image/jpeg"

    # a box around the object: GrabCut cuts it out (no more than the box)
    st = client.post(f"/api/s/{sid}/box",
                     json={"frame": 0, "object": 1, "box": box_of(truth[0])}).json()
    assert st["given"] == [0] and st["objects"] == [1]
    marked = mask_of(client, sid, 0) == 1
    x0, y0, x1, y1 = (int(v) for v in box_of(truth[0]))
    assert marked.any() and not marked[:y0].any() and not marked[y1 + 1:].any()
    assert not marked[:, :x0].any() and not marked[:, x1 + 1:].any()
    if REAL_FRAMES:
        assert iou(marked, truth[0] > 0) > 0.4

    messages = propagate(client, sid, 0)
    frames, done = messages[:-1], messages[-1]
    assert [m["index"] for m in frames] == list(range(FRAMES))
    assert [m["done"] for m in frames] == list(range(1, FRAMES + 1))
    assert done["type"] == "done" and not done["cancelled"] and done["frames"] == FRAMES
    assert done["fps"] > 0 and frames[-1]["fps"] == done["fps"]
    first = {i: mask_of(client, sid, i) for i in range(FRAMES)}
    assert all((first[i] == 1).any() for i in range(FRAMES))
    if REAL_FRAMES:  # the object the box marked is followed
        assert min(iou(first[i] == 1, truth[i] > 0) for i in range(1, FRAMES)) > 0.3

    # correct frame 8 with the brush (an extra patch of object 1) and propagate again from it
    fix = (20, 20)
    st = client.post(f"/api/s/{sid}/stroke", json={"frame": 8, "object": 1, "radius": 6,
                                                   "points": [fix, [40, 24]]}).json()
    assert st["given"] == [0, 8]
    assert mask_of(client, sid, 8)[fix[1], fix[0]] == 1 and first[8][fix[1], fix[0]] == 0
    client.post(f"/api/s/{sid}/stroke", json={"frame": 8, "object": 1, "radius": 3,
                                              "points": [[40, 24]], "erase": True})
    fixed = mask_of(client, sid, 8)
    assert fixed[24, 40] == 0 and fixed[fix[1], fix[0]] == 1  # the eraser takes its disc only
    messages = propagate(client, sid, 8)
    assert [m["index"] for m in messages[:-1]] == list(range(8, FRAMES))
    again = {i: mask_of(client, sid, i) for i in range(FRAMES)}
    assert all(np.array_equal(again[i], first[i]) for i in range(8))  # before it: kept
    assert again[8][fix[1], fix[0]] == 1
    assert any(not np.array_equal(again[i], first[i]) for i in range(9, FRAMES))

    # export: palette PNGs at the frames' size, run.json, an H.264 overlay
    r = client.post(f"/api/s/{sid}/export")
    assert r.status_code == 200, r.text
    got = client.get(r.json()["url"])
    assert got.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(got.content)) as zf:
        names = zf.namelist()
        assert names == [f"masks/{i:05d}.png" for i in range(FRAMES)] + ["run.json",
                                                                          "overlay.mp4"]
        for i in range(FRAMES):
            with Image.open(io.BytesIO(zf.read(f"masks/{i:05d}.png"))) as im:
                assert im.mode == "P" and im.size == (truth[0].shape[1], HEIGHT)
                assert np.array_equal(np.array(im), again[i])
        log = json.loads(zf.read("run.json"))
        movie = Path(client.app.state.qdmn.sessions.get(sid).folder) / "overlay-check.mp4"
        movie.write_bytes(zf.read("overlay.mp4"))
    assert log["input"] == "clip" and log["given_frames"] == [0, 8] and log["objects"] == [1]
    assert log["summary"]["frames"] == FRAMES and log["summary"]["fps"] > 0
    assert [f["frame"] for f in log["frames"]] == list(range(FRAMES))
    assert [f["kind"] for f in log["frames"]][:2] == ["first", "propagated"]
    assert video_codec(movie) == ("h264", FRAMES)
    beside = client.get(r.json()["video"])
    assert beside.headers["content-type"] == "video/mp4" and beside.content == movie.read_bytes()


def test_a_video_file_uploads_and_plays_like_its_frames(client, clip):
    root, truth = clip
    sid = new_session(client)
    r = client.put(f"/api/s/{sid}/upload?name=my%20clip.mp4",
                   content=(root / "clip.mp4").read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["video"]["frames"] == FRAMES and r.json()["video"]["name"] == "my clip.mp4"
    # the same video opened again is a new video for the page: new frame URLs, no stale cache
    again = client.post(f"/api/s/{sid}/open", json={"path": "clip"}).json()["video"]
    assert again["id"] != r.json()["video"]["id"]
    r = client.put(f"/api/s/{sid}/upload?name=my%20clip.mp4",
                   content=(root / "clip.mp4").read_bytes())
    client.post(f"/api/s/{sid}/box", json={"frame": 3, "object": 2, "box": box_of(truth[3])})
    messages = propagate(client, sid, 0)
    assert messages[-1]["type"] == "done" and messages[-1]["frames"] == FRAMES
    # frames before the first marked one have no object, those after follow it
    assert not any(mask_of(client, sid, i).any() for i in range(3))
    assert all((mask_of(client, sid, i) == 2).any() for i in range(3, FRAMES))


def test_bad_uploads_get_their_message(segmenter, clip, tmp_path):
    client = make_client(segmenter, clip[0], tmp_path / "work", max_upload_mb=0.05)
    sid = new_session(client)
    text = error(client.put(f"/api/s/{sid}/upload?name=notes.mp4", content=b"hello " * 100))
    assert "notes.mp4" in text and "not a readable video" in text
    assert str(tmp_path) not in text  # named as the user knows it, not by the server's path
    text = error(client.put(f"/api/s/{sid}/upload?name=big.mp4", content=b"\0" * 60_000))
    assert text == ("big.mp4 is larger than this server's upload limit of 0.05 MB "
                    "(qdmn-app --max-upload-mb)")
    assert "is empty" in error(client.put(f"/api/s/{sid}/upload?name=e.mp4", content=b""))
    assert client.get(f"/api/s/{sid}/state").json() == {"video": None}
    assert error(client.post(f"/api/s/{sid}/box", json={"frame": 0, "object": 1,
                                                        "box": [0, 0, 9, 9]})) == (
        "open a video first")
    # nothing of the failed uploads is left in the session's folder
    assert list((tmp_path / "work" / sid).iterdir()) == []
    # and a bad upload after a good video leaves that video open
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    assert "not a readable video" in error(client.put(f"/api/s/{sid}/upload?name=n.mp4",
                                                      content=b"hello"))
    assert client.get(f"/api/s/{sid}/state").json()["video"]["frames"] == FRAMES
    assert client.get(f"/api/s/{sid}/frame/{FRAMES - 1}.jpg").status_code == 200


def test_a_truncated_video_is_said_when_it_is_opened(client, clip, tmp_path):
    """qdmn-run warns of a file that decodes short of the frames it declares; the page opened
    it silently, with fewer frames than the video has."""
    root, _ = clip
    frames = [cv2.imread(str(p)) for p in sorted((root / "clip").glob("*.jpg"))] * 3
    h, w = frames[0].shape[:2]
    whole = tmp_path / "whole.avi"
    out = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 24, (w, h))
    for f in frames:
        out.write(f)
    out.release()
    data = whole.read_bytes()
    sid = new_session(client)
    st = client.put(f"/api/s/{sid}/upload?name=cut.avi", content=data[: len(data) // 2]).json()
    assert 0 < st["video"]["frames"] < len(frames)
    assert st["notes"] == [(f"video cut.avi declares {len(frames)} frames but only "
                            f"{st['video']['frames']} could be decoded: the file looks "
                            "truncated or damaged")]
    assert client.put(f"/api/s/{sid}/upload?name=whole.avi", content=data).json()["notes"] == []


def test_an_object_too_small_for_the_model_is_named_when_it_is_marked(client, clip):
    """The page learns at once (the edit's reply) that an object it marked covers under 4 of the
    memory read's 16x16-pixel cells, with the export size that fits it; a big one, nothing."""
    _, truth = clip
    sid = new_session(client)
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    st = client.post(f"/api/s/{sid}/box",
                     json={"frame": 0, "object": 1, "box": box_of(truth[0])}).json()
    assert st["notes"] == []  # the clip's object: tens of cells
    # a dot of radius 6 at the frame's 427x240 (graphs 240x432): 113 pixels, 0.4 cells
    st = client.post(f"/api/s/{sid}/stroke", json={"frame": 0, "object": 2, "radius": 6,
                                                   "points": [[10, 10]]}).json()
    assert st["objects"] == [1, 2] and len(st["notes"]) == 1
    note = st["notes"][0]
    assert note.startswith("object 2 covers 0.4 of the 16x16-pixel cells the memory is read at "
                           "(240x432 graphs)") and note.endswith("--size 960 1728"), note
    st = client.post(f"/api/s/{sid}/stroke", json={"frame": 0, "object": 2, "radius": 6,
                                                   "points": [[10, 10]], "erase": True}).json()
    assert st["notes"] == []
    # a blob of 5 cells is fine; the eraser taking most of it is named
    st = client.post(f"/api/s/{sid}/stroke", json={"frame": 0, "object": 2, "radius": 21,
                                                   "points": [[30, 30]]}).json()
    assert st["notes"] == []
    st = client.post(f"/api/s/{sid}/stroke", json={"frame": 0, "object": 2, "radius": 18,
                                                   "points": [[30, 30]], "erase": True}).json()
    assert [n.split(" covers ")[0] for n in st["notes"]] == ["object 2"]
    labels = truth[3].copy()
    labels[:12, :12] = 2
    buf = io.BytesIO()
    im = Image.fromarray(labels)
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] * 85 + [0])
    im.save(buf, "PNG")
    st = client.put(f"/api/s/{sid}/mask/3?name=m.png", content=buf.getvalue()).json()
    assert [n.split(" covers ")[0] for n in st["notes"]] == ["object 2"]


def test_masks_of_another_size_or_not_masks_are_refused(client, clip):
    _, truth = clip
    sid = new_session(client)
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    h, w = truth[0].shape

    def png(labels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        im = Image.fromarray(labels)
        im.putpalette([0, 0, 0, 128, 0, 0] * 128)
        im.save(buf, "PNG")
        return buf.getvalue()

    small = np.zeros((100, 100), np.uint8)
    small[40:60, 40:60] = 1
    text = error(client.put(f"/api/s/{sid}/mask/2?name=other.png", content=png(small)))
    assert text.startswith("mask other.png is 100x100 but ") and f"is {w}x{h}" in text
    assert text.endswith("a given mask must have its frame's size")
    text = error(client.put(f"/api/s/{sid}/mask/2?name=x.png", content=b"not a png"))
    assert text.startswith("annotation x.png is not a readable image"), text  # its own name
    assert "marks no object" in error(client.put(f"/api/s/{sid}/mask/2?name=e.png",
                                                 content=png(np.zeros((h, w), np.uint8))))
    good = png(truth[2])
    st = client.put(f"/api/s/{sid}/mask/2?name=good.png", content=good).json()
    assert st["given"] == [2] and np.array_equal(mask_of(client, sid, 2), truth[2])
    # a third object on graphs exported for two
    client.post(f"/api/s/{sid}/stroke", json={"frame": 2, "object": 2, "radius": 5,
                                              "points": [[10, 10]]})
    text = error(client.post(f"/api/s/{sid}/stroke", json={"frame": 5, "object": 3,
                                                           "radius": 5, "points": [[10, 10]]}))
    assert "3 objects in the video, but the graphs were exported for at most 2" in text
    assert "frame 99" in error(client.post(f"/api/s/{sid}/stroke", json={
        "frame": 99, "object": 1, "radius": 5, "points": [[1, 1]]}))
    assert "draw a larger one" in error(client.post(f"/api/s/{sid}/box", json={
        "frame": 0, "object": 1, "box": [5, 5, 6, 6]}))
    assert "bad request" in error(client.post(f"/api/s/{sid}/box", json={
        "frame": 0, "object": 0, "box": [5, 5, 60, 60]}))


def test_paths_outside_the_root_are_refused(client, clip, tmp_path):
    root, _ = clip
    outside = tmp_path / "outside"
    write_clip(outside / "frames", 2)
    (outside / "secret.mp4").write_bytes((root / "clip.mp4").read_bytes())
    links = root / "links"
    links.mkdir(exist_ok=True)
    for name, target in (("out.mp4", outside / "secret.mp4"), ("out-dir", outside / "frames")):
        if not (links / name).is_symlink():
            (links / name).symlink_to(target)
    mixed = root / "mixed"  # a frame folder one of whose frames links out of the root
    if not mixed.exists():
        mixed.mkdir()
        (mixed / "00000.jpg").write_bytes((root / "clip" / "00000.jpg").read_bytes())
        (mixed / "00001.jpg").symlink_to(outside / "frames" / "00001.jpg")
    sid = new_session(client)

    def refused(path: str) -> str:
        return error(client.post(f"/api/s/{sid}/open", json={"path": path}))

    assert refused("../outside/secret.mp4") == (
        "../outside/secret.mp4 is outside the root folder the server was started with")
    assert refused("clip/../../outside/frames").endswith("is outside the root folder the "
                                                         "server was started with")
    assert refused(str(outside / "secret.mp4")).endswith(": absolute paths are refused; name "
                                                         "a path inside the root folder the "
                                                         "server was started with")
    assert refused("links/out.mp4").endswith("is outside the root folder the server was "
                                             "started with")
    assert refused("links/out-dir").endswith("is outside the root folder the server was "
                                             "started with")
    assert refused("mixed") == "00001.jpg links to a file outside the root folder: refused"
    assert refused("nothing-here.mp4") == "nothing-here.mp4 does not exist under the root folder"
    assert client.get(f"/api/s/{sid}/state").json() == {"video": None}
    # the picker lists the root's own entries, never the links that lead out
    listing = client.get("/api/browse").json()["entries"]
    assert {"name": "clip", "kind": "frames"} in listing
    assert {"name": "clip.mp4", "kind": "file"} in listing
    assert client.get("/api/browse", params={"path": "links"}).json()["entries"] == []
    assert "outside the root" in error(client.get("/api/browse", params={"path": ".."}))


def test_the_picker_lists_a_folder_holding_a_name_that_is_not_utf8(segmenter, clip, tmp_path):
    """One file named in Latin-1 made the whole folder's listing a bare 500 (its name cannot
    be JSON text); the picker leaves it out, as the page could not name it back. Names are in
    the order the frames of a folder are read: numbers by value."""
    root = tmp_path / "root"
    (root / "clip").mkdir(parents=True)
    shutil.copy(clip[0] / "clip" / "00000.jpg", root / "clip")
    for name in ("ok.mp4", "10.mp4", "2.mp4"):
        (root / name).write_bytes(b"")
    Path(os.fsdecode(os.fsencode(root) + b"/vid\xe9o.mp4")).write_bytes(b"")
    client = make_client(segmenter, root, tmp_path / "work")
    r = client.get("/api/browse")
    assert r.status_code == 200, r.text
    assert r.json()["entries"] == [{"name": "2.mp4", "kind": "file"},  # numbers by value
                                   {"name": "10.mp4", "kind": "file"},
                                   {"name": "clip", "kind": "frames"},
                                   {"name": "ok.mp4", "kind": "file"}]


def test_two_sessions_do_not_see_each_other(client, clip):
    _, truth = clip
    a, b = new_session(client), new_session(client)
    assert a != b
    client.post(f"/api/s/{a}/open", json={"path": "clip"})
    client.post(f"/api/s/{a}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    assert client.get(f"/api/s/{b}/state").json() == {"video": None}
    assert error(client.get(f"/api/s/{b}/frame/0.jpg")) == "open a video first"
    client.post(f"/api/s/{b}/open", json={"path": "clip"})
    assert client.get(f"/api/s/{b}/state").json()["given"] == []
    assert not mask_of(client, b, 0).any() and mask_of(client, a, 0).any()
    # a closed tab's session is gone, with its folder
    folder = client.app.state.qdmn.sessions.get(a).folder
    client.post(f"/api/s/{a}/close")
    assert not folder.exists()
    assert "reload the page" in error(client.get(f"/api/s/{a}/state"))
    assert client.get(f"/api/s/{b}/state").status_code == 200


def test_a_run_ends_when_cancelled_or_when_its_tab_goes_away(client, clip):
    _, truth = clip
    sid, other = new_session(client), new_session(client)
    for s in (sid, other):
        client.post(f"/api/s/{s}/open", json={"path": "clip"})
        client.post(f"/api/s/{s}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    url = f"ws://{HOST}/api/s/{sid}/propagate"
    with client.websocket_connect(url) as ws:
        ws.send_json({"start": 0})
        assert ws.receive_json()["index"] == 0
        # the one model is busy: another tab is told so, and this session refuses edits
        with client.websocket_connect(f"ws://{HOST}/api/s/{other}/propagate") as ws2:
            ws2.send_json({"start": 0})
            assert ws2.receive_json() == {
                "type": "error",
                "message": "the model is propagating another tab's video: try again when it "
                           "is done"}
        assert "a propagation is running in this tab" in error(client.post(
            f"/api/s/{sid}/stroke", json={"frame": 0, "object": 1, "radius": 3,
                                          "points": [[5, 5]]}))
        ws.send_json({"cancel": True})
        while (m := ws.receive_json())["type"] == "frame":
            pass
    assert m["type"] == "done" and m["cancelled"] and m["frames"] < FRAMES
    # the other tab goes away mid-run: the socket's end stops the run after the current frame
    with client.websocket_connect(f"ws://{HOST}/api/s/{other}/propagate") as ws:
        ws.send_json({"start": 0})
        assert ws.receive_json()["index"] == 0
    st = client.get(f"/api/s/{other}/state").json()
    assert not st["running"] and len(st["done"]) < FRAMES
    messages = propagate(client, other, 0)  # and the model is free again
    assert messages[-1]["frames"] == FRAMES and not messages[-1]["cancelled"]


def test_sessions_no_page_asks_about_are_forgotten_with_their_files(segmenter, clip, tmp_path):
    """A crashed tab's session goes after session_idle_s without a request; an open page's
    heartbeat keeps its own, and a running propagation is never cut."""
    root, truth = clip
    client = make_client(segmenter, root, tmp_path / "work", session_idle_s=120)
    sessions = client.app.state.qdmn.sessions
    crashed, open_tab, running = (new_session(client) for _ in range(3))
    for s in (crashed, open_tab, running):
        client.post(f"/api/s/{s}/open", json={"path": "clip"})
        client.post(f"/api/s/{s}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    folders = {s: sessions.get(s).folder for s in (crashed, open_tab, running)}

    def idle_for(sid: str, seconds: float) -> None:
        sessions.get(sid).seen -= seconds  # as if no request had named it for that long

    with client.websocket_connect(f"ws://{HOST}/api/s/{running}/propagate") as ws:
        ws.send_json({"start": 0})
        assert ws.receive_json()["index"] == 0
        idle_for(crashed, 121)
        idle_for(running, 121)
        idle_for(open_tab, 60)
        assert client.get(f"/api/s/{open_tab}/alive").json() == {}  # the page's heartbeat
        assert not folders[crashed].exists()
        assert "reload the page" in error(client.get(f"/api/s/{crashed}/state"))
        assert folders[running].exists() and folders[open_tab].exists()
        ws.send_json({"cancel": True})
        while ws.receive_json()["type"] == "frame":
            pass
    idle_for(open_tab, 100)  # 160 s in all, but the heartbeat came 100 s ago
    new_session(client)  # the run is over: its session, idle for 121 s, goes now
    assert folders[open_tab].exists() and not folders[running].exists()
    assert client.get(f"/api/s/{open_tab}/state").json()["given"] == [0]


def test_nothing_is_written_outside_the_work_folder(segmenter, clip, tmp_path):
    """Sessions, uploads, decoded frames and exports all stay in the app's work folder; the root
    is only read."""
    root, truth = clip
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    work = tmp_path / "work"
    client = make_client(segmenter, root, work)
    sid = new_session(client)
    client.put(f"/api/s/{sid}/upload?name=c.mp4", content=(root / "clip.mp4").read_bytes())
    client.post(f"/api/s/{sid}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    propagate(client, sid, 0)
    assert client.post(f"/api/s/{sid}/export").status_code == 200
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    names = sorted(p.name for p in (work / sid).iterdir())
    assert [n.split("-")[0] for n in names] == ["export", "frames", "upload"], names
    assert names[2].endswith(".mp4")
    assert sorted(p.name for p in (work / sid / "export").iterdir()) == ["c-qdmn.mp4",
                                                                         "c-qdmn.zip"]


@pytest.mark.parametrize("args, message", [
    (["--root", "/nonexistent-root"], "error: --root /nonexistent-root: not a folder"),
    (["--root", ".", "--engine-dir", "/nonexistent-graphs"],
     ("error: --engine-dir /nonexistent-graphs: no exported graphs there; export the shipped "
      "model with `python export/to_onnx.py models/qdmn-light.pth --out /nonexistent-graphs "
      "--max-objects 4`")),
    (["--root", ".", "--max-upload-mb", "0"],
     "error: --max-upload-mb 0: expected a size in MB > 0"),
    (["--root", ".", "--port", "70000"], "error: --port 70000: expected 0..65535"),
    (["--root", ".", "--session-idle-min", "0.5"],
     ("error: --session-idle-min 0.5: expected at least 2 (an open page is heard from every "
      "minute)")),
])
def test_bad_arguments_are_one_line(args, message, capsys, request):
    engines = ["--engine-dir", str(shipped_engine(request))] if "--engine-dir" not in args else []
    assert server.main([*args, *engines, "--no-browser"]) == 1
    assert capsys.readouterr().err == message + "\n"


def test_a_port_in_use_is_one_line(capsys, request):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = server.main(["--root", ".", "--engine-dir", str(shipped_engine(request)),
                            "--port", str(port), "--no-browser"])
    assert code == 1
    assert capsys.readouterr().err == (f"error: cannot serve on 127.0.0.1:{port}: "
                                       f"{os.strerror(98)}\n")


def test_the_speed_benchmark_compares_the_app_with_run_py(clip, tmp_path, request, capsys):
    """benchmarks/app_speed.py end to end (one run of each path): both rates and their ratio."""
    from benchmarks import app_speed
    from runtime.media.palette import save_palette_png

    root, truth = clip
    save_palette_png(truth[0], tmp_path / "first.png")
    assert app_speed.main(["--engine-dir", str(shipped_engine(request)), "--input",
                           str(root / "clip"), "--mask", str(tmp_path / "first.png"),
                           "--repeats", "1", "--backend", "ort-cpu",
                           "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "app_speed.json").read_text())
    assert [r["path"] for r in doc["runs"]] == ["run.py", "app"]
    assert all(r["frames"] == FRAMES and r["fps"] > 0 for r in doc["runs"])
    assert doc["app_vs_run_py_model_fps"] == round(
        doc["mean"]["app"]["fps"] / doc["mean"]["run.py"]["fps"], 3)
    assert "app / run.py model FPS:" in capsys.readouterr().out


def test_editing_a_corrected_frame_again_and_propagating_from_an_unmarked_frame(client, clip):
    """A frame corrected, propagated, then corrected again still propagates; propagating from a
    frame no mask was given on continues from its masks as shown (they become a given mask)."""
    _, truth = clip
    sid = new_session(client)
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    client.post(f"/api/s/{sid}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    assert propagate(client, sid, 0)[-1]["type"] == "done"
    stroke = {"frame": 4, "object": 1, "radius": 6, "points": [[20, 20], [40, 30]]}
    assert client.post(f"/api/s/{sid}/stroke", json=stroke).status_code == 200
    assert propagate(client, sid, 4)[-1]["type"] == "done"
    client.post(f"/api/s/{sid}/stroke", json={**stroke, "erase": True})
    assert propagate(client, sid, 4)[-1]["type"] == "done"
    before = [mask_of(client, sid, i) for i in range(FRAMES)]
    messages = propagate(client, sid, 9)  # never marked: its masks as shown are the start
    assert messages[-1]["type"] == "done" and messages[0]["index"] == 9
    st = client.get(f"/api/s/{sid}/state").json()
    assert st["given"] == [0, 4, 9]
    assert np.array_equal(mask_of(client, sid, 9), before[9])
    assert all(np.array_equal(mask_of(client, sid, i), before[i]) for i in range(9))


def test_an_object_erased_where_it_was_marked_and_marked_later_propagates(client, clip):
    """Marked on frame 0, erased there, marked on frame 3: frame 0's mask now says "absent
    here", and a run goes from frame 3, the first that shows it. Before, every run failed with
    "the first mask marks no object" and only reopening the video (losing the work) got out."""
    _, truth = clip
    sid = new_session(client)
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    client.post(f"/api/s/{sid}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    h, w = truth[0].shape
    wipe = {"frame": 0, "object": 1, "radius": 500, "points": [[w / 2, h / 2]], "erase": True}
    assert client.post(f"/api/s/{sid}/stroke", json=wipe).status_code == 200
    assert not mask_of(client, sid, 0).any()
    st = client.post(f"/api/s/{sid}/box",
                     json={"frame": 3, "object": 1, "box": box_of(truth[3])}).json()
    assert st["given"] == [0, 3] and st["objects"] == [1]
    for start in (0, 3):
        messages = propagate(client, sid, start)
        assert messages[-1]["type"] == "done", messages[-1]
        assert [m["index"] for m in messages[:-1]] == list(range(start, FRAMES))
        masks = [mask_of(client, sid, i) for i in range(FRAMES)]
        assert not any(m.any() for m in masks[:3]) and all((m == 1).any() for m in masks[3:])


def test_an_object_erased_wherever_it_was_marked_no_longer_counts(client, clip):
    """Two-object graphs: objects 1 and 2 marked, 2 erased again, then a new object 3 is
    accepted (before, the erased 2 still counted: "3 objects in the video"), and the run
    segments 1 and 3 only."""
    _, truth = clip
    sid = new_session(client)
    client.post(f"/api/s/{sid}/open", json={"path": "clip"})
    client.post(f"/api/s/{sid}/box", json={"frame": 0, "object": 1, "box": box_of(truth[0])})
    dot = {"frame": 0, "object": 2, "radius": 6, "points": [[12, 12]]}
    assert client.post(f"/api/s/{sid}/stroke", json=dot).json()["objects"] == [1, 2]
    st = client.post(f"/api/s/{sid}/stroke", json={**dot, "radius": 10, "erase": True}).json()
    assert st["objects"] == [1] and set(np.unique(mask_of(client, sid, 0))) == {0, 1}
    r = client.post(f"/api/s/{sid}/stroke", json={**dot, "object": 3, "points": [[14, 200]]})
    assert r.status_code == 200, r.text
    assert r.json()["objects"] == [1, 3]
    # a third object is still one too many for these graphs
    assert "at most 2" in error(client.post(f"/api/s/{sid}/stroke",
                                            json={**dot, "object": 4, "points": [[60, 12]]}))
    assert propagate(client, sid, 0)[-1]["type"] == "done"
    shown = {int(o) for i in range(FRAMES) for o in np.unique(mask_of(client, sid, i))}
    assert shown == {0, 1, 3}
    # erased after a run: the frames the run showed it on lose it too, and marking another
    # object on one of them does not bring it back
    st = client.post(f"/api/s/{sid}/stroke", json={**dot, "object": 3, "points": [[14, 200]],
                                                   "radius": 12, "erase": True}).json()
    assert st["objects"] == [1]
    assert not any((mask_of(client, sid, i) == 3).any() for i in range(FRAMES))
    r = client.post(f"/api/s/{sid}/stroke", json={**dot, "frame": 5, "object": 4})
    assert r.status_code == 200, r.text
    assert r.json()["objects"] == [1, 4] and r.json()["given"] == [0, 5]


def test_requests_from_another_site_are_refused(client):
    r = client.post("/api/sessions", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    assert client.post("/api/sessions", headers={"Origin": f"http://{HOST}"}).status_code == 200
    sid = new_session(client)
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), client.websocket_connect(
            f"ws://{HOST}/api/s/{sid}/propagate", headers={"Origin": "https://evil.example"}
    ) as ws:
        ws.receive_json()
