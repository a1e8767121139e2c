"""TensorFlow's start-up: quiet on a machine without a GPU, unchanged on one with a GPU.

The TensorFlow 2.18 wheel (the CUDA-enabled build) prints error-looking lines on every start, GPU or not:
three "Unable to register cuFFT/cuDNN/cuBLAS factory" lines and "All log messages before
absl::InitializeLog() ..." when it is imported (the cuDNN and cuBLAS ones come from absl before TensorFlow's
own logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them), and, on a machine without a GPU,
"failed call to cuInit" the first time it looks for devices (``TF_CPP_MIN_LOG_LEVEL=2`` keeps it, and so does
``CUDA_VISIBLE_DEVICES=""``). A training run starts TensorFlow in every Horovod rank, so each training step
printed about ten such lines that read like failures.

So each process that uses TensorFlow (the command line for ``train`` and ``pipeline``, and each Horovod rank
in :func:`coupon_spark.model.train.rank_main`) first takes :func:`tf_env` (where no GPU is present:
``CUDA_VISIBLE_DEVICES=""``, TensorFlow hidden from CUDA), then imports TensorFlow and lists the GPUs once
through :func:`import_tensorflow`, which drops exactly those lines from what the C++ side writes to stderr
meanwhile and passes every other line through. A machine with a GPU (``/dev/nvidia<N>`` or ``nvidia-smi``) keeps
its devices and its ``CUDA_VISIBLE_DEVICES``, and still sees a failing ``cuInit``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from types import ModuleType

# printed by every import of the CUDA-enabled wheel, GPU or not (duplicate plugin registration)
IMPORT_NOISE = (
    "Unable to register cuFFT factory",
    "Unable to register cuDNN factory",
    "Unable to register cuBLAS factory",
    "All log messages before absl::InitializeLog() is called",
)
# printed where no GPU (or no CUDA driver) is present: only noise on a machine known to have none
NO_GPU_NOISE = ("failed call to cuInit", "Could not find cuda drivers")


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU: a ``/dev/nvidia<N>`` device or an ``nvidia-smi`` on PATH."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def tf_env(base: Mapping[str, str] | None = None, gpu: bool | None = None) -> dict[str, str]:
    """The environment for a process about to import TensorFlow: ``base`` (for example ``os.environ``, or a
    Horovod rank's settings) plus what it lacks of ``TF_USE_LEGACY_KERAS=1`` and ``TF_CPP_MIN_LOG_LEVEL=2``,
    and, where no GPU is present, ``CUDA_VISIBLE_DEVICES=""``.

    Values in ``base`` win, so a user's ``TF_CPP_MIN_LOG_LEVEL=0`` or ``CUDA_VISIBLE_DEVICES`` stays.

    Args:
        base: The settings to start from.
        gpu: Whether a GPU is present; None: :func:`gpu_present`.
    """
    env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not (gpu_present() if gpu is None else gpu):
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env | dict(base or {})


@contextlib.contextmanager
def filtered_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """Hold what is written to file descriptor 2 (C/C++ code included) meanwhile, then write back every line
    that contains none of ``drop``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(d in line for d in drop)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow(quiet: bool = True) -> ModuleType:
    """Import TensorFlow with its start-up noise dropped when ``quiet`` (see the module docstring).

    Where no GPU is present it also lists the GPUs (the first touch of CUDA, and its ``cuInit`` line), so that
    nothing later prints it. Where one is, CUDA is left untouched: a process may still narrow
    ``CUDA_VISIBLE_DEVICES`` before it starts (:func:`coupon_spark.model.train.pin_gpu`). Importing again is
    free and prints nothing.
    """
    if "tensorflow" in sys.modules or not quiet:
        import tensorflow as tf

        return tf
    gpu = gpu_present()
    with filtered_stderr(IMPORT_NOISE if gpu else IMPORT_NOISE + NO_GPU_NOISE):
        import tensorflow as tf

        if not gpu:
            tf.config.list_physical_devices("GPU")
    return tf


def start_tensorflow(env: Mapping[str, str] | None = None, quiet: bool = True) -> None:
    """The start of a process that trains (a Horovod rank): set ``env``, completed by :func:`tf_env`, in this
    process; where no GPU is present, import TensorFlow now (:func:`import_tensorflow`).

    Where a GPU is present TensorFlow is not imported here: the caller pins its GPU first, then imports it.
    A ``CUDA_VISIBLE_DEVICES`` the process already has (an executor's choice of devices) is kept.
    """
    gpu = gpu_present()
    settings = tf_env(env, gpu=gpu)
    if "CUDA_VISIBLE_DEVICES" in os.environ and "CUDA_VISIBLE_DEVICES" not in (env or {}):
        settings.pop("CUDA_VISIBLE_DEVICES", None)
    os.environ.update(settings)
    if not gpu:
        import_tensorflow(quiet)
