"""The Ray Data step stream: every step once, in order, across the windows it is built in, each batch the one
the plan's loader makes for that step."""

import numpy as np

from pipelines.run.prepare import prepare_run
from pipelines.data.step_stream import StepBatchLoader, stream_steps
from pipelines.data.stream_spec import StreamSpec


def test_steps_cross_window_boundaries_in_order(ray_local, embedded_data, tmp_path):
    run, _, root = prepare_run(None, ["pretrain.encoders=[]", "train.steps=7", "model.image_size=64",
                                      "tasks={classification: {batch_size: 2}, retrieval: {batch_size: 2}}",
                                      f"data.root={embedded_data}"], out=str(tmp_path / "run"))
    spec = StreamSpec.of(run, root)
    items = list(stream_steps(spec, rank=1, start=2, concurrency=1, num_cpus=0.25, prefetch=2, steps_per_block=2,
                              window=3))  # windows [2, 5), [5, 7)
    assert [step for step, *_ in items] == [2, 3, 4, 5, 6]
    loader = StepBatchLoader(spec, 1)
    for step, task, batches, _ in items:
        expected = loader.load(step)
        assert task == expected["task"]
        np.testing.assert_array_equal(batches[0]["images"], expected["batches"][0]["images"])
