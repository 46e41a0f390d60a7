"""benchmarks/: each measurement's code run at minimal sizes (no time or ratio is asserted: that is what
the benchmarks report), the results files, and the pieces that turn raw figures into rows."""

import json
import math
import sys
import textwrap

import pytest

from unip2.tasks import TASKS
from benchmarks import (caption_vocabulary, data_ingest, default_run, flops, layer_masks, optimizer_step,
                        precision_step, run_all, step_memory, train_overhead, tune_overhead)
from benchmarks.results_table import goal_met, markdown_table, result, write_results

ROW_KEYS = {"key", "measure", "ours", "baseline", "ratio", "goal", "unit", "met", "details"}


def assert_measured(row: dict, key: str) -> None:
    assert set(row) == ROW_KEYS and row["key"] == key
    for figure in ("ours", "baseline", "ratio"):
        assert math.isfinite(row[figure]) and row[figure] > 0, (figure, row[figure])
    assert row["met"] in (True, False)


def test_optimizer_step_times_both_optimizers():
    row = optimizer_step.run(steps=1, rounds=2)
    assert_measured(row, "optimizer_ratio")
    assert row["ratio"] == row["ours"] / row["baseline"]
    assert len(row["details"]["blocks_ms"]["ours"]) == 2
    assert row["details"]["tensors"] > 100  # every parameter tensor of the tiny model


def test_caption_vocabulary_measures_each_size_and_fits_the_rest():
    rows = caption_vocabulary.run(candidates=[4, 8], restricted=8, full=40, preset="tiny", repeats=1)
    assert [row["key"] for row in rows] == list(caption_vocabulary.KEYS)
    for row in rows:
        assert set(row) == ROW_KEYS and row["goal"] == "reported" and row["ours"] > 0
        # At tiny sizes the time's slope is within timing noise (it can fit below zero); memory's is not.
        assert row["unit"] == "s" or row["baseline"] > 0
        details = row["details"]
        assert [p["candidates"] for p in details["measured"]] == [4, 8] and details["preset"] == "tiny"
        assert details["restricted_measured"] and not details["full_measured"]  # 8 measured, 40 from the line
        field = "time_s" if row["unit"] == "s" else "peak_mb"
        assert row["ours"] == details["measured"][1][field]
        assert math.isclose(row["baseline"], details["fixed"] + 40 * details["per_candidate"])
    assert all(p["saved_mb"] > 0 for p in rows[0]["details"]["measured"])
    assert caption_vocabulary.line([{"candidates": 1, "y": 3.0}, {"candidates": 3, "y": 7.0}], "y") == (1.0, 2.0)


def test_flops_counts_every_task(embedded_data):
    row = flops.run(embedded_data, rounds=1, steps=1, matmul_n=256)
    assert_measured(row, "flops_utilization")
    per_task = row["details"]["per_task"]
    assert set(per_task) == set(TASKS)
    assert all(v["gflop_per_step"] > 0 for v in per_task.values())


def test_data_ingest_streams_the_same_steps_both_ways(embedded_data, ray_local):
    row = data_ingest.run(embedded_data, steps=6, rounds=1, cpus=1, steps_per_block=2)
    assert_measured(row, "data_ingest_ratio")
    assert set(row["details"]["rounds_rows_per_s"]) == {"ours", "baseline", "ours_1_step_per_block"}
    # Both sides yield the stream's own batches: the DataLoader's item t is worker 0's step t.
    spec = data_ingest.ingest_spec(embedded_data, 3)
    item = data_ingest.StepDataset(spec)[2]
    assert item["step"] == 2 and len(item["batches"][0]["image_id"]) == spec.run.tasks[item["task"]].batch_size


def test_precision_step_trains_both_precisions(embedded_data, ray_local):
    import torch

    from unip2.precision import bf16_native

    if not bf16_native(torch.device("cpu")):  # this CPU has no native bf16: the benchmark is refused by name
        with pytest.raises(ValueError, match="train.precision: bf16 asked"):
            precision_step.run(embedded_data, steps=4, log_every=2, rounds=1)
        return
    row = precision_step.run(embedded_data, steps=4, log_every=2, rounds=1)
    assert_measured(row, "bf16_step_speedup")
    assert row["ratio"] == row["baseline"] / row["ours"]
    assert {k: len(v) for k, v in row["details"]["rounds_step_ms"].items()} == {"bf16": 1, "fp32": 1}


