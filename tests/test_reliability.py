"""Interrupted, broken and hostile runs: nothing is lost, nothing wrong is loaded silently."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import keras
import numpy as np
import pytest

import callbacks
import data
import main
import results
import run_folder
import settings
from callbacks import StopOnSignal
from conftest import REPO, quick_arguments, quick_config, wait_for_first_epoch


def command(output_dir, data_dir):
    """A run long enough to be interrupted mid-epoch (a few seconds per epoch)."""
    settings = dict(limit=6000, epochs=3, iw_samples=2, plots=False)
    return [sys.executable, "main.py", *quick_arguments(output_dir, data_dir, **settings)]


def start_and_wait_for_first_epoch(arguments):
    # As in a terminal: SIGINT is not ignored, even if this test runs in a background job
    # (which ignores it, and a child would inherit that).
    process = subprocess.Popen(
        arguments,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_first_epoch([process], arguments[arguments.index("--output-dir") + 1])
    return process


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CompleteFileWatcher(threading.Thread):
    """Opens the given .keras files again and again; records any that is not a whole zip."""

    def __init__(self, paths):
        super().__init__(daemon=True)
        self.paths, self.broken, self.seen, self.running = paths, [], 0, True

    def run(self):
        while self.running:
            for path in self.paths:
                try:
                    with zipfile.ZipFile(path) as archive:
                        if archive.testzip() is not None:
                            self.broken.append(path)
                    self.seen += 1
                except FileNotFoundError:
                    pass
                except (zipfile.BadZipFile, OSError, EOFError):
                    self.broken.append(path)


@pytest.mark.slow
def test_killed_run_resumes_with_optimizer_state_and_whole_files(tmp_path, mnist_dir):
    checkpoint = tmp_path / "checkpoint.keras"
    watcher = CompleteFileWatcher([checkpoint])
    watcher.start()
    process = start_and_wait_for_first_epoch(command(tmp_path, mnist_dir))
    process.send_signal(signal.SIGKILL)
    process.wait()
    watcher.running = False
    watcher.join()
    assert watcher.broken == [] and watcher.seen > 0
    keras.saving.load_model(checkpoint)  # the last complete checkpoint, not a torn one

    # The same settings again: the lock the killed run held is free, and training resumes.
    config = quick_config(tmp_path, mnist_dir, limit=6000, epochs=3, plots=False, iw_samples=2)
    vae, history = main.train(config)
    assert history.epoch[0] >= 1  # continued, not restarted
    steps_per_epoch = -(-6000 // config.batch_size)
    assert (
        int(vae.optimizer.iterations.numpy()) == 3 * steps_per_epoch
    )  # Adam's step count came back too


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent, status, said",
    [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")],
)
def test_ctrl_c_and_sigterm_stop_keep_the_backup_and_say_how_to_resume(
    tmp_path, mnist_dir, sent, status, said
):
    """Ctrl-C, and SIGTERM as docker stop, SLURM and Kubernetes send it before SIGKILL."""
    process = start_and_wait_for_first_epoch(command(tmp_path, mnist_dir))
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert (
        last_line == f"{said}. Run the same command again to resume from the last finished epoch."
    )
    assert (tmp_path / "backup" / "latest.weights.h5").exists()


@pytest.mark.slow
def test_an_interruption_after_training_resumes_to_the_end_without_training_again(
    tmp_path, mnist_dir, monkeypatch
):
    config = quick_config(tmp_path, mnist_dir, plots=False)
    report = results.report

    def interrupted(*args, **kwargs):
        raise callbacks.Terminated

    monkeypatch.setattr(results, "report", interrupted)
    with pytest.raises(callbacks.Terminated):
        main.train(config)
    assert (tmp_path / "models" / "vae.keras").exists() and (tmp_path / "backup").exists()
    monkeypatch.setattr(results, "report", report)
    _, history = main.train(config)
    assert history.epoch == []  # nothing left to train
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert record["training"]["epochs_trained"] == 1 and record["training"]["training_seconds"] > 0
    assert not (tmp_path / "backup").exists()


class SwallowCtrlC(keras.callbacks.Callback):
    """Ctrl-C pressed at the second batch, inside code with a bare `except:`, as Keras' saving
    has."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2)  # the KeyboardInterrupt is raised here, and swallowed
            except:  # noqa: E722
                pass


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """Python's own SIGINT handler, even when the suite runs in a background job (SIGINT
    ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_swallowed_by_library_code_still_stops_training(ctrl_c_as_in_a_terminal):
    images = np.zeros((64, 2), "float32")
    batches = []
    count_batches = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append(batch)
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        images, images, batch_size=8, epochs=1, verbose=0, callbacks=[SwallowCtrlC(), count_batches]
    )
    assert len(batches) == 8  # without StopOnSignal the press is lost and training runs on

    batches.clear()
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            images,
            images,
            batch_size=8,
            epochs=1,
            verbose=0,
            callbacks=[StopOnSignal(), SwallowCtrlC(), count_batches],
        )
    assert batches == [0, 1]  # stopped at the next batch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    "failure, expected",
    [
        (OSError("the device went away"), OSError),
        (OSError(errno.ENOSPC, "No space left on device"), run_folder.DiskFull),
    ],
)
def test_a_crash_during_a_save_keeps_the_previous_file(tmp_path, monkeypatch, failure, expected):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "model.keras")
    run_folder.save_model(model, path)
    before = digest(tmp_path / "model.keras")

    def crash_half_way(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"PK\x03\x04 half a zip")
        raise failure

    monkeypatch.setattr(keras.Model, "save", crash_half_way)
    with pytest.raises(expected) as raised:
        run_folder.save_model(model, path)
    assert digest(tmp_path / "model.keras") == before
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]  # the half-written file is gone
    if expected is run_folder.DiskFull:
        size = os.path.getsize(path) / 2**20
        assert str(raised.value).startswith(f"the disk holding {tmp_path} is full (")
        assert f"saving model.keras needs about {size:,.1f} MB" in str(raised.value)


FULL_DISK = """
import hashlib, json, os, sys
sys.path.insert(0, {repo!r})
import keras
import callbacks, main, settings

