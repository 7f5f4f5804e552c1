"""The Keras callbacks of a training run: safe checkpoints and backups, Ctrl-C and SIGTERM
that stop it cleanly, the time estimate, the KL weight and bits per dimension in the logs,
pictures in TensorBoard.

`make_callbacks`, at the end, picks which of them a run uses. The checkpoint and the backup skip
any epoch whose loss is NaN or infinite, so a diverging run never overwrites good weights.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time

import keras
import numpy as np

import pixel_head
import plotting
import startup
import vae as vae_module
from evaluation import bits_per_dimension
from flops import decoder_flops, forward_flops, pixel_head_flops, vae_flops
from run_folder import (
    PROGRESS_FILE,
    RunError,
    model_file_bytes,
    partial_model_path,
    replace_durably,
    saving,
    write_atomically,
)
from settings import steps_per_epoch

"""
## Checkpoint and backup: never from a diverging epoch, never half-written
"""


def all_finite(logs):
    """False once any logged loss is NaN or infinite: the weights can no longer be trusted."""
    return all(math.isfinite(value) for value in (logs or {}).values())


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint, but the file is replaced only by a complete new file.

    Keras writes to a temporary name beside the target, which is then renamed over it:
    a crash mid-save leaves the previous checkpoint intact. A resumed run passes the best
    val_loss so far as `initial_value_threshold`, so the checkpoint stays the best epoch of
    the whole run, not of the part since the resume.
    """

    def __init__(self, filepath, **kwargs):
        self.final_path = filepath
        super().__init__(partial_model_path(filepath), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.filepath)  # a leftover from a crash is not this epoch's save
        if not all_finite(logs):
            return  # weights from a diverging epoch never replace a checkpoint
        with saving(self.final_path, model_file_bytes(self.model, self.final_path), self.filepath):
            super().on_epoch_end(epoch, logs)
            if os.path.exists(self.filepath):
                replace_durably(self.filepath, self.final_path)


