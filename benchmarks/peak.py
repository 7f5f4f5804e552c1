"""The yardstick of the benchmark's speed: the best GFLOP/s of large matrix multiplies on
this machine, in float32 and in bfloat16.
"""

import time

MATMUL_SIZES = (1024, 2048, 4096)  # the peak is the best of these square sizes
MATMUL_CHAIN = 10  # chained products per timing


def matmul_gflops(dtype, sizes=MATMUL_SIZES, chain=MATMUL_CHAIN, tries=3):
    """The best GFLOP/s of `chain` chained products c = matmul(c, b) of size x size squares in
    one tf.function, best of `tries` for each size.

    Chained, so TensorFlow's graph optimiser cannot merge them: ten identical, independent
    products in one graph are computed once and would read ten times too fast.
    """
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    best = {"gflops": 0.0}
    for size in sizes:
        # b / sqrt(size) keeps the chain's values of the same magnitude as a's.
        a = tf.cast(generator.normal((size, size)), dtype)
        b = tf.cast(generator.normal((size, size)) / size**0.5, dtype)

        @tf.function
        def products(c, b):
            for _ in range(chain):
                c = tf.matmul(c, b)
            return tf.reduce_sum(tf.cast(c[:1, :1], tf.float32))  # a scalar: waits for the result

        products(a, b).numpy()  # trace and warm up
        for _ in range(tries):
            start = time.perf_counter()
            products(a, b).numpy()
            seconds = (time.perf_counter() - start) / chain
            gflops = 2 * size**3 / seconds / 1e9
            if gflops > best["gflops"]:
                best = {"gflops": gflops, "seconds_per_matmul": seconds, "size": size}
    return {**best, "chain": chain, "tries": tries}
