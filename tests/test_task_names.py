"""A task file answers every question about its task: outside ``unip2/tasks/`` (and configs, docs, tests) the code
names a task by string at most a handful of times. The paper's claims table names the tasks its claims are about,
and is not counted."""

import ast
from pathlib import Path

from unip2.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("unip2", "pipelines", "serve", "tune", "benchmarks")
PAPER_CLAIMS = ("tune/ablation_report.py", "paper_claims")  # (file, function): the paper's claims, by task
MOST = 5


def task_name_literals(root: Path = ROOT) -> list[str]:
    """``path:line: 'name'`` of every string constant that is exactly a registered task's name."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith("unip2/tasks/"):
                continue
            tree = ast.parse(path.read_text(), filename=relative)
            exempt = set()
            for node in ast.walk(tree):
                if (relative, getattr(node, "name", None)) == PAPER_CLAIMS:
                    exempt |= {id(inner) for inner in ast.walk(node)}
            found += [f"{relative}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in TASKS and id(node) not in exempt]
    return found


def test_task_names_stay_in_the_task_files():
    found = task_name_literals()
    assert len(found) <= MOST, "\n".join(found)


def test_the_count_sees_a_literal(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "x.py").write_text(f"WHICH = {next(iter(TASKS))!r}\n\"\"\"{next(iter(TASKS))} in prose\"\"\"\n")
    for package in PACKAGES[:1] + PACKAGES[2:]:
        (tmp_path / package).mkdir()
    assert task_name_literals(tmp_path) == [f"pipelines/x.py:1: {next(iter(TASKS))!r}"]
