"""Web image-text pairs end to end: the README's commands convert img2dataset shards with Ray Data into an
existing data folder, then captioning and retrieval train on coco_captions + web_pairs as one row space."""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
from pathlib import Path

import pytest

from pipelines import prepare_data
from pipelines.run.prepare import prepare_run
from pipelines.data.stream_spec import StreamSpec
from pipelines.training.trainer import fit
from unip2.config_io import ConfigError
from unip2.data.manifest import load_manifest, read_rows
from unip2.data.row_reader import RowReader
from unip2.run_config import load_run_config

from loop_hooks import FaultHooks

REPO = Path(__file__).resolve().parents[2]
SMALL = ["pretrain.encoders=[]", "scale.num_workers=1", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25", "optim.warmup_steps=2",
         "train.log_every=4", "model.proposals.num_queries=12", "model.image_size=64",
         "tasks={captioning: {batch_size: 4}, retrieval: {batch_size: 4}}"]


def readme_commands() -> list[list[str]]:
    """The commands of the README's web pairs example, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in text.split("```bash")[1:] if "--web-pairs" in b).split("```")[0]
    return [shlex.split(command) for command in block.replace("\\\n", " ").strip().splitlines()]


@pytest.fixture(scope="module")
def web_data(ray_local, embedded_data, web_shards, tmp_path_factory):
    """The embedded data folder with web pairs added by the README's prepare_data command (plus one more
    source as a file:// brace pattern); returns (folder, console output, COCO files' mtimes before)."""
    img2dataset, prepare, _ = readme_commands()
    assert img2dataset[0] == "img2dataset" and "webdataset" in img2dataset
    root = tmp_path_factory.mktemp("web_data") / "unip2-parquet"
    shutil.copytree(embedded_data, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    paths = {"/datasets/cc3m": str(web_shards["web"]), "/datasets/unip2-parquet": str(root)}
    argv = [paths.get(arg, arg) for arg in prepare[prepare.index("pipelines/prepare_data.py") + 1:]]
    extra = f"file://{web_shards['web_more']}/" + "{00005..00005}.tar"
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        prepare_data.main(argv + ["--web-pairs", extra, "--rows-per-shard", "5"])
    return root, console.getvalue(), before


def test_readme_conversion_adds_web_pairs_and_counts_skipped_samples(web_data, embedded_data, web_shards):
    root, console, before = web_data
    assert ("[web_pairs] web_pairs/train: 20 rows from 3 shards; skipped 3 "
            "(empty_caption 1, missing_caption 1, undecodable_image 1)") in console
    manifest, original = load_manifest(root), load_manifest(embedded_data)
    entry = manifest["datasets"]["web_pairs"]["splits"]["train"]
    assert entry["rows"] == 20
    assert entry["files"][:3] == ["web_pairs/train/part-00000-000.parquet", "web_pairs/train/part-00000-001.parquet",
                                  "web_pairs/train/part-00001-000.parquet"]
    assert manifest["skipped"]["web_pairs"] == {"train": web_shards["skipped"]}
    assert manifest["sources"]["web_pairs"][0] == str(web_shards["web"])
    # COCO is neither converted again nor changed.
    assert {k: v for k, v in manifest["datasets"].items() if k != "web_pairs"} == original["datasets"]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items())
    rows = read_rows(root, "web_pairs", "train", columns=["image_id", "captions"])
    assert [r["image_id"] for r in rows] == ([30000 + i for i in range(8)] + [40000 + i for i in range(6)]
                                             + [50000 + i for i in range(6)])
    assert all(r["captions"] == [web_shards["captions"][r["image_id"]]] for r in rows)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no partial folder left
    with pytest.raises(FileExistsError, match="already in"):  # refused before any Ray work
        prepare_data.main(["--web-pairs", str(web_shards["web"]), "--out", str(root)])