def epoch_record_is_whole(path, epochs):
    """Whether Keras' training_metadata.json at `path` reads whole, with an epoch of a run
    of `epochs`."""
    try:
        with open(path) as file:
            epoch = json.load(file)["epoch"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return type(epoch) is int and 0 <= epoch <= epochs


class FiniteBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never backs up an epoch whose loss is NaN, and keeps the run's
    record beside the weights (backup/progress.json: epochs, training seconds, best
    val_loss) for a resumed run's checkpoint and metrics.json. Kept when training ends
    (run_folder.finish_run removes it once everything is written), so an interruption at any
    point resumes. write=False (multi-worker, all but the chief): it only restores."""

    def __init__(self, backup_dir, write=True, progress=None, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)
        self.write = write
        self.progress = dict(progress or {})

    def on_train_begin(self, logs=None):
        self.check_training_metadata()
        super().on_train_begin(logs)

    def check_training_metadata(self):
        """Keras writes training_metadata.json in place and trusts what it reads: a kill
        during the write leaves it cut short (a traceback on resume), and an epoch past the
        run's end would train nothing and call the run finished. A damaged one falls back to
        the previous epoch's copies (double_checkpoint) when they are whole; else the run
        stops with one line."""
        current, previous = self._training_metadata_path, self._prev_training_metadata_path
        epochs = self.params["epochs"]
        if not os.path.exists(current) or epoch_record_is_whole(current, epochs):
            return
        whole_copies = os.path.exists(self._prev_weights_path) and epoch_record_is_whole(
            previous, epochs
        )
        if self.write and whole_copies:
            shutil.copy(self._prev_weights_path, self._weights_path)
            shutil.copy(previous, current)
            print(f"{current} was damaged; resuming from the epoch before")
            return
        raise RunError(
            f"{current}: damaged, or not written by a run of {self.params['epochs']} epochs; "
            "add --fresh to start over"
        )

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if not (self.write and all_finite(logs)):
            return
        val_loss = (logs or {}).get("val_loss", math.inf)
        self.progress = {
            "epochs_trained": epoch + 1,
            "training_seconds": self.progress.get("training_seconds", 0.0)
            + now
            - self.epoch_started,
            "best_val_loss": min(val_loss, self.progress.get("best_val_loss", math.inf)),
        }
        with saving(self._weights_path, model_file_bytes(self.model, self._weights_path)):
            super().on_epoch_end(epoch, logs)
        write_atomically(
            os.path.join(self.backup_dir, PROGRESS_FILE), json.dumps(self.progress, indent=2)
        )


"""
## Stopping: Ctrl-C and SIGTERM stop at once, and are never lost
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, SLURM, Kubernetes) asked the run to stop: handled as Ctrl-C.

    A KeyboardInterrupt, so that code which catches every Exception lets it through too."""


def raise_terminated(signum, frame):
    """main.py's SIGTERM handler: stop where the program is, as Ctrl-C does."""
    raise Terminated


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C and SIGTERM stop training even when they land inside code that catches
    every exception.

    Python raises the signal's exception wherever the program is when it arrives. Keras'
    model saving has a bare `except:` around its temporary file, so a press during the
    epoch's checkpoint save would be swallowed and the run go on to the end. While training,
    the handler also remembers the signal, and the next batch raises it again. Only the
    handlers this program expects are wrapped: Python's own for SIGINT (not under nohup,
    not a notebook's), main.py's `raise_terminated` for SIGTERM; off the main thread,
    nothing changes.
    """

    EXPECTED = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: raise_terminated}

    def on_train_begin(self, logs=None):
        self.received, self.previous_handlers = None, {}
        if threading.current_thread() is not threading.main_thread():
            return
        for number, expected in self.EXPECTED.items():
            if signal.getsignal(number) is expected:
                self.previous_handlers[number] = signal.signal(number, self.receive)

    def receive(self, signum, frame):
        self.received = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        # A second signal acts at once, as usual.
        signal.signal(signum, self.previous_handlers[signum])
        raise self.received

    def raise_if_received(self, *args, **kwargs):
        if self.received:
            raise self.received

    on_train_batch_end = on_test_batch_end = on_epoch_end = raise_if_received

    def on_train_end(self, logs=None):
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)
        self.raise_if_received()


"""
## What the run learns and shows: time, the KL weight, pictures in TensorBoard
"""


def duration(seconds):
    """'45 s', '6 min 5 s', '10 min' or '1 h 3 min': how long, to the precision that matters."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def plural(count, noun):
    """'1 epoch', '3 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def epochs_that_fit(fitting, epochs, first_epoch, budget_seconds):
    """Advice on the --epochs that fit in `budget_seconds`: `fitting` of them."""
    budget = duration(budget_seconds)
    if fitting >= epochs:
        return f"up to --epochs {fitting} would fit in {budget} here"
    if fitting > first_epoch:
        return f"--epochs {fitting} would fit in {budget} here"
    return f"not even one more epoch fits in {budget} here"


class TimeEstimate(keras.callbacks.Callback):
    """After the first training steps, one line: how long the whole run will take on this
    machine (the time since the program started, the epochs left with their validation,
    then the test-set evaluation and the plots) and how many --epochs fit in
    `budget_seconds`. The steps after the first `skipped` (which trace the graph) are timed;
    validation, the evaluation and the plots are priced from the same seconds per image by
    their share of a training step's FLOPs (a training step costs about three forward
    passes; evaluation_flops, evaluation.py's passes per test image; plot_flops, the plots'
    pixel-by-pixel draws, which are most of their arithmetic)."""

    def __init__(
        self,
        epochs,
        steps_per_epoch,
        batch_size,
        test_images,
        evaluation_flops,
        training_flops,
        plot_flops=0,
        budget_seconds=600,
        skipped=3,
        timed=20,
    ):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.batch_size = epochs, steps_per_epoch, batch_size
        self.test_images, self.budget_seconds = test_images, budget_seconds
        self.evaluation_flops, self.training_flops = evaluation_flops, training_flops
        self.plot_flops = plot_flops
        self.skipped, self.timed = skipped, min(timed, steps_per_epoch - skipped - 1)
        self.line = None

    def on_epoch_begin(self, epoch, logs=None):
        self.first_epoch = epoch
        self.started = None

    def on_train_batch_end(self, batch, logs=None):
        if self.line is not None or self.timed < 1:
            return
        if batch == self.skipped - 1:
            self.started = time.perf_counter()
        elif batch == self.skipped - 1 + self.timed and self.started is not None:
            step = (time.perf_counter() - self.started) / self.timed
            so_far = time.monotonic() - startup.STARTED
            self.line = self.describe(step / self.batch_size, so_far, steps_done=batch + 1)
            print("\n" + self.line, flush=True)

    def describe(self, seconds_per_image, so_far=0.0, steps_done=0):
        """The estimate for training at `seconds_per_image` (a training image), `so_far`
        seconds after the program started and `steps_done` steps into the first epoch."""
        forward = seconds_per_image / 3  # forward pass only, as validation does
        epoch = seconds_per_image * self.steps_per_epoch * self.batch_size
        epoch += forward * self.test_images  # validation
        after_flops = self.test_images * self.evaluation_flops + self.plot_flops
        after = seconds_per_image * after_flops / self.training_flops
        epochs_left = self.epochs - self.first_epoch
        training = epochs_left * epoch - steps_done * self.batch_size * seconds_per_image
        total = so_far + training + after
        fitting = int((self.budget_seconds - so_far - after) // epoch) + self.first_epoch
        advice = epochs_that_fit(fitting, self.epochs, self.first_epoch, self.budget_seconds)
        return (
            f"Estimated time on this machine: {duration(total)} (so far {duration(so_far)}, "
            f"training {plural(epochs_left, 'epoch')} of {duration(epoch)}, then the "
            f"evaluation and plots {duration(after)}); {advice}."
        )


class LogKLWeight(keras.callbacks.Callback):
    """Logs the KL weight at each epoch's end as `kl_weight`: beta, or during a KL warm-up
    (`VAE.start_kl_warmup`) the value it has risen to, step by step."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # shown in the progress bar, the history and TensorBoard
            logs["kl_weight"] = float(keras.ops.convert_to_numpy(self.model.kl_weight))


