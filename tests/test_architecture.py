"""The import graph runs one way: every import, lazy ones inside functions included, goes to
the module's own layer or a lower one (docs/runtime.md, "Layout")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("runtime.core",),  # settings, manifest, memory policy, quality, geometry: no I/O
    ("runtime.media",),  # frames, masks, palette, outputs, the DAVIS layout
    ("runtime.backends",),  # the graphs on TensorRT / ONNX Runtime / OpenVINO
    ("runtime.segmenter",),  # the library's one entry point: frames in, masks out
    ("runtime.job", "runtime.options", "runtime.cli"),  # one video; CLI options and errors
    ("runtime.corpus",),  # many videos: listing, resume keys, summaries
    ("runtime.run", "runtime.batch"),  # the programs
    ("app",),  # qdmn-app, the web page over the runtime (test_only_benchmarks_import_the_app)
    ("evaluation",),  # J&F
    ("training",),  # the PyTorch model, its data, its reference segmenter
    ("export",),  # PyTorch -> ONNX / TensorRT
    ("benchmarks",),
]
PACKAGES = ("runtime", "app", "evaluation", "training", "export", "benchmarks")


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            named = module == p or module.startswith(p + ".")
            if named and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every absolute import of the project's packages in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def project_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def upward_imports(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        here = layer_of(module_name(path))
        if here is None:
            continue
        for target in sorted(imports(path)):
            there = layer_of(target)
            if there is not None and there > here:
                found.append(f"{module_name(path)} imports {target} (layer {there} > {here})")
    return found


def test_every_module_has_a_layer():
    assert [module_name(p) for p in project_modules()
            if layer_of(module_name(p)) is None and module_name(p) not in PACKAGES] == []


def test_no_import_runs_up_a_layer():
    assert upward_imports(project_modules()) == []


def test_only_benchmarks_import_the_app():
    """The app sits on the runtime beside the research layers, not under them: of the
    project's packages only the benchmarks (its speed benchmark) import it."""
    assert [f"{module_name(p)} imports {m}" for p in project_modules()
            if module_name(p).split(".")[0] not in ("app", "benchmarks")
            for m in sorted(imports(p)) if m.split(".")[0] == "app"] == []


@pytest.mark.parametrize("source, expect", [
    ("from runtime.job import segment_video\n", "runtime.media.sources imports runtime.job"),
    ("def f():\n    import evaluation.metrics\n", "runtime.media.sources imports evaluation.metrics"),
])
def test_an_upward_import_is_found(tmp_path, monkeypatch, source, expect):
    """The check itself: a lazy or top-level import from a lower layer to a higher one fails."""
    fake = tmp_path / "runtime" / "media" / "sources.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert [line.split(" (")[0] for line in upward_imports([fake])] == [expect]