output_dir = {output_dir!r}
arguments = {arguments!r}
filler = os.path.join(output_dir, "filler")


class FillTheDisk(keras.callbacks.Callback):
    \"\"\"After the first epoch's checkpoint and backup: no byte left on the disk.\"\"\"

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            with open(os.path.join(output_dir, "checkpoint.keras"), "rb") as file:
                self.checkpoint = hashlib.sha256(file.read()).hexdigest()
            try:
                with open(filler, "wb") as file:
                    while True:
                        file.write(bytes(1 << 16))
                        file.flush()
            except OSError:
                pass


fill = FillTheDisk()
make_callbacks = callbacks.make_callbacks
callbacks.make_callbacks = lambda *args: make_callbacks(*args) + [fill]
try:
    main.main(arguments)
except SystemExit as stop:
    message = str(stop.code)
callbacks.make_callbacks = make_callbacks
with open(os.path.join(output_dir, "checkpoint.keras"), "rb") as file:
    checkpoint_kept = hashlib.sha256(file.read()).hexdigest() == fill.checkpoint
keras.saving.load_model(os.path.join(output_dir, "checkpoint.keras"))  # whole
os.remove(filler)
vae, history = main.train(settings.parse_args(arguments))  # the same command, with room again
print(json.dumps({{"message": message, "checkpoint_kept": checkpoint_kept,
                  "resumed_epochs": history.epoch}}))
"""


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_sentence_and_loses_nothing(tmp_path, mnist_dir):
    """A real small file system (tmpfs in a private mount namespace) filled after the first
    epoch: the second epoch's save fails, the run says which folder needs how much, the
    first epoch's checkpoint and backup are whole, and the same command resumes."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: apt-get install util-linux")
    output_dir = tmp_path / "small-disk"
    output_dir.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {output_dir}"],
        capture_output=True,
    )
    if probe.returncode:
        pytest.skip(f"cannot mount a small file system here: {probe.stderr.decode().strip()}")
    arguments = quick_arguments(output_dir, mnist_dir, epochs=2, plots=False, image_every=0)
    code = FULL_DISK.format(repo=str(REPO), output_dir=str(output_dir), arguments=arguments)
    mount = f"mount -t tmpfs -o size=16m tmpfs {output_dir}"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["message"].startswith(f"error: the disk holding {output_dir} is full (")
    assert "needs about" in outcome["message"] and "\n" not in outcome["message"]
    assert outcome["checkpoint_kept"]
    assert outcome["resumed_epochs"] == [1]  # the first epoch's backup was whole