class LogBitsPerDimension(keras.callbacks.Callback):
    """Logs the validation negative ELBO in bits per dimension as `val_bits_per_dim` (the
    figure papers on colour images report): nats per image / (values per image x ln 2)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_loss" in logs:
            logs["val_bits_per_dim"] = bits_per_dimension(logs["val_loss"], self.model.dimensions)


class TensorBoardImages(keras.callbacks.Callback):
    """Every `every` epochs, one card per picture in TensorBoard's Images tab, whose step
    slider then moves through the epochs: fixed test images above their reconstructions,
    samples from the prior (the same z each time) and the latent-space scatter; grey or in
    colour, as the images are. `labels` and `class_names` are None for unlabelled images."""

    COLUMNS = 8  # images per row of a card
    GAP = 2  # grey pixels between the pictures of a card

    def __init__(self, log_dir, images, labels, class_names, every, seed, shown=16):
        super().__init__()
        self.log_dir, self.images, self.labels = log_dir, images, labels
        self.class_names, self.every, self.seed, self.shown = class_names, every, seed, shown
        self.writer = None

    def reconstructions_card(self, z_mean):
        """Rows of test images, each row above the same images' reconstructions."""
        originals = self.images[: self.shown]
        labels = None if self.labels is None else self.labels[: self.shown]
        reconstructions = plotting.decode(self.model.decoder, z_mean[: self.shown], labels)
        rows = []
        for start in range(0, len(originals), self.COLUMNS):
            for pictures in (originals, reconstructions):
                row = np.full((self.COLUMNS, *originals.shape[1:]), 0.5, np.float32)
                chunk = pictures[start : start + self.COLUMNS]
                row[: len(chunk)] = chunk
                rows.append(row)
        return plotting.image_grid(np.concatenate(rows), self.COLUMNS, self.GAP)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        import tensorflow as tf  # TensorBoard's writer; the rest of the program is backend-neutral

        z_mean = plotting.encode(self.model.encoder, self.images, self.labels)
        prior = vae_module.prior_transform(self.model)
        samples = plotting.prior_samples(
            self.model.decoder, 2 * self.COLUMNS, seed=self.seed, prior=prior
        )
        scatter = plotting.figure_png(
            plotting.latent_space_figure(z_mean, self.labels, self.class_names)
        )
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        with self.writer.as_default(step=epoch):
            tf.summary.image(
                "reconstructions",
                self.reconstructions_card(z_mean)[None],
                description="Rows of test images, each above the same images' reconstructions",
            )
            tf.summary.image(
                "samples from the prior",
                plotting.image_grid(samples, self.COLUMNS, self.GAP)[None],
                description=f"Decodes of z drawn from {plotting.prior_name(prior)}, of the same "
                "noise every epoch",
            )
            tf.summary.image("latent space", tf.image.decode_png(scatter)[None])
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


