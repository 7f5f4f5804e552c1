"""The output folder's lock where fcntl is missing: Windows' msvcrt lock, or, on a system
with neither, one line that says two runs there are not kept apart."""

import fcntl
import os
import types

import pytest

import run_folder


def windows_locks():
    """A stand-in for msvcrt's byte locks, on this system's own locks (flock: a second open
    file is refused, in this process too, as a second Windows handle is). Records each call
    as (operation, position of the file, bytes)."""
    calls = []

    def locking(descriptor, mode, count):
        calls.append((mode, os.lseek(descriptor, 0, os.SEEK_CUR), count))
        if mode == stand_in.LK_NBLCK:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PermissionError(13, "Permission denied") from None
        elif mode == stand_in.LK_UNLCK:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    stand_in = types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking, calls=calls)
    return stand_in


def test_without_fcntl_windows_locks_keep_a_second_run_out(tmp_path, monkeypatch):
    msvcrt = windows_locks()
    monkeypatch.setattr(run_folder, "fcntl", None)
    monkeypatch.setattr(run_folder, "msvcrt", msvcrt)
    with (
        run_folder.output_lock(str(tmp_path)),
        pytest.raises(run_folder.RunError, match="another run is using"),
        run_folder.output_lock(str(tmp_path)),
    ):
        pass
    # Undone when the first run ends: the folder is usable again.
    with run_folder.output_lock(str(tmp_path)):
        pass
    locked, refused, unlocked = (msvcrt.LK_NBLCK, 0, 1), (msvcrt.LK_NBLCK, 0, 1), (0, 0, 1)
    assert msvcrt.calls == [locked, refused, unlocked, locked, unlocked]


def test_without_file_locks_the_run_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_folder, "fcntl", None)
    monkeypatch.setattr(run_folder, "msvcrt", None)
    with run_folder.output_lock(str(tmp_path)), run_folder.output_lock(str(tmp_path)):
        pass  # nothing refuses the second
    lines = capsys.readouterr().out.splitlines()
    assert lines == 2 * [
        f"This system has no file locks: a second run started in {tmp_path} would not be "
        "refused, so start one at a time there."
    ]
