"""The model registry: ``<lake root>/<train.registry_dir>/<name>/<version>/`` plus a ``latest`` pointer.

Layout of a version (a positive integer, one more than the highest version folder of the model)::

    <name>/latest                   the latest complete version number (replaced atomically)
    <name>/<version>/
        weights.npz                 plain numpy weights (written by rank 0)
        spec.json                   architecture and coupon-id vocabulary
        transform.json              the feature transformation (from feature_stats)
        saved_model/                the TensorFlow SavedModel (signature ``serving_default``)
        metrics.json                validation metrics (AUC, log loss, calibration) and per-epoch history
        train_config.json           the ``train`` configuration used
        checkpoints/                rank 0's best weights during training (best.npz, state.json)
        manifest.json               written last: a version without it is incomplete and ignored

``manifest.json`` records the training table's location and Delta version, the ``feature_stats`` partition
and source version, the run date, the number of ranks and a fingerprint of all of these with the config, so
any version can be reproduced, and a rerun with the same inputs finds the version it already made.

Works on a local folder or an object store (through pyarrow's filesystems).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from coupon_spark.config import Config, join_uri
from coupon_spark.errors import UpstreamNotReady
from coupon_spark.storage import filesystem_for

MANIFEST = "manifest.json"
LATEST = "latest"


class ModelNotFoundError(UpstreamNotReady, LookupError):
    """No complete version of the model in the registry."""


def write_bytes(uri: str, data: bytes, atomic: bool = False) -> None:
    """Write ``data`` to ``uri``; ``atomic``: through a temporary file and a rename on a local filesystem
    (an object store's single PUT is atomic already)."""
    fs, path = filesystem_for(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if atomic and isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        return f.read()  # type: ignore[no-any-return]


def write_npz(uri: str, arrays: dict[str, np.ndarray], atomic: bool = True) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(uri, buf.getvalue(), atomic=atomic)


def read_npz(uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(uri))) as npz:
        return {k: npz[k] for k in npz.files}


class Registry:
    """Versions of models under one registry root.

    Args:
        root: The registry folder (local path or URI).
    """

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    @classmethod
    def from_config(cls, cfg: Config) -> Registry:
        d = cfg.train.registry_dir
        return cls(d if ("://" in d or d.startswith("/")) else join_uri(cfg.lake.root, d))

    def model_uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def version_uri(self, name: str, version: int) -> str:
        return f"{self.root}/{name}/{version}"

    def _folders(self, name: str) -> list[int]:
        fs, path = filesystem_for(self.model_uri(name))
        info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(int(i.base_name) for i in info if i.type == pafs.FileType.Directory and i.base_name.isdigit())

    def versions(self, name: str) -> list[int]:
        """Complete versions (with a manifest), ascending."""
        out = []
        for v in self._folders(name):
            fs, path = filesystem_for(f"{self.version_uri(name, v)}/{MANIFEST}")
            if fs.get_file_info(path).type == pafs.FileType.File:
                out.append(v)
        return out

    def new_version(self, name: str) -> int:
        """Claim the next version number (one more than any folder, complete or not) and create its folder."""
        v = max(self._folders(name), default=0) + 1
        fs, path = filesystem_for(self.version_uri(name, v))
        fs.create_dir(path, recursive=True)
        return v

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        return json.loads(read_bytes(f"{self.version_uri(name, version)}/{MANIFEST}"))  # type: ignore[no-any-return]

    def find(self, name: str, fingerprint: str) -> int | None:
        """The newest complete version whose manifest has ``fingerprint``."""
        for v in reversed(self.versions(name)):
            if self.manifest(name, v).get("fingerprint") == fingerprint:
                return v
        return None

    def latest(self, name: str) -> int:
        """The version the ``latest`` pointer names.

        Raises:
            ModelNotFoundError: No pointer (nothing published yet).
        """
        try:
            return int(read_bytes(f"{self.model_uri(name)}/{LATEST}").decode().strip())
        except (FileNotFoundError, OSError):
            raise ModelNotFoundError(
                f"no published version of model {name!r} under {self.root}: run `coupon-spark train` first"
            ) from None

    def trained_on(self, name: str) -> dict[int, dt.date]:
        """Each complete version and the run date it was trained for (its manifest's ``run_date``; a version
        without one counts as trained before every day)."""
        out = {}
        for v in self.versions(name):
            trained = self.manifest(name, v).get("run_date")
            out[v] = dt.date.min if trained is None else dt.date.fromisoformat(str(trained)[:10])
        return out

    def latest_as_of(self, name: str, run_date: dt.date) -> int:
        """The version a run of ``run_date`` uses: of the complete versions trained by ``run_date``, the newest by
        (run date, version), less the versions a rollback of the ``latest`` pointer set aside (numbered above the
        pointer and trained on or after the pointer's day).

        A rerun of a past day so scores with the model that day had, not with one trained on later data; a rerun
        that retrained a past day does not reach the days after it.

        Raises:
            ModelNotFoundError: Nothing published, or no version trained by ``run_date``.
        """
        pointer, trained = self.latest(name), self.trained_on(name)
        pointed = trained.get(pointer, dt.date.min)
        usable = [(d, v) for v, d in trained.items() if d <= run_date and not (v > pointer and d >= pointed)]
        if not usable:
            raise ModelNotFoundError(
                f"no version of model {name!r} under {self.root} was trained by {run_date}: run "
                f"`coupon-spark train --run-date {run_date}` first, or name a version in score.model_version"
            )
        return max(usable)[1]

    def advance_latest(self, name: str, version: int) -> None:
        """Point ``latest`` at a newly published version, unless the pointer names a version trained for a later
        day (a rerun of a past day publishes for that day; the live days keep their model)."""
        try:
            current: int | None = self.latest(name)
        except ModelNotFoundError:
            current = None
        trained = self.trained_on(name)
        if current not in trained or trained[current] <= trained[version]:
            self.set_latest(name, version)

    def set_latest(self, name: str, version: int) -> None:
        """Point ``latest`` at a complete version (atomically)."""
        if version not in self.versions(name):
            raise ModelNotFoundError(f"model {name!r} version {version} is not complete (no {MANIFEST})")
        write_bytes(f"{self.model_uri(name)}/{LATEST}", f"{version}\n".encode(), atomic=True)

    def write_json(self, name: str, version: int, file: str, obj: Any) -> None:
        write_bytes(f"{self.version_uri(name, version)}/{file}", json.dumps(obj, indent=1, default=str).encode())

    def read_json(self, name: str, version: int, file: str) -> Any:
        return json.loads(read_bytes(f"{self.version_uri(name, version)}/{file}"))

    def upload_dir(self, local: str | Path, uri: str) -> None:
        """Copy a local folder (a SavedModel) to ``uri``."""
        fs, path = filesystem_for(uri)
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def local_dir(self, name: str, version: int | None = None) -> Path:
        """A local folder with the version's files (the folder itself when the registry is local; else a
        temporary download of everything but the SavedModel and checkpoints). ``None``: the latest."""
        v = self.latest(name) if version is None else version
        uri = self.version_uri(name, v)
        fs, path = filesystem_for(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            return Path(path)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-{v}-"))
        for f in ("weights.npz", "spec.json", "transform.json", MANIFEST, "metrics.json"):
            (tmp / f).write_bytes(read_bytes(f"{uri}/{f}"))
        for f in ("decision.json", "fold_weights.npz"):  # the gate and its ensemble, where the version has them
            try:
                (tmp / f).write_bytes(read_bytes(f"{uri}/{f}"))
            except (FileNotFoundError, OSError):
                pass
        return tmp
