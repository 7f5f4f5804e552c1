"""What must happen before TensorFlow is first imported: its settings are read then.

TensorFlow writes lines on start-up that look like failures to a newcomer: the CUDA probe's
error on every machine without a GPU, oneDNN's notice and the CPU-feature line. Some come
before TensorFlow reads its own log level (TF_CPP_MIN_LOG_LEVEL), and some come twice, once
from each of its libraries. So standard error is held back while TensorFlow loads and looks
for devices, then written out as TensorFlow's level says, each notice once:

    TF_CPP_MIN_LOG_LEVEL unset   none; later, while the run trains, warnings and errors
                                 (--tensorflow-notices: all, then and later)
    0, 1, 2 or 3                 those of at least that severity, then and later: 0 all
                                 (information, warnings, errors), 1 warnings and errors,
                                 2 errors, 3 none (only a fatal error's last words)
"""

import contextlib
import os
import re
import sys
import tempfile
import time

# When the program started (reset by `start_clock`, which main.main calls first): the run's
# time estimate (callbacks.TimeEstimate) counts from here.
STARTED = time.monotonic()

# TensorFlow's log severities, in the order TF_CPP_MIN_LOG_LEVEL counts them.
SEVERITIES = "IWEF"
# A TensorFlow log line, as Abseil writes it ("I0000 00:00:1700000000.000000  1234 file.cc:
# 12] message") or as older TensorFlow did ("2024-01-02 03:04:05.678901: I file.cc:12]
# message"): its severity, then the message, which is the same each time it is printed.
LOG_LINE = re.compile(r"(?:([IWEF])\d{4} \S+ +\d+ |\d{4}-\d\d-\d\d \S+: ([IWEF]) )(.*)")
# Abseil's own warning before its first message; it counts as one.
BEFORE_ABSL = "WARNING: All log messages before absl::InitializeLog() is called"


def start_clock():
    """Count the run's time from now: main.main may be called long after the import (from a
    notebook or a test)."""
    global STARTED
    STARTED = time.monotonic()


def prepare_tensorflow(show_notices=False):
    """Set TensorFlow's start-up options, then import it: its notices are shown as
    TF_CPP_MIN_LOG_LEVEL says, or, where it is unset, only with `show_notices`."""
    # TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs, although
    # they speed this model's dense layers on other x86 CPUs too (docs/performance.md);
    # TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    level = notice_level(show_notices)
    if level == len(SEVERITIES):
        # A quiet run: TensorFlow's information lines (XLA's start, say) stay hidden later too.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    # Without TensorFlow, the run says what is missing when it needs it.
    with standard_error_filtered(level), contextlib.suppress(ImportError):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, while the notices are held back


def notice_level(show_notices=False):
    """The least severity shown (0 info to 3 fatal), or len(SEVERITIES): none at all."""
    setting = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if setting is None:
        return 0 if show_notices else len(SEVERITIES)
    # As TensorFlow reads it: a number, else 0.
    return min(max(int(setting), 0), 3) if setting.strip().isdigit() else 0


def shown_notices(text, level):
    """The lines of `text` (what TensorFlow wrote on start-up) to show at `level`: each
    notice of at least that severity, once. A line that is not a log line belongs to the
    notice before it; one before any notice is a warning of its own."""
    notices = []  # [severity, what makes it the same notice again, its lines]
    for line in text.splitlines():
        match = LOG_LINE.fullmatch(line)
        if match or line.startswith(BEFORE_ABSL) or not notices:
            letter = match and (match.group(1) or match.group(2))
            same = match.group(3) if match else line  # without the time and thread
            notices.append((SEVERITIES.index(letter or "W"), [same], [line]))
        else:
            notices[-1][1].append(line)
            notices[-1][2].append(line)
    shown, seen = [], set()
    for severity, same, lines in notices:
        if severity >= level and tuple(same) not in seen:
            seen.add(tuple(same))
            shown += lines
    return shown


@contextlib.contextmanager
def standard_error_filtered(level):
    """Standard error is held back inside, for Python and TensorFlow's C++ alike, then
    written out as `shown_notices` filters it at `level`; an exception raised inside is
    reported after that."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        try:
            os.dup2(held.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            for line in shown_notices(text, level):
                print(line, file=sys.stderr)
