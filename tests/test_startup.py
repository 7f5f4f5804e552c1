"""TensorFlow's start-up notices: TF_CPP_MIN_LOG_LEVEL keeps TensorFlow's meaning (0 all,
3 none), unset the run is quiet, and no notice is printed twice."""

import os
import subprocess
import sys

import pytest

import startup
from conftest import REPO

# What TensorFlow 2.21 writes to standard error on import, on a machine without a GPU, with
# oneDNN on: its two libraries each say the first lines, then the CUDA probe's error.
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796656284.039156    4137 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796656284.039821    4137 cudart_stub.cc:31] Could not find cuda drivers.",
    "I0000 00:00:1796656284.293767    4137 cpu_feature_guard.cc:227] This TensorFlow binary "
    "is optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796656293.603797    4137 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796656293.605087    4137 cudart_stub.cc:31] Could not find cuda drivers.",
    "E0000 00:00:1796656296.203635    4137 cuda_platform.cc:52] failed call to cuInit: 303",
]


@pytest.mark.parametrize(
    "level, shown",
    [
        # 0: every notice, the second library's repeats left out (same text, later time).
        (0, [0, 1, 2, 3, 4, 8]),
        (1, [0, 8]),  # warnings (Abseil's counts as one) and errors
        (2, [8]),  # errors
        (3, []),
        (len(startup.SEVERITIES), []),  # TF_CPP_MIN_LOG_LEVEL unset
    ],
)
def test_start_up_notices_are_shown_by_severity_and_once(level, shown):
    assert startup.shown_notices("\n".join(START_UP), level) == [START_UP[i] for i in shown]


def test_older_tensorflow_log_lines_and_other_lines_are_filtered_too():
    text = "\n".join(
        [
            "some/module.py:3: UserWarning: a warning from Python",
            "  warnings.warn(",
            "2024-01-02 03:04:05.678901: W tensorflow/core/x.cc:12] a warning",
            "2024-01-02 03:04:06.000000: I tensorflow/core/y.cc:40] information",
            "2024-01-02 03:04:07.000000: W tensorflow/core/x.cc:12] a warning",
        ]
    )
    # A line before any log line is a warning of its own; the line after it belongs to it.
    assert startup.shown_notices(text, 1) == text.splitlines()[:3]
    assert startup.shown_notices(text, 0) == text.splitlines()[:4]
    assert startup.shown_notices(text, 2) == []


@pytest.mark.parametrize(
    "setting, notices, expected",
    [(None, False, 4), (None, True, 0), ("0", False, 0), ("2", True, 2), ("3", False, 3)],
)
def test_the_level_is_tensorflows_own_where_set(monkeypatch, setting, notices, expected):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    if setting is not None:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", setting)
    assert startup.notice_level(notices) == expected


PREPARE = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import startup
startup.prepare_tensorflow()
import os
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""


def start_up(setting):
    """What importing TensorFlow through startup.py writes: (standard error's lines, the
    log level TensorFlow then runs at)."""
    environment = {
        name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"
    }
    if setting is not None:
        environment["TF_CPP_MIN_LOG_LEVEL"] = setting
    result = subprocess.run(
        [sys.executable, "-c", PREPARE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr.splitlines(), result.stdout.strip()


def without_time(line):
    """A log line without its time and thread, which differ each time it is printed."""
    match = startup.LOG_LINE.fullmatch(line)
    return match.group(3) if match else line


@pytest.mark.slow
def test_tensorflow_says_nothing_at_level_3_or_unset_and_each_notice_once_at_0():
    assert start_up("3") == ([], "3")
    assert start_up(None) == ([], "1")  # and its information lines stay hidden later
    lines, level = start_up("0")
    assert lines  # TensorFlow has notices to show on every machine
    assert len({without_time(line) for line in lines}) == len(lines)
    assert level == "0"