@pytest.mark.slow
def test_diverging_run_exits_nonzero_and_keeps_earlier_files(tmp_path, mnist_dir):
    main.train(quick_config(tmp_path, mnist_dir, plots=False))
    kept = {
        name: digest(tmp_path / name)
        for name in (
            "checkpoint.keras",
            "models/vae.keras",
            "models/encoder.keras",
            "models/decoder.keras",
        )
    }
    arguments = quick_arguments(tmp_path, mnist_dir, learning_rate=1e4)
    with pytest.raises(SystemExit) as exit_info:
        main.main(arguments)
    assert "training diverged" in str(exit_info.value.code) and "--learning-rate" in str(
        exit_info.value.code
    )
    assert {name: digest(tmp_path / name) for name in kept} == kept


def test_unwritable_output_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for output_dir in (blocker, blocker / "inside"):
        with pytest.raises(main.RunError, match="is a file|cannot write"):
            main.train(
                settings.Config(output_dir=str(output_dir), data_dir="/nonexistent")
            )  # data is never read


def test_read_only_output_is_refused_before_training(tmp_path):
    if os.geteuid() == 0:  # root writes into read-only folders: use a read-only file system
        output_dir = "/proc/vae-output"
    else:
        tmp_path.chmod(0o500)
        output_dir = str(tmp_path / "out")
    try:
        with pytest.raises(main.RunError, match="cannot write"):
            main.train(settings.Config(output_dir=output_dir, data_dir="/nonexistent"))
    finally:
        tmp_path.chmod(0o700)


