"""Soak: train under repeated random SIGKILLs and SIGTERMs, then compare with a clean run.

    python -m tests.soak --data_dir DIR --work_dir DIR [--steps 12] [--seconds 300] [--seed 0]

Each interruption starts `python -m ernie_m_jax.train` on the same model dir and, after a
random delay, kills it (SIGKILL: no chance to save) or asks it to stop (SIGTERM: checkpoint
and exit 0). When the time is up the run is completed without interruption; its final
parameters must equal those of an uninterrupted run with the same seed.
"""

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.train_runs import ROOT, as_flags, tiny_bindings


def _command(data_dir, model_dir, steps):
    bindings = tiny_bindings(data_dir, steps, **{"TrainConfig.checkpoint_every": 2,
                                                 "TrainConfig.eval_examples_per_language": 8})
    return [sys.executable, "-m", "ernie_m_jax.train", "--gin_file=runs/demo_cpu.gin",
            f"--model_dir={model_dir}", *as_flags(bindings)]


def _final_params(model_dir):
    from ernie_m_jax import saved_run

    loaded = saved_run.load(str(model_dir), setup_data=False)
    return loaded.step, loaded.params


def soak(data_dir, work_dir, steps=12, seconds=300.0, seed=0, max_interruptions=None):
    rng = random.Random(seed)
    work_dir = Path(work_dir)
    reference, soaked = work_dir / "reference", work_dir / "soaked"
    subprocess.run(_command(data_dir, reference, steps), cwd=ROOT, check=True,
                   capture_output=True)
    events = []
    deadline = time.time() + seconds
    while time.time() < deadline and (max_interruptions is None or
                                        len(events) < max_interruptions):
        process = subprocess.Popen(_command(data_dir, soaked, steps), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(8, 30))  # imports and compilation take most of the first ~15 s
        if process.poll() is not None:
            events.append(("finished", process.returncode))
            break
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        process.send_signal(sig)
        process.wait(timeout=300)
        events.append((signal.Signals(sig).name, process.returncode))
    subprocess.run(_command(data_dir, soaked, steps), cwd=ROOT, check=True, capture_output=True)
    (step_a, params_a), (step_b, params_b) = _final_params(reference), _final_params(soaked)
    import jax

    max_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)))
    return {"steps": [step_a, step_b], "events": events, "max_abs_param_diff": max_diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = soak(args.data_dir, args.work_dir, args.steps, args.seconds, args.seed)
    print(json.dumps(result))
    return 0 if result["steps"][0] == result["steps"][1] == args.steps and \
        result["max_abs_param_diff"] <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
