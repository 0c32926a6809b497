"""Where the demo's and the tests' videos come from. The repository ships no dataset files:

- a DAVIS root the user names (`--data`), or the DAVIS-2016 copy beside the project
  (`../shared/data/DAVIS2016`, or `$QDMN_SHARED_DATA/DAVIS2016`) on development and CI machines:
  `demo_clips` builds the two demo clips from its held-out sequences, `blackswan` (one object)
  and `cows+libby` (two: the two sequences side by side at half width);
- the official DAVIS-2017 480p archive, downloaded, checked against its published size and
  sha256, and unpacked (`download_davis2017`, `python demo.py --download`);
- with neither, `generated_clips`: two short clips made here with exact masks, objects cut from
  photos that Matplotlib installs, moving and crossing over a landscape drawn from its terrain
  data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from runtime.media.davis import DatasetError, DavisLayout, read_sequence
from runtime.media.palette import save_palette_png
from runtime.media.sources import read_frame

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # a source checkout: models/, configs/
DEMO_SPLIT = "demo"  # ImageSets/demo.txt of a demo root lists its clips
ONE, TWO = "blackswan", "cows+libby"  # the demo clips built from real DAVIS sequences
GENERATED_ONE, GENERATED_TWO = "portrait", "portrait+present"  # the generated ones

DAVIS2017_URL = "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip"
DAVIS2017_BYTES = 832_766_765
DAVIS2017_SHA256 = "e3d0b5b77c3d031b000a19e0e25e3e2cac65d183755601bc2cf066df1a2aa492"
GET_DAVIS = ("no DAVIS data here: get it with `python demo.py --download` (DAVIS 2017 480p, "
             "833 MB, from davischallenge.org) or pass a DAVIS root with --data")


def shared_data() -> Path:
    """The shared data folder beside the project (development and CI machines)."""
    return Path(os.environ.get("QDMN_SHARED_DATA") or PROJECT_ROOT.parent / "shared" / "data")


def find_davis(data: str | Path | None = None) -> Path | None:
    """A DAVIS-layout root with the demo's source sequences: `data` when given (it must hold
    them), else the shared DAVIS-2016 copy when present, else None."""
    if data is not None:
        root = Path(data)
        missing = [s for s in ("blackswan", "cows", "libby")
                   if not DavisLayout(root).frames_dir(s).is_dir()]
        if missing:
            raise DatasetError(f"{root} is not a DAVIS 480p root with {', '.join(missing)} "
                               "(JPEGImages/480p/<sequence>/)")
        return root
    root = shared_data() / "DAVIS2016"
    return root if DavisLayout(root).frames_dir("blackswan").is_dir() else None


def cache_dir() -> Path:
    """Where built clips and downloads are kept: $XDG_CACHE_HOME/qdmn (~/.cache/qdmn)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qdmn"


def demo_root(data: str | Path | None = None) -> tuple[Path, bool]:
    """The two demo clips in the DAVIS layout (`ImageSets/demo.txt` lists them, one object then
    two), built once into `cache_dir()`, and whether they are real video: from `data` or the
    shared DAVIS copy (see `find_davis`), else generated."""
    key = hashlib.sha256(Path(__file__).read_bytes())
    davis = find_davis(data)
    if davis is None:
        return generated_clips(cache_dir() / f"demo-generated-{key.hexdigest()[:12]}"), False
    key.update(str(davis.resolve()).encode())
    return demo_clips(davis, cache_dir() / f"demo-davis-{key.hexdigest()[:12]}"), True