def test_second_run_in_the_same_folder_is_refused(tmp_path, mnist_dir):
    with (
        run_folder.output_lock(str(tmp_path)),
        pytest.raises(main.RunError, match="another run is using"),
    ):
        main.train(quick_config(tmp_path, mnist_dir))
    # Released when the first run ends: the folder is usable again.
    with run_folder.output_lock(str(tmp_path)):
        pass


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_model_file_is_named(trained_run, tmp_path, damage):
    output_dir, _, _ = trained_run
    models = tmp_path / "models"
    models.mkdir()
    original = (output_dir / "models" / "vae.keras").read_bytes()
    broken = os.urandom(2000) if damage == "garbage" else original[: len(original) // 2]
    (models / "vae.keras").write_bytes(broken)
    config = settings.Config(output_dir=str(tmp_path), evaluate_only=True, data_dir="/nonexistent")
    with pytest.raises(main.RunError, match=r"models/vae.keras: not a readable Keras model file"):
        results.evaluate_saved_model(config)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--evaluate-only", "--output-dir", str(tmp_path)])
    assert "vae.keras: not a readable Keras model file" in str(exit_info.value.code)
    assert "\n" not in str(exit_info.value.code)


def started_run(tmp_path, fingerprint="data-1", **overrides):
    """A backup/run.json as a run leaves it at its start; returns the config."""
    config = settings.Config(output_dir=str(tmp_path), latent_dim=2, **overrides)
    assert run_folder.prepare_run(config, True, fingerprint)[1] is False
    return config


def test_a_resume_checks_the_data_and_the_run_record(tmp_path):
    config = started_run(tmp_path, run_name="first")
    assert run_folder.prepare_run(config, True, "data-1") == ("first", True)
    with pytest.raises(
        main.RunError,
        match=r"other images than Keras' download of mnist gives now: pass the --data-dir it "
        "started with, or add --fresh",
    ):
        run_folder.prepare_run(config, True, "data-2")
    run_file = tmp_path / "backup" / "run.json"
    record = json.loads(run_file.read_text())
    tampered = [
        [record],
        {**record, "settings": "dataset=mnist"},
        {"run_name": "first"},
        {**record, "run_name": "/tmp/elsewhere"},
        {**record, "run_name": "../elsewhere"},
    ]
    for previous in tampered:
        run_file.write_text(json.dumps(previous))
        with pytest.raises(main.RunError, match=r"run.json: unreadable .*; add --fresh"):
            run_folder.prepare_run(config, True, "data-1")
    run_file.write_text(json.dumps(record)[:-10])  # cut short
    with pytest.raises(main.RunError, match=r"run.json: unreadable"):
        run_folder.prepare_run(config, True, "data-1")
    fresh = settings.Config(output_dir=str(tmp_path), latent_dim=2, fresh=True, run_name="../out")
    with pytest.raises(main.RunError, match=r"--run-name \.\./out: give a folder name alone"):
        run_folder.prepare_run(fresh, True, "data-1")


def test_the_data_fingerprint_follows_every_pixel_label_and_name():
    images = np.zeros((4, 8, 8, 1), np.float32)
    labels = np.array([0, 1, 0, 1])

    def fingerprint(train_images=images, train_labels=labels, class_names=("a", "b")):
        return data.ImageData(
            train_images, train_labels, images, labels, list(class_names)
        ).fingerprint()

    changed_pixel = images.copy()
    changed_pixel[3, 7, 7, 0] = 1 / 255
    others = [
        fingerprint(changed_pixel),
        fingerprint(train_labels=np.array([0, 1, 1, 1])),
        fingerprint(class_names=("a", "c")),
        fingerprint(images.reshape(4, 8, 4, 2)),  # the same bytes, another shape
    ]
    assert fingerprint() == fingerprint() and len({fingerprint(), *others}) == 5


def test_a_tampered_progress_record_stops_the_resume(tmp_path):
    progress_file = tmp_path / "backup" / run_folder.PROGRESS_FILE
    progress_file.parent.mkdir()
    assert run_folder.read_progress(str(tmp_path), 14) == {}
    honest = {"epochs_trained": 3, "training_seconds": 40.5, "best_val_loss": 140.2}
    progress_file.write_text(json.dumps(honest))
    assert run_folder.read_progress(str(tmp_path), 14) == honest
    for name, value in (
        ("best_val_loss", float("-inf")),
        ("epochs_trained", 999),
        ("training_seconds", "long"),
    ):
        progress_file.write_text(json.dumps({**honest, name: value}))
        with pytest.raises(main.RunError, match=rf"progress.json: {name} {value} is not a value"):
            run_folder.read_progress(str(tmp_path), 14)
    progress_file.write_text(json.dumps([honest]))
    with pytest.raises(main.RunError, match=r"progress.json: not a run's record; add --fresh"):
        run_folder.read_progress(str(tmp_path), 14)
    progress_file.write_text('{"epochs_trained": 3, "train')
    with pytest.raises(main.RunError, match=r"progress.json: unreadable"):
        run_folder.read_progress(str(tmp_path), 14)


def backup_callback(backup_dir, epochs=14):
    callback = callbacks.FiniteBackupAndRestore(str(backup_dir), double_checkpoint=True)
    callback.set_params({"epochs": epochs})
    return callback


def test_a_damaged_keras_training_record_falls_back_to_the_epoch_before_or_stops(tmp_path, capsys):
    backup = tmp_path / "backup"
    backup.mkdir()
    metadata = backup / "training_metadata.json"
    for damaged in ('{"epoch": 4, "ba', '{"epoch": 999, "batch": 0}', '{"epoch": "4"}'):
        metadata.write_text(damaged)
        with pytest.raises(main.RunError, match=r"training_metadata.json: damaged, or not writ"):
            backup_callback(backup).check_training_metadata()
    # With the previous epoch's copies (as a kill during the write leaves them): those.
    (backup / "latest.weights.h5.bkp").write_bytes(b"epoch 3's weights")
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 3, "batch": 0}')
    (backup / "latest.weights.h5").write_bytes(b"epoch 4's weights")
    metadata.write_text('{"epoch": 4, "ba')
    backup_callback(backup).check_training_metadata()
    assert json.loads(metadata.read_text())["epoch"] == 3
    assert (backup / "latest.weights.h5").read_bytes() == b"epoch 3's weights"
    assert "training_metadata.json was damaged; resuming from the epoch before" in (
        capsys.readouterr().out
    )


def test_links_where_the_run_writes_are_not_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    output = tmp_path / "out"
    output.mkdir()
    (output / ".lock").symlink_to(precious)
    with (
        pytest.raises(main.RunError, match=r"cannot open .*\.lock .*symbolic link, remove it"),
        run_folder.output_lock(str(output)),
    ):
        pass
    assert precious.read_text() == "keep me"
    # --fresh with backup/ a link to another run's backup: the link goes, the run starts anew.
    config = started_run(tmp_path / "elsewhere")
    (output / "backup").symlink_to(tmp_path / "elsewhere" / "backup")
    fresh = dataclasses.replace(config, output_dir=str(output), fresh=True)
    assert run_folder.prepare_run(fresh, True, "data-1")[1] is False
    assert not (output / "backup").is_symlink()
    assert (tmp_path / "elsewhere" / "backup" / "run.json").exists()


def test_saves_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    run_folder.write_atomically(str(tmp_path / "metrics.json"), "{}")
    assert synced == [str(tmp_path / "metrics.json.partial"), str(tmp_path)]
    assert (tmp_path / "metrics.json").read_text() == "{}"
