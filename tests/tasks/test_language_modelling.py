"""Language modelling: RoBERTa's masking, a text corpus added to a data folder by the README's command, metrics."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import unip2
from pipelines.run.prepare import check_data
from unip2.data.manifest import load_manifest
from unip2.data.row_reader import RowReader
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import load_run_config
from unip2.tasks import TASKS
from unip2.tasks.language_modelling import main, mask_token_id, mask_tokens
from unip2.tasks.outputs import MetricContext, TaskOutput

README = Path(__file__).resolve().parents[2] / "README.md"


def test_masking_chooses_words_only_and_at_least_one_per_text():
    tokenizer = tokenizer_for(unip2.preset("tiny").text)
    ids, mask = tokenizer.encode_batch(["a red circle at the center of a gray wall", "two"], 32)
    inputs, targets = mask_tokens(ids, mask, tokenizer, np.random.default_rng(0), 0.15)
    chosen = targets != -100
    assert chosen.sum(1).min() >= 1
    assert not np.isin(ids[chosen], list(tokenizer.special_ids)).any()  # never <s>, </s>, <pad>
    assert (targets[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    assert (inputs == mask_token_id(tokenizer)).sum() >= 1


def test_the_readme_corpus_command_adds_a_dataset_the_task_trains_on(embedded_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(embedded_data, data)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle\n\nthree blue squares on a wall\nan orange star\n")
    lines = [line.strip() for line in README.read_text().split("### Adding a task")[1].splitlines()]
    command = shlex.split(next(line for line in lines if "-m unip2.tasks.language_modelling" in line).split("#")[0])
    arguments = command[command.index("unip2.tasks.language_modelling") + 1:]
    main([str(corpus) if a == "corpus.txt" else str(data) if a == "data/shapes-parquet" else a for a in arguments])
    assert "text_corpus: 4 texts" in capsys.readouterr().out
    train_line = next(line for line in lines if "tasks.language_modelling.datasets" in line)
    override = next(a for a in shlex.split(train_line) if a.startswith("tasks.language_modelling.datasets"))
    run = load_run_config(overrides=[override, f"data.root={data}"])
    run.model.class_names = {k: list(v) for k, v in load_manifest(data)["class_names"].items()}
    check_data(run, load_manifest(data), data)  # the corpus has the columns the task reads
    rows = RowReader(data, run.train_datasets("language_modelling"), "train").read(np.arange(3))
    assert [c[0] for c in rows["captions"]] == ["a red circle", "three blue squares on a wall", "an orange star"]
    batch = TASKS["language_modelling"].preprocess(rows, image_size=64, tokenizer=tokenizer_for(run.model.text),
                                                   train=True, rng=np.random.default_rng(0), max_text_length=16)
    assert (batch["targets"] != -100).sum(1).min() >= 1
    with pytest.raises(FileExistsError, match="text_corpus"):
        main(["--text", str(corpus), "--out", str(data)])


def test_accuracy_and_perplexity_over_the_masked_tokens(tmp_path):
    predictions = [{"image_id": 1, "correct": 2, "masked": 3, "nll": 3.0},
                   {"image_id": 2, "correct": 1, "masked": 1, "nll": 1.0}]
    metrics, _ = TASKS["language_modelling"].evaluate(TaskOutput(predictions), MetricContext(tmp_path, {}))
    assert metrics["accuracy"] == 0.75 and metrics["perplexity"] == pytest.approx(np.exp(1.0))
