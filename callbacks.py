"""The Keras callbacks of a training run: safe checkpoints and backups, Ctrl-C that is
never lost, the KL schedule, pictures in TensorBoard.

`main.make_callbacks` picks which of them a run uses. The checkpoint and the backup skip
any epoch whose loss is NaN or infinite, so a diverging run never overwrites good weights.
"""

import contextlib
import math
import os
import signal
import threading

import keras
import numpy as np

import plotting
from run_folder import partial_model_path

# ---------------------------------------------------------------------------------------
# Checkpoint and backup: never from a diverging epoch, never half-written
# ---------------------------------------------------------------------------------------


def all_finite(logs):
    """False once any logged loss is NaN or infinite: the weights can no longer be trusted."""
    return all(math.isfinite(value) for value in (logs or {}).values())


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint, but the file is replaced only by a complete new file.

    Keras writes to a temporary name beside the target, which is then renamed over it:
    a crash mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, filepath, **kwargs):
        self.final_path = filepath
        super().__init__(partial_model_path(filepath), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.filepath)  # a leftover from a crash is not this epoch's save
        if not all_finite(logs):
            return  # weights from a diverging epoch never replace a checkpoint
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.filepath):
            os.replace(self.filepath, self.final_path)


class FiniteBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never backs up weights from an epoch whose loss is NaN.

    With write=False (multi-worker, every worker but the chief) it only restores the
    chief's backup at the start, so that all workers resume from the same epoch.
    """

    def __init__(self, backup_dir, write=True, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=write, **kwargs)
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if self.write and all_finite(logs):
            super().on_epoch_end(epoch, logs)


class StopOnCtrlC(keras.callbacks.Callback):
    """Ctrl-C stops training even when it lands inside code that catches every exception.

    Python raises KeyboardInterrupt wherever the program is when Ctrl-C arrives. Keras'
    model saving has a bare `except:` around its temporary file, so a press during the
    epoch's checkpoint save was swallowed and the run went on to the end. While training,
    the SIGINT handler also remembers the press, and the next batch raises it again.
    Under nohup (SIGINT ignored) or off the main thread, nothing changes.
    """

    def on_train_begin(self, logs=None):
        self.pressed, self.previous_handler = False, None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous_handler = signal.signal(signal.SIGINT, self.press)

    def press(self, signum, frame):
        self.pressed = True
        signal.signal(signal.SIGINT, self.previous_handler)  # a second press acts at once, as usual
        raise KeyboardInterrupt

    def raise_if_pressed(self, *args, **kwargs):
        if self.pressed:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = raise_if_pressed

    def on_train_end(self, logs=None):
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
        self.raise_if_pressed()


# ---------------------------------------------------------------------------------------
# What the run learns and shows: the KL weight, pictures in TensorBoard
# ---------------------------------------------------------------------------------------


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
            logs["val_bits_per_dim"] = logs["val_loss"] / (self.model.dimensions * math.log(2))


class TensorBoardImages(keras.callbacks.Callback):
    """Every `every` epochs, pictures in TensorBoard's Images tab: reconstructions of fixed
    test images, samples from the prior (fixed z) and the latent-space scatter; grey or in
    colour, as the images are. `labels` and `class_names` are None for unlabelled images."""

    def __init__(self, log_dir, images, labels, class_names, every, seed):
        super().__init__()
        self.log_dir, self.images, self.labels = log_dir, images, labels
        self.class_names, self.every, self.seed = class_names, every, seed
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        import tensorflow as tf  # TensorBoard's writer; the rest of the program is backend-neutral

        encoder, decoder = self.model.encoder, self.model.decoder
        z_mean = plotting.encode(encoder, self.images, self.labels)
        shown = slice(0, 16)
        labels = None if self.labels is None else self.labels[shown]
        reconstructions = plotting.decode(decoder, z_mean[shown], labels)
        side_by_side = np.concatenate([self.images[shown], reconstructions], axis=2)
        samples = plotting.prior_samples(decoder, 16, seed=self.seed)
        scatter = plotting.figure_png(
            plotting.latent_space_figure(z_mean, self.labels, self.class_names)
        )
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        with self.writer.as_default(step=epoch):
            tf.summary.image(
                "reconstructions (original | reconstruction)", side_by_side, max_outputs=16
            )
            tf.summary.image("samples from the prior", samples, max_outputs=16)
            tf.summary.image("latent space", tf.image.decode_png(scatter)[None])
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