# ------------------------------------------------------------------------------ writing
def write_clip(layout: DavisLayout, name: str, frames: list[np.ndarray],
               labels: list[np.ndarray], quality: int = 90) -> None:
    """RGB frames (JPEG of this quality) and object ids (palette PNG) as sequence `name` of a
    DAVIS layout."""
    fdir, mdir = layout.frames_dir(name), layout.annotations_dir(name)
    fdir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    for i, (frame, lab) in enumerate(zip(frames, labels, strict=True)):
        cv2.imwrite(str(fdir / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
        save_palette_png(lab, mdir / f"{i:05d}.png")


def side_by_side(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Two clips (frames (T, H, W, 3), ids (T, H, W)) as one of two objects: a's object 1 on the
    left half, b's as object 2 on the right, each squeezed to half width; the shorter length."""
    (fa, la), (fb, lb) = a, b
    t = min(len(fa), len(fb))
    h, w = la.shape[1:]
    half = (w // 2, h)

    def squeeze(img: np.ndarray, nearest: bool) -> np.ndarray:
        return cv2.resize(img, half, interpolation=cv2.INTER_NEAREST if nearest else
                          cv2.INTER_AREA)

    frames = np.stack([np.concatenate([squeeze(fa[i], False), squeeze(fb[i], False)], 1)
                       for i in range(t)])
    labels = np.stack([np.concatenate([squeeze((la[i] > 0).astype(np.uint8), True),
                                       2 * squeeze((lb[i] > 0).astype(np.uint8), True)], 1)
                       for i in range(t)])
    return frames, labels


def _finish(layout: DavisLayout, names: list[str]) -> Path:
    split = layout.split_file(DEMO_SPLIT)
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("".join(f"{n}\n" for n in names))
    return layout.root


def _staged(out: Path, build: Callable[[DavisLayout], None]) -> Path:
    """Build into a staging folder beside `out`, then move it in whole (a reader never sees a
    half-built root; two builders race harmlessly: the first rename wins)."""
    if DavisLayout(out).split_file(DEMO_SPLIT).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        build(DavisLayout(tmp))
        try:
            tmp.rename(out)
        except OSError:
            if not DavisLayout(out).split_file(DEMO_SPLIT).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- real clips
def demo_clips(davis: str | Path, out: str | Path) -> Path:
    """`blackswan` and `cows+libby` from a DAVIS 480p root, in the DAVIS layout under `out`
    (built once; an existing complete `out` is reused). Returns `out`."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        seq = read_sequence(davis, name)
        return np.stack([read_frame(f) for f in seq.frames]), seq.labels

    def build(layout: DavisLayout) -> None:
        one = read_sequence(davis, ONE)  # its frames as released, its masks as palette PNGs
        layout.frames_dir(ONE).mkdir(parents=True)
        layout.annotations_dir(ONE).mkdir(parents=True)
        for i, (frame, lab) in enumerate(zip(one.frames, one.labels)):
            shutil.copy(frame, layout.frames_dir(ONE) / f"{i:05d}{frame.suffix}")
            save_palette_png((lab > 0).astype(np.uint8),
                             layout.annotations_dir(ONE) / f"{i:05d}.png")
        write_clip(layout, TWO, *map(list, side_by_side(read("cows"), read("libby"))))
        _finish(layout, [ONE, TWO])

    return _staged(Path(out), build)


# ------------------------------------------------------------------------ generated clips
def _sample_data(name: str) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / name
    return path if path.is_file() else None


def _texture(seed: int) -> np.ndarray:
    """A smooth random RGB texture: the stand-in for a photo where Matplotlib is absent."""
    noise = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    return cv2.resize(cv2.GaussianBlur(noise, (0, 0), 3), (480, 360))


def _photo(name: str, fallback_seed: int) -> np.ndarray:
    """An RGB photo Matplotlib installs (its sample data), or a texture without it."""
    path = _sample_data(name)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None else None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img is not None else _texture(fallback_seed)


def _landscape(h: int, w: int) -> np.ndarray:
    """The background: a shaded relief of the terrain Matplotlib installs (an elevation map of
    Jacksboro, Tennessee), in earth colours; a texture without it."""
    path = _sample_data("jacksboro_fault_dem.npz")
    if path is None:
        return cv2.resize(_texture(0), (w, h))
    from matplotlib import colormaps

    z = np.load(path)["elevation"].astype(np.float32)
    z = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    gy, gx = np.gradient(z * 40)
    shade = np.clip(0.75 + 0.25 * (gx - gy) / np.hypot(1, np.hypot(gx, gy)), 0.4, 1.0)
    rgb = colormaps["gist_earth"](0.15 + 0.7 * z)[..., :3] * shade[..., None]
    return cv2.resize((rgb * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _cutout(photo: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
            ) -> tuple[np.ndarray, np.ndarray]:
    """The part of `photo` in the relative box (top, left, bottom, right), resized to `size`
    (h, w), and an elliptical mask of that size: an object with its exact outline."""
    ph, pw = photo.shape[:2]
    t, left, b, r = box
    crop = photo[int(t * ph):int(b * ph), int(left * pw):int(r * pw)]
    h, w = size
    patch = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    return patch, _ellipse(h, w, (h - 1) / 2, (w - 1) / 2, h / 2, w / 2)


def _paste(frame: np.ndarray, labels: np.ndarray, obj: tuple[np.ndarray, np.ndarray],
           top: int, left: int, object_id: int) -> None:
    patch, mask = obj
    h, w = mask.shape
    fh, fw = labels.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, fh), min(left + w, fw)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    frame[y0:y1, x0:x1][m] = patch[y0 - top:y1 - top, x0 - left:x1 - left][m]
    labels[y0:y1, x0:x1][m] = object_id


def generated_clips(out: str | Path, size: tuple[int, int] = (480, 854)) -> Path:
    """Two clips with exact masks in the DAVIS layout under `out` (built once): `portrait`, one
    object (a face cut from a photo) gliding and growing over a landscape for 50 frames, and
    `portrait+present`, the face and a gift box crossing for 49 frames, the box in front (the
    masks are what each object shows). Returns `out`."""
    h, w = size
    background = _landscape(h, w)
    face_photo = _photo("grace_hopper.jpg", 2)
    box_photo = _photo("Minduka_Present_Blue_Pack.png", 3)

    def clip(n: int, two: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        frames, labels = [], []
        for i in range(n):
            s = i / (n - 1)
            frame, lab = background.copy(), np.zeros((h, w), np.uint8)
            fh, fw = int(h * (0.45 + 0.15 * s)), int(w * (0.22 + 0.08 * s))
            face = _cutout(face_photo, (0.08, 0.2, 0.62, 0.8), (fh, fw))
            top, left = h * (0.15 + 0.1 * np.sin(3 * s)), w * (0.1 + 0.45 * s)
            _paste(frame, lab, face, int(top), int(left), 1)
            if two:
                box = _cutout(box_photo, (0.1, 0.1, 0.9, 0.9), (int(h * 0.35), int(w * 0.2)))
                _paste(frame, lab, box, int(h * 0.5), int(w * (0.75 - 0.6 * s)), 2)
            frames.append(frame)
            labels.append(lab)
        return frames, labels

    def build(layout: DavisLayout) -> None:
        write_clip(layout, GENERATED_ONE, *clip(50, False))
        write_clip(layout, GENERATED_TWO, *clip(49, True))
        _finish(layout, [GENERATED_ONE, GENERATED_TWO])

    return _staged(Path(out), build)


# ------------------------------------------------------------------------------ download
def download_davis2017(dest: str | Path, *, url: str = DAVIS2017_URL,
                       sha256: str = DAVIS2017_SHA256, size: int | None = DAVIS2017_BYTES,
                       progress: bool = True) -> Path:
    """Download the DAVIS archive at `url` into `dest`, check its size and sha256, unpack it
    and return its DAVIS root (`dest/DAVIS`). An existing unpacked root is reused; a failed or
    corrupt download leaves nothing behind (DatasetError, one line)."""
    dest = Path(dest)
    root = dest / "DAVIS"
    if (root / "JPEGImages" / "480p").is_dir():
        return root
    if root.exists():
        raise DatasetError(f"{root} exists but holds no JPEGImages/480p: remove it, then download "
                           "again")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        return _download(dest, root, url, sha256, size, progress)
    except OSError as e:  # a full disk, an unwritable folder
        raise DatasetError(f"cannot download {url} into {dest}: {e.strerror or e}") from None


def _download(dest: Path, root: Path, url: str, sha256: str, size: int | None,
              progress: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix=".davis-download-", dir=dest) as tmp:
        archive = Path(tmp) / "davis.zip"
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f, \
                    tqdm(total=size, unit="B", unit_scale=True, desc="DAVIS 2017",
                         disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        except urllib.error.URLError as e:
            raise DatasetError(f"cannot download {url}: {e.reason}") from None
        got = archive.stat().st_size
        if size is not None and got != size:
            raise DatasetError(f"{url}: got {got} bytes, expected {size} (an interrupted or "
                               "changed download): nothing kept")
        if digest.hexdigest() != sha256:
            raise DatasetError(f"{url}: sha256 {digest.hexdigest()} is not the published "
                               f"{sha256}: nothing kept")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # no absolute paths or .. escaping the folder
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DatasetError(f"{url}: unsafe path {member} in the archive")
                z.extractall(unpacked)
        except zipfile.BadZipFile as e:
            raise DatasetError(f"{url} is not a zip archive: {e}") from None
        if not (unpacked / "DAVIS" / "JPEGImages" / "480p").is_dir():
            raise DatasetError(f"{url}: no DAVIS/JPEGImages/480p in the archive")
        (unpacked / "DAVIS").rename(root)
    return root
