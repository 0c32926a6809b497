"""The command lines: console entry points, scripts run by path from any folder, and the
import hygiene that makes both work (no sys.path edits, no module shadowing)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib import import_module, metadata
from pathlib import Path

import pytest
from conftest import REPO, installed_from_here, script_env

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ENTRY_POINTS = ("qdmn-export", "qdmn-build-engines", "qdmn-trt-check", "qdmn-run", "qdmn-batch",
                "qdmn-evaluate", "qdmn-speed", "qdmn-long-video", "qdmn-aspect-fit",
                "qdmn-batch-throughput", "qdmn-train")
SCRIPTS = ("runtime/run.py", "runtime/batch.py", "export/to_onnx.py", "export/build_engines.py",
           "export/trt_check.py", "benchmarks/evaluate.py", "benchmarks/speed.py",
           "benchmarks/long_video.py", "benchmarks/aspect_fit.py", "benchmarks/read_options.py",
           "benchmarks/official_speed_checkpoint.py", "benchmarks/batch_throughput.py",
           "training/train.py")
# Folders holding scripts: `python DIR/x.py` puts DIR first on sys.path.
SCRIPT_DIRS = ("runtime", "export", "benchmarks", "training", "scripts")


def declared_scripts() -> dict[str, str]:
    """Each console script's program (the `qdmn.programs` entry point its launcher runs)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert set(project["scripts"].values()) == {"runtime.cli:launch"}
    programs = project["entry-points"]["qdmn.programs"]
    assert set(programs) == set(project["scripts"])
    return programs


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=script_env(), capture_output=True, text=True,
                          timeout=180, check=False)


def test_entry_points_declared_and_resolvable():
    scripts = declared_scripts()
    assert set(ENTRY_POINTS) <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(import_module(module), func)), name


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_help(name, tmp_path):
    """The installed console script where this checkout is the installed one (CI), else the same
    call the generated script makes."""
    if installed_from_here():
        cmd = [str(Path(sysconfig.get_path("scripts")) / name), "--help"]
        assert name in {e.name for e in metadata.distribution("qdmn-deploy").entry_points}
    else:  # the program the launcher would run
        module, func = declared_scripts()[name].split(":")
        code = f"import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
        cmd = [sys.executable, "-c", code, "--help"]
    r = run(cmd, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: {name}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_by_path_from_any_folder(script, tmp_path):
    r = run([sys.executable, str(REPO / script), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: {Path(script).name}")


def test_modules_do_not_edit_sys_path():
    offenders = [p.relative_to(REPO).as_posix()
                 for d in (*SCRIPT_DIRS, "evaluation", "runtime/backends")
                 for p in sorted((REPO / d).glob("*.py"))
                 if "sys.path" in p.read_text()]
    assert offenders == []
    assert "sys.path" not in (REPO / "demo.py").read_text()


def test_script_folders_shadow_no_module():
    """`python runtime/run.py` makes every name in runtime/ importable as a top-level module: none
    may be a standard-library module or a top-level module of an installed distribution."""
    taken = set(sys.stdlib_module_names) | set(metadata.packages_distributions())
    clashes = []
    for d in SCRIPT_DIRS:
        folder = REPO / d
        names = {p.stem for p in folder.glob("*.py")} | {
            p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
        clashes += [f"{d}/{n}" for n in sorted(names) if n in taken and n != "__init__"]
    assert clashes == []


@pytest.mark.parametrize("args", [
    ["runtime/run.py", "--engine-dir", "e", "--input", "in", "--mask", "m.png", "--output", ""],
    ["runtime/run.py", "--engine-dir", "e", "--input", "", "--mask", "m.png", "--output", "o"],
    ["export/to_onnx.py", "models/qdmn-light.pth", "--out", ""],
    ["runtime/batch.py", "--engine-dir", "", "--videos", "v", "--output", "o"],
], ids=["run-output", "run-input", "export-out", "batch-engine-dir"])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(args, tmp_path):
    """An unset shell variable (`--output "$OUT"`) used to mean the current folder: run.py and
    the exporter wrote their files there."""
    script, *rest = args
    r = run([sys.executable, str(REPO / script), *rest], tmp_path)
    flag = rest[rest.index("") - 1]
    assert r.returncode == 2 and f"argument {flag}: empty value" in r.stderr, r.stderr[-2000:]
    assert not any(tmp_path.iterdir())


LAUNCH = ("import os, signal, sys; from importlib import metadata; from runtime.cli import launch; "
          "signal.signal(signal.SIGINT, signal.default_int_handler); {arrange}; "
          "sys.argv[0] = {name!r}; launch()")


@pytest.mark.skipif(not metadata.entry_points(group="qdmn.programs", name="qdmn-export"),
                    reason="the launcher reads the installed entry points: pip install -e .")
def test_a_ctrl_c_while_a_program_loads_is_one_line(tmp_path):
    """The console scripts import torch, OpenCV, ONNX Runtime... before the program can catch
    anything: a Ctrl-C then ended in a traceback through those imports. Here it comes as the
    exporter's module starts loading."""
    arrange = ("load = metadata.EntryPoint.load; metadata.EntryPoint.load = "
               "lambda self: (os.kill(os.getpid(), signal.SIGINT), load(self))[1]")
    r = run([sys.executable, "-c", LAUNCH.format(arrange=arrange, name="qdmn-export"),
             "models/qdmn-light.pth", "--out", str(tmp_path / "out")], tmp_path)
    assert (r.returncode, r.stderr) == (130, "interrupted: nothing done\n")
    assert not any(tmp_path.iterdir())
    r = run([sys.executable, "-c", LAUNCH.format(arrange="pass", name="qdmn-nothing")], tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error: qdmn-nothing: no qdmn program of this")
