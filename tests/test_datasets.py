"""Where the demo's and the tests' videos come from (evaluation.datasets): the DAVIS archive
downloaded from a loopback HTTP server, checked and unpacked; the generated clips; the demo on a
machine without DAVIS data."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, script_env
from PIL import Image

from evaluation import datasets
from runtime.media.davis import DatasetError, DavisLayout, list_sequences, read_sequence


def davis_zip() -> bytes:
    """A small archive laid out as the official DAVIS-2017 480p one (DAVIS/JPEGImages/480p/...)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for seq in ("blackswan", "cows", "libby"):
            for i in range(3):
                img = io.BytesIO()
                Image.fromarray(np.full((48, 80, 3), 40 * i, np.uint8)).save(img, "JPEG")
                z.writestr(f"DAVIS/JPEGImages/480p/{seq}/{i:05d}.jpg", img.getvalue())
                mask = io.BytesIO()
                lab = np.zeros((48, 80), np.uint8)
                lab[10:30, 20 + i:50 + i] = 1
                Image.fromarray(lab, "P").save(mask, "PNG")
                z.writestr(f"DAVIS/Annotations/480p/{seq}/{i:05d}.png", mask.getvalue())
        z.writestr("DAVIS/ImageSets/2017/val.txt", "blackswan\ncows\nlibby\n")
    return buf.getvalue()


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback HTTP server; the test puts the bytes to serve per path into the dict."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


def test_download_checks_and_unpacks_the_archive(server, tmp_path):
    url, files = server
    data = davis_zip()
    files["/davis.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    root = datasets.download_davis2017(tmp_path / "dl", url=f"{url}/davis.zip", sha256=sha,
                                       size=len(data), progress=False)
    assert root == tmp_path / "dl" / "DAVIS"
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["DAVIS"]  # nothing else
    assert read_sequence(root, "cows").labels.shape == (3, 48, 80)
    assert datasets.find_davis(root) == root
    # a second call reuses what is there (the server has nothing any more)
    files.clear()
    assert datasets.download_davis2017(tmp_path / "dl", url=f"{url}/davis.zip", sha256=sha,
                                       size=len(data), progress=False) == root
    # and the demo clips build from it
    demo, real = datasets.demo_root(root)
    assert real and list_sequences(demo, DavisLayout(demo).split_file("demo")) == [
        "blackswan", "cows+libby"]
    assert read_sequence(demo, "cows+libby").num_objects == 2


@pytest.mark.parametrize("fault, expect", [
    ("checksum", "is not the published"),
    ("size", "expected"),
    ("missing", "cannot download"),
    ("not a zip", "is not a zip archive"),
])
def test_a_bad_download_is_refused_and_leaves_nothing(server, tmp_path, fault, expect):
    url, files = server
    data = davis_zip() if fault != "not a zip" else b"<html>not found</html>"
    if fault != "missing":
        files["/davis.zip"] = data
    sha = hashlib.sha256(data).hexdigest() if fault != "checksum" else "0" * 64
    size = len(data) + (1 if fault == "size" else 0)
    with pytest.raises(DatasetError, match=expect):
        datasets.download_davis2017(tmp_path / "dl", url=f"{url}/davis.zip", sha256=sha,
                                    size=size, progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_generated_clips_have_exact_masks_of_moving_objects(tmp_path):
    root = datasets.generated_clips(tmp_path / "gen")
    one = read_sequence(root, datasets.GENERATED_ONE)
    two = read_sequence(root, datasets.GENERATED_TWO)
    assert one.labels.shape == (50, 480, 854) and one.num_objects == 1
    assert two.labels.shape == (49, 480, 854) and two.num_objects == 2
    assert all(set(np.unique(lab)) == {0, 1, 2} for lab in two.labels)
    # the objects move: their centres travel across the frame
    xs = [np.nonzero(lab == 1)[1].mean() for lab in one.labels]
    assert xs[-1] - xs[0] > 150
    # and the box (in front) covers part of the face when they cross: masks are what shows
    areas = [(lab == 1).sum() for lab in two.labels]
    assert min(areas) < 0.9 * max(areas)
    assert datasets.generated_clips(tmp_path / "gen") == root  # built once


def test_find_davis_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="blackswan, cows, libby"):
        datasets.find_davis(tmp_path)


def test_demo_runs_without_davis_data(tmp_path):
    """A machine without ../shared and without --data: the demo runs on the generated clips and
    says how to get DAVIS."""
    env = {**script_env(), "QDMN_SHARED_DATA": str(tmp_path / "none"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "demo.py", "--backend", "ort-cpu", "--out",
                        str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "python demo.py --download" in r.stderr
    for name, floor in ((datasets.GENERATED_ONE, 0.7), (datasets.GENERATED_TWO, 0.3)):
        assert len(list((tmp_path / "out" / name).glob("*.png"))) >= 49
        line = next(x for x in r.stdout.splitlines() if x.startswith(name + " "))
        # J&F: one object is followed; two that cross test identity (the model's weak point)
        assert float(line.split()[4]) > floor, line


def test_demo_data_that_is_not_davis_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "demo.py", "--data", str(tmp_path)], cwd=REPO,
                       env=script_env(), capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        (f"error: {tmp_path} is not a DAVIS 480p root with blackswan, cows, libby "
         "(JPEGImages/480p/<sequence>/)")]


def test_no_dataset_files_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    media = [f for f in tracked if Path(f).suffix.lower() in (".jpg", ".jpeg", ".png", ".mp4")
             and not f.startswith(("docs/images/", "models/", "results/"))]
    assert media == []