def test_steady_step_time_leaves_out_the_first_window():
    history = [{"step": 10, "steps_per_s": 0.1}, {"step": 20, "steps_per_s": 2.0}, {"step": 30, "steps_per_s": 4.0}]
    assert train_overhead.steady_step_s(history, 10) == (10 / 2 + 10 / 4) / 20


def test_tune_row_from_a_sweep_summary():
    row = tune_overhead.from_summary({"sweep_wall_s": 110.0, "sum_trial_s": 100.0, "trials": 2, "concurrency": 1})
    assert row["ratio"] == 1.10 and row["met"] is True
    assert tune_overhead.from_summary({"sweep_wall_s": 111.0, "sum_trial_s": 100.0, "trials": 2})["met"] is False


def test_process_tree_memory_includes_children(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys
        child = "import time; block = bytearray(150 * 2**20); time.sleep(1.5)"
        subprocess.run([sys.executable, "-c", child], check=True)
    """))
    measured = default_run.run_and_measure([sys.executable, str(script)], cwd=tmp_path, interval=0.1)
    assert measured["returncode"] == 0
    assert measured["peak_processes"] == 2
    assert measured["peak_mb"] > 150


def test_default_run_rows_apply_the_goals_of_what_ran():
    measured = {"wall_s": 700.0, "peak_mb": 5000.0, "peak_processes": 20, "returncode": 0}
    metrics = {"classification": {"top1": 0.95}, "detection": {"bbox_AP": 0.3}}
    cached = {row["key"]: row for row in default_run.result_rows(measured, metrics, "[train] done")}
    assert cached["default_run_s"]["goal"] == "<= 600" and cached["default_run_s"]["met"] is False
    assert cached["default_run_top1"]["met"] is True and cached["default_run_box_ap"]["met"] is False
    fresh = default_run.result_rows(measured, metrics, "[pretrain] stage 1 done in 200 s")
    assert (fresh[0]["key"], fresh[0]["goal"], fresh[0]["met"]) == ("default_run_s_fresh", "<= 900", True)
    long = {row["key"]: row for row in default_run.result_rows(measured, metrics, "",
                                                                config="pipelines/configs/long.yaml")}
    assert long["long_run_s"]["goal"] == "<= 3600"
    assert "--config=pipelines/configs/long.yaml" in long["long_run_s"]["measure"]
    assert long["long_run_top1"]["goal"] == "reported" and long["long_run_top1"]["ours"] == 0.95
    quick = default_run.result_rows(measured, metrics, "", steps=10)
    assert {row["goal"] for row in quick if row["unit"] != "MB"} == {"reported"}
    assert "train.steps" not in quick[0]["measure"]


def test_results_files_and_table(tmp_path):
    rows = [result("optimizer_ratio", measure="m", ours=2.0, baseline=1.0, ratio=2.0, goal="<= 1.3", unit="ms",
                   details={"note": "a note"}),
            result("default_run_s", measure="wall", ours=300.0, baseline=None, ratio=300.0, goal="reported", unit="s")]
    json_path, md_path = write_results(rows, tmp_path, meta={"quick": True})
    saved = json.loads(json_path.read_text())
    assert saved["optimizer_ratio"] == 2.0 and saved["default_run_s"] == 300.0 and saved["meta"] == {"quick": True}
    table = md_path.read_text()
    assert "| `optimizer_ratio` | m | 2 ms | 1 ms | 2 | <= 1.3 | **no** |" in table
    assert "| `default_run_s` | wall | 300 s | - | 300 | reported | - |" in table and "a note" in table
    assert markdown_table(rows).count("\n") == 3
    assert goal_met(0.9, ">= 1.0") is False and goal_met(None, "<= 3") is None


def test_run_all_selects_by_key_or_job():
    assert run_all.selected("serve_overhead_ms,flops") == ["flops", "serve"]
    assert run_all.selected(None) == list(run_all.JOBS)
    with pytest.raises(SystemExit, match=r"unknown \['nope'\]"):
        run_all.selected("nope,flops")


def test_the_readme_command_writes_the_table(tmp_path):
    """``python benchmarks/run_all.py --quick --only ... --out DIR`` as the README shows it (one cheap key)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick", "--only", "optimizer_ratio",
                           "--out", str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["optimizer_ratio"] > 0
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| key | measure | ours | baseline | ratio | goal | met |")
    assert "| `optimizer_ratio` | MT-AdamW step" in table
    assert "| `optimizer_ratio` | MT-AdamW step" in done.stdout  # the table is printed too


def test_serve_benchmarks_take_their_routes_from_the_registry():
    from benchmarks import serve_latency, serve_load
    from unip2.tasks import TASKS

    for name in serve_latency.image_tasks():
        assert serve_latency.image_route(name) in [route.path for route in TASKS[name].routes]
    assert "classification" in serve_latency.image_tasks() and "retrieval" not in serve_latency.image_tasks()
    assert [r.path for r in serve_load.image_routes()] == [r.path for t in TASKS.values() for r in t.routes
                                                          if r.images != "none"]
    assert run_all.selected("serve_throughput_ratio") == ["serve"]


def test_serve_benchmark_reports_batching_gain_overhead_and_throughput(ray_local):
    from benchmarks import serve_batching

    rows = serve_batching.run(requests=8)
    assert [row["key"] for row in rows] == ["serve_batching_gain", "serve_overhead_ms", "serve_throughput_ratio",
                                            "serve_overhead_beyond_ray_serve_ms"]
    gain, overhead, throughput, beyond = rows
    assert_measured(gain, "serve_batching_gain")
    assert_measured(throughput, "serve_throughput_ratio")
    assert set(overhead) == ROW_KEYS and math.isfinite(overhead["ratio"]) and overhead["ours"] > 0
    assert gain["goal"] == f">= {serve_batching.GAIN_SHARE * gain['details']['direct_batching_ceiling']:.2f}"
    parts = gain["details"]["served_batch16_adaptive"][1]["parts_ms"]
    assert {"parse", "decode", "queue", "model", "encode", "replica", "proxy"} <= set(parts)
    floors = beyond["details"]["floors"]
    assert floors["ray_serve"]["n"] == floors["ray_serve_compute"]["n"] == floors["uvicorn"]["n"] == 8
    assert floors["compute_ms"] == parts["model"] > 0  # as long as the app's model part at 1 client
    # The computing stand-in takes at least as long as it was told to compute.
    assert floors["ray_serve_compute"]["p50_ms"] > floors["compute_ms"]
    assert beyond["ratio"] == overhead["ours"] - floors["ray_serve_compute"]["p50_ms"]


def test_serve_load_answers_every_image_route(ray_local, tiny_checkpoint):
    from benchmarks import serve_load

    figures = serve_load.run(str(tiny_checkpoint), clients=4, seconds=4.0, max_requests=36)
    assert figures["total"]["requests"] <= 36
    for path, row in figures["routes"].items():
        assert row["requests"] > 0 and set(row["status"]) == {"200"}, (path, row)
    assert len(figures["replicas"]) == 1
    assert "| all |" in serve_load.markdown(figures)


def test_step_memory_measures_each_case_in_a_process_of_its_own(embedded_data):
    results = step_memory.run(preset="tiny", tasks=["captioning"], batches=[1, 2], checkpointing=["on"],
                              vocabulary=["16", "full"], steps=1, threads=1, data=str(embedded_data))
    cases = results["cases"]
    assert [(c["batch"], c["checkpointing"], c["vocabulary"]) for c in cases] == [
        (1, True, None), (2, True, None), (2, False, 16), (2, False, "full")]
    assert all("error" not in c and c["step_s"] > 0 and c["peak_gib"] >= c["growth_gib"] > 0 for c in cases), cases
    assert cases[2]["candidates"] == "16 vocabulary rows"
    assert cases[3]["candidates"] == f"{cases[0]['candidates'].split()[0]} vocabulary rows"  # full: the task's own
    assert set(results["fits"]) <= {"captioning checkpointing=on"}
    assert "| captioning | 96 | 2 | on |" in step_memory.table(results)


def test_step_memory_reads_the_batch_that_fits_off_the_line():
    points = [{"batch": 1, "peak_gib": 12.0}, {"batch": 4, "peak_gib": 18.0}]  # 10 GiB + 2 GiB per sample
    assert step_memory.fits(points) == {"80GiB": 35, "40GiB": 15, "per_sample_gib": 2.0, "fixed_gib": 10.0}
    assert step_memory.fits(points[:1]) == {}


def test_layer_masks_times_both_ways(embedded_data):
    report = layer_masks.run(embedded_data, rounds=1, steps=1)
    assert set(report["per_task"]) == {"classification", "detection", "captioning", "retrieval"}
    for figures in report["per_task"].values():
        assert figures["ours_ms"] > 0 and figures["baseline_ms"] > 0
        assert figures["ratio"] == figures["baseline_ms"] / figures["ours_ms"]
