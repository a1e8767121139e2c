"""TensorFlow's start-up: no CUDA error lines on a machine without a GPU, a GPU machine left as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coupon_spark import tfenv

ROOT = Path(__file__).resolve().parents[1]


def test_tf_env_hides_cuda_only_where_there_is_no_gpu_and_keeps_what_is_set():
    assert tfenv.tf_env({}, gpu=False) == {
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    assert tfenv.tf_env({}, gpu=True) == {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # what the caller (a user, an executor, the rank's settings) has set wins
    mine = {"TF_CPP_MIN_LOG_LEVEL": "0", "CUDA_VISIBLE_DEVICES": "1", "PYTHONUNBUFFERED": "1"}
    assert tfenv.tf_env(mine, gpu=False) == {"TF_USE_LEGACY_KERAS": "1", **mine}


def test_gpu_present_looks_for_a_device_or_nvidia_smi(monkeypatch):
    monkeypatch.setattr(tfenv.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(tfenv.shutil, "which", lambda name: None)
    assert not tfenv.gpu_present()
    monkeypatch.setattr(tfenv.glob, "glob", lambda pattern: ["/dev/nvidia0"] if pattern == "/dev/nvidia[0-9]*" else [])
    assert tfenv.gpu_present()
    monkeypatch.setattr(tfenv.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(tfenv.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert tfenv.gpu_present()


def test_filtered_stderr_drops_the_noise_lines_and_passes_the_rest(capfd):
    noise = (
        b"E0000 00:00:1795982499.623834   17799 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
        b"register factory for plugin cuDNN when one has already been registered\n"
    )
    with tfenv.filtered_stderr(tfenv.IMPORT_NOISE):
        os.write(2, noise + b"a real error from C++\n" + noise)
    assert capfd.readouterr().err == "a real error from C++\n"


@pytest.mark.skipif(tfenv.gpu_present(), reason="a GPU machine: TensorFlow sees its devices and cuInit succeeds")
def test_a_rank_on_a_cpu_machine_starts_tensorflow_without_error_lines():
    """What a Horovod rank does first (rank_main): its settings, then TensorFlow; then it trains as before."""
    code = (
        "import os\n"
        "from coupon_spark.model.train import RANK_ENV\n"
        "from coupon_spark.tfenv import start_tensorflow\n"
        "start_tensorflow(RANK_ENV)\n"
        "import tensorflow as tf\n"
        "print(tf.config.list_physical_devices('GPU'), float(tf.reduce_sum(tf.ones(3))),\n"
        "      repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout == "[] 3.0 '' 2\n"
    errors = [line for line in out.stderr.splitlines() if line.startswith("E0000") or "cuInit" in line]
    assert errors == [] and "Unable to register" not in out.stderr, out.stderr
