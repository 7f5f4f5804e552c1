"""The run's folder: one run at a time, resumable, and never a half-written file.

Everything `main.py` writes under --output-dir passes through here:

- `check_writable` refuses an unusable folder before training, not after the last epoch;
- `output_lock` keeps a second run out of a folder that one is using;
- `prepare_run` finds the unfinished run that backup/ holds (refusing one made with other
  settings or on other data, or a record it cannot trust) or names a new one;
- `save_model`, `save_models` and `write_atomically` write to a temporary name and rename,
  so a crash mid-save leaves the previous file whole, and `saving` turns a full disk into
  one sentence that names the folder and the space the file needs;
- `read_progress` and `finish_run` keep the run's record across interruptions: backup/
  lives until the run's last plot is drawn, so the same command always resumes;
- `load_model_file` and `read_metrics` read back what an earlier run saved.
"""

import contextlib
import datetime
import errno
import json
import math
import os
import shutil

import data
from settings import RESUME_SETTINGS

# File locks, to keep two runs out of one output folder: fcntl's on POSIX systems, msvcrt's
# on Windows.
try:
    import fcntl
except ImportError:
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None


class RunError(ValueError):
    """A problem with the run's setup that the user can fix; main() prints it in one line."""


class DiskFull(RunError):
    """A save ran out of disk space; the files saved before it are whole."""


"""
## Before a run: the folder is writable, free, and holds no run with other settings
"""


def check_writable(output_dir):
    """Fail before training, not after it, if the outputs cannot be written."""
    for folder in (
        output_dir,
        *(os.path.join(output_dir, name) for name in ("models", "logs", "plots")),
    ):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise RunError(
                f"{folder} is a file, but outputs go into a folder there; "
                "choose another --output-dir"
            )
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".write-test-{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as error:
            raise RunError(
                f"cannot write to {folder} ({error.strerror}); choose another --output-dir"
            ) from None


@contextlib.contextmanager
def output_lock(output_dir):
    """One run per output folder. The OS drops the lock when its process dies, even by SIGKILL."""
    path = os.path.join(output_dir, ".lock")
    try:  # not through a symbolic link, and never emptied: it may name someone's file
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        raise RunError(
            f"cannot open {path} ({error.strerror}); if it is a symbolic link, remove it"
        ) from None
    with os.fdopen(descriptor, "w") as lock_file:
        locked = lock(lock_file.fileno(), output_dir)
        try:
            yield
        finally:
            if locked and not fcntl:  # Windows asks that a lock be undone before closing
                with contextlib.suppress(OSError):
                    os.lseek(descriptor, 0, os.SEEK_SET)
                    msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)


def lock(descriptor, output_dir):
    """Lock the open file `descriptor` for this run, or refuse a second run in `output_dir`;
    True if locked, False (said in one line) where the system has no file locks."""
    if not (fcntl or msvcrt):
        print(
            f"This system has no file locks: a second run started in {output_dir} would not "
            "be refused, so start one at a time there."
        )
        return False
    busy = RunError(
        f"another run is using {output_dir}; wait for it to finish or choose another --output-dir"
    )
    if fcntl:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        return True
    os.lseek(descriptor, 0, os.SEEK_SET)  # its first byte, which need not exist
    try:
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError:  # EACCES: another process holds it
        raise busy from None
    return True


