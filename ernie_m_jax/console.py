"""Loading TensorFlow for the input pipeline without its console noise or its GPU claim.

TensorFlow is only the data pipeline here. Imported plainly it prints native log lines
(oneDNN and CUDA notices) through absl before absl's logging is initialised, so
TF_CPP_MIN_LOG_LEVEL cannot hold them back; its first op then logs a cuInit *error* on
machines without GPUs and, on machines with them, would reserve GPU memory that JAX needs.
`load_tensorflow` imports it with those lines filtered out (everything else it writes is kept)
and hides the GPUs from it, as big_vision does.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator, List

# absl / glog native lines: "I0000 00:00:1796199629.466744   16374 port.cc:153] ..."
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+:\d+\] ")
BEFORE_ABSL_INIT = "WARNING: All log messages before absl::InitializeLog() is called"


def is_native_log(line: str) -> bool:
    return bool(NATIVE_LOG_LINE.match(line)) or line.startswith(BEFORE_ABSL_INIT)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[List[str]]:
    """Everything written to file descriptor 2 inside (by Python or native code) is held,
    then written back without native log lines; the dropped lines are yielded's contents."""
    sys.stderr.flush()
    saved = os.dup(2)
    dropped: List[str] = []
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield dropped
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", errors="replace").splitlines(True):
                if is_native_log(line):
                    dropped.append(line)
                else:
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_tensorflow(quiet: bool = True):
    """Import TensorFlow (quietly unless `quiet=False`) and keep it off every GPU."""
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its logs after initialisation
        with filtered_stderr():
            import tensorflow as tf
    else:
        import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices: too late, harmless
        pass
    return tf