def test_captioning_and_retrieval_train_on_coco_and_web_pairs(web_data, web_shards, tmp_path):
    root, _, _ = web_data
    trace = tmp_path / "trace"
    trace.mkdir()
    overrides = [arg for arg in readme_commands()[2] if arg.startswith("tasks.")]
    assert overrides == ["tasks.captioning.datasets=[coco_captions,web_pairs]",
                         "tasks.retrieval.datasets=[coco_captions,web_pairs]"]
    run, out, data_root = prepare_run(None, SMALL + overrides + [f"data.root={root}", "train.steps=8",
                                                                 "train.checkpoint_every=8"], out=str(tmp_path / "run"))
    checkpoint = fit(run, out=out, data_root=data_root, hooks=FaultHooks(trace_dir=trace))
    assert (checkpoint / "model").is_dir()

    # Every traced step read exactly the rows the plan names in the concatenated row space ...
    spec = StreamSpec.of(run, data_root)
    assert spec.num_rows["captioning"] == load_manifest(root)["datasets"]["coco_captions"]["splits"]["train"][
        "rows"] + 20
    plan = spec.plan()
    readers = {task: RowReader(data_root, run.train_datasets(task), "train", columns=["image_id"])
               for task in run.tasks}
    traced = [line.split() for line in (trace / "rank0.txt").read_text().splitlines()]
    assert [int(t[0]) for t in traced] == list(range(8))
    seen = {task: set() for task in run.tasks}
    for step, task, *ids in traced:
        planned_task, rows = plan.rows_at(int(step), 0)
        assert task == planned_task
        assert [int(i) for i in ids] == readers[task].read(rows)["image_id"]
        seen[task].update(int(i) for i in ids)
    # ... and both tasks consumed rows of both sources.
    web = set(web_shards["captions"])
    for task, ids in seen.items():
        assert ids & web and ids - web, (task, sorted(ids))


def test_unknown_or_unfit_datasets_are_refused_naming_the_field(embedded_data, tmp_path):
    base = [f"data.root={embedded_data}"]
    with pytest.raises(ConfigError, match=r"tasks\.captioning\.datasets: dataset 'web_pairs' has no 'train' split"):
        prepare_run(None, base + ["tasks.captioning.datasets=[coco_captions,web_pairs]"], out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"tasks\.retrieval\.datasets: dataset 'coco_instances' has other columns"):
        prepare_run(None, base + ["tasks.retrieval.datasets=[coco_instances]"], out=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"tasks\.retrieval\.datasets"):
        load_run_config(overrides=["tasks.retrieval.datasets=[]"])
    with pytest.raises(ConfigError, match=r"tasks\.retrieval\.datasets"):
        load_run_config(overrides=["tasks.retrieval.datasets=[coco_captions,coco_captions]"])


def test_base_config_lines_for_web_pairs_load(tmp_path):
    """base.yaml's commented web-pairs lines, used instead of the two above them, give both tasks the datasets."""
    lines = (REPO / "pipelines" / "configs" / "base.yaml").read_text().splitlines()
    web = [i for i, line in enumerate(lines) if "datasets: [coco_captions, web_pairs]" in line]
    assert len(web) == 2
    for i in web:
        task = lines[i].split(":")[0].strip("# ")
        original = next(j for j, line in enumerate(lines) if line.startswith(f"  {task}:"))
        lines[original] = "  " + lines[i].lstrip("# ")
    (tmp_path / "base.yaml").write_text("\n".join(lines) + "\n")
    run = load_run_config(tmp_path / "base.yaml")
    assert run.train_datasets("captioning") == run.train_datasets("retrieval") == ["coco_captions", "web_pairs"]
    assert run.train_datasets("classification") == ["imagenet"]


def test_web_pairs_never_replace_converter_datasets_or_foreign_folders(web_shards, embedded_data, tmp_path):
    from pipelines.data.web_pairs import add_web_pairs

    source = [str(web_shards["web"])]
    with pytest.raises(ValueError, match="converter's own datasets"):
        add_web_pairs(source, data_root=embedded_data, name="coco_captions", overwrite=True)
    with pytest.raises(ValueError, match="lower-case letters"):
        add_web_pairs(source, data_root=embedded_data, name="CC-3M")
    (tmp_path / "notes.txt").write_text("not a data folder")
    with pytest.raises(FileExistsError, match="not a converted data folder"):
        add_web_pairs(source, data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        add_web_pairs([str(embedded_data)], data_root=tmp_path / "new")
    assert not (tmp_path / "new").exists()