def prepare_run(config, write=True, data_fingerprint=None):
    """Find or start the run: a backup's settings, and the data it learns (`data_fingerprint`,
    data.ImageData.fingerprint), must match this run's; returns its name and whether it
    resumes. With write=False (not the chief) nothing is written or removed."""
    backup_dir = os.path.join(config.output_dir, "backup")
    run_file = os.path.join(backup_dir, "run.json")
    settings = {name: getattr(config, name) for name in RESUME_SETTINGS}  # settings.py
    if config.fresh and write and not remove_folder(backup_dir):
        # It would be resumed from.
        raise RunError(f"--fresh: cannot remove {backup_dir}; remove it, then run again")
    if os.path.exists(run_file):
        previous = read_run_record(run_file)
        if previous["settings"] != settings:
            changed = ", ".join(
                f"{name} {previous['settings'].get(name)} -> {value}"
                for name, value in settings.items()
                if previous["settings"].get(name) != value
            )
            raise RunError(
                f"{backup_dir} holds an unfinished run with other settings ({changed}). "
                "Add --fresh to discard it and start over, or use another --output-dir."
            )
        # A record from before fingerprints were kept is taken on trust.
        if data_fingerprint and previous.get("data", data_fingerprint) != data_fingerprint:
            source = (
                f"--data-dir {config.data_dir}"
                if config.data_dir
                else f"Keras' download of {config.dataset}"
            )
            raise RunError(
                f"{backup_dir} holds an unfinished run on other images than {source} gives "
                "now: pass the --data-dir it started with, or add --fresh to start over"
            )
        return previous["run_name"], True
    run_name = config.run_name or "{}{}-latent{}-{}".format(
        config.dataset,
        "-conditional" if config.conditional else "",
        config.latent_dim,
        datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
    )
    if not is_plain_name(run_name):
        raise RunError(f"--run-name {run_name}: give a folder name alone, without / or ..")
    if not write:
        return run_name, False
    os.makedirs(backup_dir, exist_ok=True)
    record = {"run_name": run_name, "settings": settings, "data": data_fingerprint}
    write_atomically(run_file, json.dumps(record, indent=2))
    return run_name, False


def is_plain_name(name):
    """A name of one folder under logs/: no path that leads outside it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(mark in name for mark in ("/", "\\", "\0"))
        and not os.path.isabs(name)
    )


def read_run_record(run_file):
    """backup/run.json, checked: a resume must not go on from a record it cannot trust."""
    try:
        with open(run_file) as file:
            previous = json.load(file)
        if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
            raise ValueError("no settings in it")
        if not is_plain_name(previous.get("run_name")):
            raise ValueError("its run_name is not the name of one folder")
    except (OSError, ValueError) as error:
        raise RunError(
            f"{run_file}: unreadable ({_first_line(error)}); add --fresh to start over"
        ) from None
    return previous


def _first_line(error):
    return (str(error) or type(error).__name__).splitlines()[0]


def remove_folder(path):
    """Remove `path`, a folder or a symbolic link (the link only, not what it names: rmtree
    refuses a link); returns whether it is gone."""
    if os.path.islink(path):
        with contextlib.suppress(OSError):
            os.remove(path)
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


PROGRESS_FILE = "progress.json"  # in backup/: what the finished epochs of this run did


def read_progress(output_dir, epochs):
    """The unfinished run's record (backup/progress.json): epochs and training seconds so far,
    the best val_loss (the one checkpoint.keras holds). {} for a run that starts now. A
    record that cannot be true (epochs beyond `epochs`, a val_loss of -Infinity, which no
    epoch would beat) stops the run rather than mislead its checkpoint and metrics."""
    path = os.path.join(output_dir, "backup", PROGRESS_FILE)
    try:
        with open(path) as file:
            progress = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise RunError(
            f"{path}: unreadable ({_first_line(error)}); add --fresh to start over"
        ) from None
    checks = {
        "epochs_trained": lambda value: type(value) is int and 0 <= value <= epochs,
        "training_seconds": lambda value: is_number(value) and 0 <= value < math.inf,
        "best_val_loss": lambda value: is_number(value) and math.isfinite(value),
    }
    if not isinstance(progress, dict):
        raise RunError(f"{path}: not a run's record; add --fresh to start over")
    for name, check in checks.items():
        if name in progress and not check(progress[name]):
            raise RunError(
                f"{path}: {name} {str(progress[name])[:40]} is not a value a run leaves; add "
                "--fresh to start over"
            )
    return progress


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finish_run(output_dir):
    """The run is complete (models, metrics and plots written): its backup can go. Renamed
    before it is deleted: a run stopped while the files go must not leave part of a backup
    for the same command to resume from."""
    backup = os.path.join(output_dir, "backup")
    finished = backup + ".finished"
    remove_folder(finished)
    with contextlib.suppress(FileNotFoundError):
        os.replace(backup, finished)
    remove_folder(finished)


"""
## Saving and loading: whole files only
"""


def megabytes(size):
    return f"{size / 2**20:,.1f} MB"


@contextlib.contextmanager
def saving(path, needed_bytes, partial=None):
    """Save `path` inside this block. A full disk (or quota) ends the run with one sentence
    naming the folder and the space the file needs; the half-written `partial` file is
    removed, so the previous files are whole and the space is free again."""
    try:
        yield
    except OSError as error:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.remove(partial)
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free
        raise DiskFull(
            f"the disk holding {folder} is full ({megabytes(free)} free) and saving "
            f"{os.path.basename(path)} needs about {megabytes(needed_bytes)}: free that much "
            "space, or choose another --output-dir, then run the same command again"
        ) from None


def model_file_bytes(model, path):
    """About how large `path` will be: its previous size, else the weights' bytes (and the
    optimizer's, which a .keras file of a compiled model holds too)."""
    with contextlib.suppress(OSError):
        return os.path.getsize(path)
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(math.prod(variable.shape) * 4 for variable in variables)


