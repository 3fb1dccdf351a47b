"""What pod teams run around training (issue #40): profiles, model cards, launchers."""

import glob

import gin
import pytest

from ernie_m_jax import profiling
from ernie_m_jax.train.config import TrainConfig
from tests.train_runs import run, tiny_bindings


@pytest.fixture(autouse=True)
def _no_gin_left_behind():
    gin.clear_config()
    yield
    gin.clear_config()


def _traced_steps(model_dir):
    """{step_num} of the `train` step annotations in every trace the run wrote."""
    from jax.profiler import ProfileData

    steps = set()
    for path in glob.glob(f"{model_dir}/plugins/profile/*/*.xplane.pb"):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                steps.update(dict(e.stats)["step_num"] for e in line.events if e.name == "train")
    return steps


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_exactly_those_steps(demo_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    run(model_dir, tiny_bindings(demo_data_dir, 4, **{"TrainConfig.profile_steps": (2, 3),
                                                      "TrainConfig.checkpoint_every": 4}))
    traces = glob.glob(f"{model_dir}/plugins/profile/*/*.xplane.pb")
    assert len(traces) == 1  # one host, one window
    assert _traced_steps(model_dir) == {2, 3}
    # Without the setting nothing is traced (the control for the count above).
    run(tmp_path / "plain", tiny_bindings(demo_data_dir, 2))
    assert not (tmp_path / "plain" / "plugins").exists()


@pytest.mark.parametrize("steps, message", [
    ((0, 2), "1 <= first <= last"), ((3, 2), "1 <= first <= last"),
    ((2, 11), "num_steps=10"), ((2,), "() or \\(first, last\\)")])
def test_a_profile_window_outside_the_run_is_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(num_steps=10, profile_steps=steps)
    TrainConfig(num_steps=10, profile_steps=(1, 10))  # the whole run is a valid window


def test_a_window_resumed_past_its_start_traces_the_rest(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d: calls.append("start"))
    monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: calls.append("stop"))
    window = profiling.ProfileWindow(str(tmp_path), (3, 6))
    for step in range(5, 9):  # resumed after step 4
        with window.step(step):
            calls.append(step)
        window.after(step, None)
    assert calls == ["start", 5, 6, "stop", 7, 8]
    assert window.stop() is None  # stopped once
