"""The test set's latent space in TensorBoard's Embedding Projector.

At the end of a run, `write_projector` puts into logs/<run name>/projector/ what the
Projector reads: the test images' z_mean as a TensorFlow checkpoint, a metadata.tsv with
each image's class (index and name), a sprite of the same images so that each point is
drawn as its picture, and the projector_config.pbtxt that ties them together. The
Projector then shows the latent space of any size by PCA, t-SNE or UMAP, coloured by
class: `tensorboard --logdir logs`, then PROJECTOR in the menu at the top right.

A folder of its own, because the Projector also looks for a checkpoint in the parent of
every run: one in logs/<run name>/ would appear again, without its pictures, under the
run's train/, validation/ and images/.
"""

import math
import os

import numpy as np

import plotting

EMBEDDING_NAME = "z_mean"  # the checkpoint's variable, as the Projector lists it
# The Projector's PCA draws three components and shows nothing for fewer dimensions: a
# smaller latent space gets coordinates of 0 up to three, the plane it lies in.
PROJECTOR_DIMENSIONS = 3
SPRITE_SIDE = 4096  # pixels: the sprite, a square of thumbnails, stays within this


def projector_sample(count, image_size, sprite_side=SPRITE_SIDE):
    """How many test images (the first ones) the Projector shows: all, or as many as fit
    in a sprite of `sprite_side` pixels square (up to 16,384 at 32x32; 4,096 at 64x64)."""
    per_row = sprite_side // image_size
    return min(count, per_row * per_row)


def sprite(images):
    """(N, size, size, channels) floats in [0, 1] -> the Projector's sprite: one square uint8
    picture of the images, row by row from the top left, padded with black."""
    side = math.ceil(math.sqrt(len(images)))
    square = np.zeros((side * side, *images.shape[1:]), np.float32)
    square[: len(images)] = images
    picture = plotting.image_grid(square, side)
    return np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)


def metadata_lines(labels, class_names):
    """metadata.tsv: a header, then one row per point with its class index and name (the
    class sub-folder's name for a folder of images)."""
    # A tab or a line break in a name would add a column or a row: each becomes a space.
    names = [" ".join(str(name).replace("\t", "\n").splitlines()) for name in class_names]
    lines = ["class\tname"]
    lines += [f"{label}\t{names[label]}" for label in labels]
    return "\n".join(lines) + "\n"


def write_projector(log_dir, z_mean, images, labels, class_names):
    """Write the Projector's files for these test images into `log_dir`/projector; `labels`
    and `class_names` are None for unlabelled images, which get no metadata.tsv. Returns
    how many points it wrote."""
    import tensorflow as tf
    from tensorboard.plugins import projector

    count = projector_sample(len(images), images.shape[1])
    log_dir = os.path.join(log_dir, "projector")
    os.makedirs(log_dir, exist_ok=True)
    # An event file makes the folder a run that TensorBoard lists, the Projector's too.
    tf.summary.create_file_writer(log_dir).close()
    if labels is not None:
        with open(os.path.join(log_dir, "metadata.tsv"), "w") as file:
            file.write(metadata_lines(labels[:count], class_names))
    tf.io.write_file(os.path.join(log_dir, "sprite.png"), tf.io.encode_png(sprite(images[:count])))
    points = np.zeros((count, max(z_mean.shape[1], PROJECTOR_DIMENSIONS)), np.float32)
    points[:, : z_mean.shape[1]] = z_mean[:count]
    embedding = tf.Variable(points, name=EMBEDDING_NAME)
    tf.train.Checkpoint(**{EMBEDDING_NAME: embedding}).save(os.path.join(log_dir, "embedding"))

    config = projector.ProjectorConfig()
    info = config.embeddings.add()
    info.tensor_name = f"{EMBEDDING_NAME}/.ATTRIBUTES/VARIABLE_VALUE"
    if labels is not None:
        info.metadata_path = "metadata.tsv"
    info.sprite.image_path = "sprite.png"
    info.sprite.single_image_dim.extend([images.shape[2], images.shape[1]])  # width, height
    projector.visualize_embeddings(log_dir, config)
    return count
