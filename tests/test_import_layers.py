"""The house drawn from the imports has one-way floors: no module reaches back to one that imports it (no
circle, not even through an import deferred into a function), and the packages stack as unip2 → pipelines and
serve → tune → benchmarks, never downwards-up."""

from pathlib import Path

from import_graph import cycles, import_graph

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"unip2": 0, "pipelines": 1, "serve": 1, "tune": 2, "benchmarks": 3}


def package(module: str) -> str:
    return module.split(".")[0]


def test_the_project_imports_in_no_circle():
    graph = import_graph(ROOT, tuple(FLOORS))
    assert len(graph) > 120  # every package was read
    assert cycles(graph) == []


def test_packages_import_only_from_lower_floors_or_themselves():
    graph = import_graph(ROOT, tuple(FLOORS))
    upward = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                    if package(target) != package(source) and FLOORS[package(target)] >= FLOORS[package(source)])
    assert upward == []


def test_the_walk_finds_a_circle_closed_inside_a_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "pkg" / "b.py").write_text("thing = 1\n\ndef later():\n    from pkg import a\n    return a\n")
    (tmp_path / "pkg" / "c.py").write_text("from . import b\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {"pkg.b"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
