"""FusedAdam: the Adam the VAE trains with, in one TensorFlow kernel per weight.

vae.py imports this module so that `import vae` is all a saved VAE (whose file names its
optimizer) needs to load.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vae")  # as vae.py's classes
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, with each weight's update in one TensorFlow kernel on TensorFlow.

    Keras writes Adam's update as about ten element-wise operations, each a pass over the
    weights, and the dense layers next to `z` hold millions of them. TensorFlow's
    `ResourceApplyAdam` kernel computes the same update (same formula, same epsilon) in one
    pass. Other backends, and the cases that kernel does not cover (AMSGrad, sparse
    gradients), use Keras' own code.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(beta_1, step),
            beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )
