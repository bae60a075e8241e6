"""The MNIST BNN trained by Larq with Bop: the Larq side of ``benchmarks/larq_comparison.py``.

Runs under a Python that has Larq and TensorFlow (not torchbop's environment; nothing here imports torch or
torchbop), e.g. Larq 0.14 with TensorFlow 2.21 and tf-keras (``TF_USE_LEGACY_KERAS=1``: Larq needs Keras 2)::

    TF_USE_LEGACY_KERAS=1 /path/to/larq-env/bin/python benchmarks/larq_mnist_bnn.py \
        --data-dir ../shared/data --threads 2 --epochs 1

The network is torchbop's ``MnistBNN(padding="same")`` written in Larq (SPEC section 4): three ``QuantConv2D``
blocks (32, 64, 64 filters, 3x3, "same", no bias; the first without an input quantizer), each followed by 2x2 max
pooling and ``BatchNormalization(scale=False)`` (Keras' defaults: momentum 0.99, epsilon 1e-3), then two
``QuantDense`` blocks (64, 10) with batch norm; sign quantizers with the STE (``ste_sign``) on weights and inputs.
The recipe is torchbop's ``mnist``: batch 100, ``Bop(gamma=1e-3, threshold=1e-6)`` for the binary kernels and
``Adam(0.01)`` (Keras' legacy optimizer, which Larq 0.14 requires) for the rest through ``CaseOptimizer``, pixels scaled
to [-1, 1], training set shuffled.

Prints one JSON line: ``images_per_s`` of each training epoch (from the first batch's start to the last batch's end;
validation is not run during ``fit``, so it is excluded) and the test accuracy after training.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format): a 4-byte magic whose last byte is the rank, the big-endian sizes, uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def load(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data_dir / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / "mnist" / f"{prefix}-labels-idx1-ubyte.gz")
    return (images.astype(np.float32) / 127.5 - 1.0)[..., None], labels.astype(np.int64)


def build_model(tf, lq):
    quantized = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False)
    layers = []
    for i, filters in enumerate((32, 64, 64)):
        kwargs = dict(quantized, input_quantizer=None) if i == 0 else quantized
        if i == 0:
            kwargs["input_shape"] = (28, 28, 1)
        layers += [
            lq.layers.QuantConv2D(filters, 3, padding="same", **kwargs),
            tf.keras.layers.MaxPool2D(2),
            tf.keras.layers.BatchNormalization(scale=False),
        ]
    layers += [
        tf.keras.layers.Flatten(),
        lq.layers.QuantDense(64, **quantized),
        tf.keras.layers.BatchNormalization(scale=False),
        lq.layers.QuantDense(10, **quantized),
        tf.keras.layers.BatchNormalization(scale=False),
    ]
    return tf.keras.Sequential(layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import larq as lq
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)
    x_train, y_train = load(Path(args.data_dir), "train")
    x_test, y_test = load(Path(args.data_dir), "test")
    if args.subset is not None:
        x_train, y_train = x_train[: args.subset], y_train[: args.subset]

    model = build_model(tf, lq)
    optimizer = lq.optimizers.CaseOptimizer(
        (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop(threshold=1e-6, gamma=1e-3)),
        default_optimizer=tf.keras.optimizers.legacy.Adam(0.01),
    )  # Larq 0.14 takes legacy optimizers
    model.compile(
        optimizer=optimizer, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )

    class EpochTimer(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=100, epochs=args.epochs, shuffle=True, verbose=0, callbacks=[timer])
    _, test_acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    steps = len(x_train) // 100 + (len(x_train) % 100 > 0)
    print(
        json.dumps(
            {
                "framework": f"larq {lq.__version__}, tensorflow {tf.__version__}",
                "threads": args.threads,
                "images": len(x_train),
                "steps_per_epoch": steps,
                "images_per_s": [len(x_train) / s for s in timer.seconds],
                "test_acc": float(test_acc),
            }
        )
    )


if __name__ == "__main__":
    main()
