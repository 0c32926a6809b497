"""qdmn-app end to end in a real headless browser: Debian's Chromium driven by Selenium through
Debian's chromedriver (nothing downloads a browser or a driver). The server runs as `python -m
app.server` on a free port; the test opens a real clip, draws a box on a frame, propagates,
corrects a later frame with the brush, propagates again from it, exports, checks the exported
masks and that the browser plays the overlay video. With QDMN_UPDATE_SCREENSHOT=1 (and the real
DAVIS frames) it saves the page as docs/images/app.png, the README's picture."""

from __future__ import annotations

import io
import itertools
import os
import select
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
from app_support import box_of, iou, shipped_engine, write_clip
from conftest import REAL_FRAMES, REPO, script_env
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FRAMES = 16
HEIGHT = 360  # a frame the page shows large enough to mark and for the README's picture
SCREENSHOT = REPO / "docs" / "images" / "app.png"
WAIT = 120  # seconds any one step may take on a loaded 2-core machine


def _require_browser() -> None:
    pytest.importorskip("fastapi", reason="the [app] extra is not installed")
    pytest.importorskip("selenium", reason="selenium is not installed (the [dev] extra)")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} absent: apt-get install chromium chromium-driver")


@pytest.fixture
def server(request, tmp_path):
    """(base URL, ground truth of the clip under its root): `python -m app.server` serving a
    root with `clip/`, a real clip where the DAVIS frames are here."""
    _require_browser()
    root = tmp_path / "root"
    truth = write_clip(root / "clip", FRAMES, HEIGHT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.server", "--root", str(root), "--engine-dir",
         str(shipped_engine(request)), "--port", "0", "--no-browser", "--work-dir",
         str(tmp_path / "work")],
        cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("qdmn-app: http://127.0.0.1:"), (line, proc.poll(),
                                                               proc.stderr.read1(10_000)
                                                               if proc.poll() is not None else "")
        yield line.split()[1], truth
        # SIGTERM: the server ends its sessions (their folders go) and exits as run.py does
        proc.terminate()
        assert proc.wait(timeout=60) == 143
        assert list((tmp_path / "work").iterdir()) == []
    finally:
        proc.kill()
        proc.wait(timeout=60)


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1100,1000"):
        options.add_argument(flag)
    # the driver's path is given, so Selenium Manager is never asked to find (download) one
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_mark_propagate_correct_export_in_chromium(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, truth = server
    d = browser
    wait = WebDriverWait(d, WAIT)

    def state_is(*states: str) -> None:
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                   in states)

    def message() -> str:
        return d.find_element(By.ID, "message").text

    def drag(points: list[tuple[float, float]]) -> None:
        """Press at the first point (frame pixels), move through the others, release."""
        w, cw, ch = d.execute_script(
            "const c = document.getElementById('canvas'); const r = c.getBoundingClientRect();"
            "return [c.width, r.width, r.height];")
        scale = cw / w
        canvas = d.find_element(By.ID, "canvas")
        off = [(round(x * scale - cw / 2), round(y * scale - ch / 2)) for x, y in points]
        chain = ActionChains(d).move_to_element_with_offset(canvas, *off[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(off):
            chain = chain.move_by_offset(x1 - x0, y1 - y0)
        chain.release().perform()

    def given() -> list[int]:
        return d.execute_script("return window.qdmn.given")

    d.get(url)
    state_is("idle")
    d.find_element(By.ID, "path").send_keys("clip", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-frame") == "0")
    assert message().startswith("clip: 16 frames")

    # a box around the object on frame 0: GrabCut marks it
    x0, y0, x1, y1 = box_of(truth[0])
    drag([(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)])
    wait.until(lambda d: given() == [0])
    assert message() == "frame 0 marked. Propagate, or mark more."
    d.find_element(By.ID, "propagate").click()
    state_is("done")
    assert d.find_element(By.ID, "progress").get_attribute("value") == str(FRAMES)
    assert "FPS (model)" in d.find_element(By.ID, "fps").text
    assert message().startswith("propagated 16 frames from frame 0")

    # scrub to frame 10 with the keyboard, paint a correction with the brush, propagate again
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.HOME)  # the page shows the last propagated frame
    for _ in range(10):
        body.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-frame") == "10")
    d.find_element(By.ID, "tool-brush").click()
    stroke = [(30.0, 30.0), (60.0, 35.0), (90.0, 40.0)]
    drag(stroke)
    wait.until(lambda d: given() == [0, 10])
    d.find_element(By.ID, "propagate").click()
    state_is("done")
    assert message().startswith("propagated 6 frames from frame 10")

    d.find_element(By.ID, "export").click()
    state_is("exported")
    href = d.find_element(By.ID, "download").get_attribute("href")
    with urlopen(href, timeout=WAIT) as r:
        data = r.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        masks = []
        for i in range(FRAMES):
            with Image.open(io.BytesIO(zf.read(f"masks/{i:05d}.png"))) as im:
                assert im.mode == "P" and im.size == truth[0].shape[::-1]
                masks.append(np.array(im))
        assert "overlay.mp4" in zf.namelist() and "run.json" in zf.namelist()
    assert all((m == 1).any() for m in masks)
    assert masks[10][35, 60] == 1  # the brush's correction
    if REAL_FRAMES:
        assert min(iou(m == 1, t > 0) for m, t in zip(masks[:10], truth[:10])) > 0.3

    # the browser decodes the H.264 overlay (its first frame, at the frames' size, padded even)
    wait.until(lambda d: d.execute_script(
        "return document.getElementById('overlay-video').readyState") >= 2)
    width = d.execute_script("return document.getElementById('overlay-video').videoWidth")
    assert width == truth[0].shape[1] + truth[0].shape[1] % 2

    # the README's picture: a propagated frame with its mask, the controls, the export
    body.send_keys(Keys.HOME)
    for _ in range(6):
        body.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-frame") == "6")
    d.execute_script("window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")
    assert shot.size[0] >= 1000
    if REAL_FRAMES and os.environ.get("QDMN_UPDATE_SCREENSHOT"):
        # 256 colours, dithered: a third of the plain PNG's size for the repository
        shot.quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(SCREENSHOT, optimize=True)

    # a second object marked with one small dot: the message says the model cannot keep it
    d.find_element(By.ID, "add-object").click()
    drag([(12.0, 12.0)])
    wait.until(lambda d: "object 2 covers" in message())
    assert message().startswith("frame 6 marked. object 2 covers 0.")
    assert message().endswith("--size 960 1728") or message().endswith("--size 720 1296")