def replace_durably(partial, path):
    """Rename the written file `partial` to `path`, on disk before and after: without the
    two fsyncs, a power cut can leave `path` empty even though the rename had happened."""
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)
    with contextlib.suppress(OSError):  # a folder cannot be opened on Windows
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file: never a half-written file."""
    partial = path + ".partial"
    with saving(path, len(text.encode()), partial):
        with open(partial, "w") as file:
            file.write(text)
        replace_durably(partial, path)


def partial_model_path(path):
    """A hidden temporary name beside `path`; Keras insists on the .keras suffix."""
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".partial.keras")


def save_model(model, path):
    """Save to a temporary file beside `path`, then rename: never a half-written model."""
    partial = partial_model_path(path)
    with saving(path, model_file_bytes(model, path), partial):
        model.save(partial)
        replace_durably(partial, path)


def save_models(vae, models_dir):
    """The VAE, its encoder and decoder and, for a learned prior, a model that draws z from
    it (prior.keras: noise from N(0, I) -> z); an older run's prior.keras is removed."""
    import vae as vae_module  # Keras, imported where a model is saved (as in load_model_file)

    os.makedirs(models_dir, exist_ok=True)
    parts = {"vae": vae, "encoder": vae.encoder, "decoder": vae.decoder}
    sampler = vae_module.prior_sampler(vae)
    prior_path = os.path.join(models_dir, "prior.keras")
    if sampler is None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(prior_path)
    else:
        parts["prior"] = sampler
    for name, model in parts.items():
        save_model(model, os.path.join(models_dir, f"{name}.keras"))
    names = [f"{name}.keras" for name in parts]
    print(f"Saved {', '.join(names[:-1])} and {names[-1]} in {models_dir}")


def load_model_file(path):
    """keras.saving.load_model (safe_mode on), with a one-line error for a missing or broken
    file."""
    import keras  # here, not above: main.py imports this module before TensorFlow loads

    if not os.path.exists(path):
        raise RunError(f"{path}: no saved model there; train one first with python main.py")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # zip, HDF5 and config errors all mean the same to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunError(
            f"{path}: not a readable Keras model file ({reason}); train again or restore it"
        ) from None


def read_metrics(output_dir):
    """What an earlier run wrote to models/metrics.json; {} if there is none to read."""
    path = os.path.join(output_dir, "models", "metrics.json")
    with contextlib.suppress(OSError, ValueError), open(path) as file:
        return json.load(file)
    return {}


def check_output_outside_images(config):
    """A folder of images is read with its sub-folders (hidden ones aside): an --output-dir
    in it would make the run's folders classes, or its plots training images, next time."""
    if not data.DATASETS[config.dataset].whole_folder or not config.data_dir:
        return
    images, output = os.path.realpath(config.data_dir), os.path.realpath(config.output_dir)
    first_folder = os.path.relpath(output, images).split(os.sep)[0]
    hidden = first_folder.startswith(".") and first_folder != "."  # not read as images
    if os.path.commonpath([images, output]) == images and not hidden:
        raise RunError(
            f"--output-dir {config.output_dir} is inside --data-dir {config.data_dir}: the "
            "run's models/, logs/ and plots/ would be read as classes or images; choose an "
            "--output-dir outside it"
        )
