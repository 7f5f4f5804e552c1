"""What must happen before TensorFlow is first imported: its settings are read then.

TensorFlow writes lines on start-up that look like failures to a newcomer: the CUDA probe's
error on every machine without a GPU, oneDNN's notice and the CPU-feature line. Some come
before TensorFlow reads its own log level (TF_CPP_MIN_LOG_LEVEL), so they are kept out of
the terminal by pointing standard error elsewhere while TensorFlow loads and looks for
devices. A user who sets TF_CPP_MIN_LOG_LEVEL, or passes --tensorflow-notices, sees them.
"""

import contextlib
import os
import sys


def prepare_tensorflow(argv):
    """Set TensorFlow's start-up options, then import it, quietly unless `argv` (the command
    line) or the environment asks for its notices."""
    # TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs, although
    # they speed this model's dense layers on other x86 CPUs too (docs/performance.md);
    # TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "--tensorflow-notices" not in argv
    hidden = standard_error_hidden() if quiet else contextlib.nullcontext()
    # Without TensorFlow, the run says what is missing when it needs it.
    with hidden, contextlib.suppress(ImportError):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, while the notices are hidden


@contextlib.contextmanager
def standard_error_hidden():
    """Standard error goes nowhere inside, for Python and for TensorFlow's C++ alike; an
    exception raised inside is reported after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as nowhere:
            os.dup2(nowhere.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