def make_callbacks(config, run_name, vae, train_count, images, progress, is_chief=True):
    """The run's callbacks (callbacks.py): the chief checkpoints, backs up and logs to
    TensorBoard, with pictures of `images` (data.ImageData). `progress` is the record of
    the epochs a resumed run has already done."""
    backup_dir = os.path.join(config.output_dir, "backup")
    if not is_chief:  # multi-worker: only the chief writes; the others resume from its backup
        callbacks = [LogKLWeight(), LogBitsPerDimension(), keras.callbacks.TerminateOnNaN()]
        if not config.fresh:
            callbacks.append(FiniteBackupAndRestore(backup_dir, write=False))
        return callbacks
    log_dir = os.path.join(config.output_dir, "logs", run_name)
    checkpoint = os.path.join(config.output_dir, "checkpoint.keras")
    # A resumed run's checkpoint must beat the best epoch before the interruption.
    best = progress.get("best_val_loss") if os.path.exists(checkpoint) else None
    callbacks = [
        LogKLWeight(),  # first: the others see kl_weight and val_bits_per_dim in the logs
        LogBitsPerDimension(),
        keras.callbacks.TerminateOnNaN(),
        StopOnSignal(),
        AtomicModelCheckpoint(
            checkpoint, monitor="val_loss", save_best_only=True, initial_value_threshold=best
        ),
        keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
        # Double checkpoint: if a kill lands mid-write, the previous epoch's backup is used.
        FiniteBackupAndRestore(backup_dir, double_checkpoint=True, progress=progress),
        TimeEstimate(
            config.epochs,
            steps_per_epoch(config, train_count),
            config.batch_size,
            len(images.test_images),
            evaluation_flops(vae, config.iw_samples),
            vae_flops(vae)[1],
            plot_flops(vae),
        ),
    ]
    if config.image_every:
        shown = slice(0, 2000)  # enough points for the scatter, quick to encode every epoch
        callbacks.append(
            TensorBoardImages(
                os.path.join(log_dir, "images"),
                images.test_images[shown],
                None if images.test_labels is None else images.test_labels[shown],
                images.class_names,
                config.image_every,
                config.seed,
            )
        )
    return callbacks


def plot_flops(vae):
    """FLOPs of the plots' pixel-by-pixel draws (plotting.plot_all's pixel_head_samples.png:
    each pixel of each image a pass of the pixel head over the rows it sees); 0 without a
    pixel head. The other plots decode a few hundred images, a small share of the evaluation."""
    if vae.pixel_head is None:
        return 0
    height, width = vae.decoder.output.shape[1:3]
    rows = pixel_head.drawing_window_rows(vae.pixel_head, height)
    window = pixel_head_flops(vae.pixel_head, rows * width)
    return plotting.SAMPLES_GRID**2 * height * width * window


def evaluation_flops(vae, samples):
    """FLOPs of evaluation.py per test image: the encoder once, the decoder (with its pixel
    head) `samples` times."""
    return forward_flops(vae.encoder)[0] + samples * decoder_flops(vae)
