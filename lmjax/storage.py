"""Workdirs as URLs: local paths and gs:// buckets alike through etils.epath (gcsfs for files, TensorStore for
Orbax's arrays), written directly, with no FUSE mount.

STORAGE_EMULATOR_HOST, the variable Google's client libraries read, points lmjax at a local GCS emulator:
gcsfs reads it, and `use_emulator` hands it to TensorStore (TENSORSTORE_GCS_HTTP_URL).
"""

from __future__ import annotations

import logging
import os

from etils import epath

from lmjax.errors import InputError

GCS = "gs://"


def is_gcs(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(GCS)


def use_emulator() -> None:
    """Sends TensorStore and gcsfs to STORAGE_EMULATOR_HOST when it is set (before either opens a bucket)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host if "://" in host else f"http://{host}")
        # gcsfs asks the storage-control API for each bucket's layout; emulators have none
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import fsspec.config

        fsspec.config.conf.setdefault("gs", {}).setdefault("token", "anon")  # emulators need no credentials


def workdir(path: str | os.PathLike) -> epath.Path:
    """A run directory: a local path (~ expanded), or gs://BUCKET/... in a bucket these credentials see."""
    text = os.fspath(path)
    if "://" in text and not is_gcs(text):
        raise InputError(f"{text}: only local paths and gs:// URLs can be workdirs")
    if not is_gcs(text):
        return epath.Path(text).expanduser()
    use_emulator()
    bucket = text[len(GCS) :].split("/")[0]
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        import google.auth
        import google.auth.exceptions

        quiet = logging.getLogger("google.auth")  # it warns of each place it looked before it raises
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError:
            raise InputError(
                f"{text}: no Google Cloud credentials; run `gcloud auth application-default login` "
                "(a TPU VM uses its service account), or set STORAGE_EMULATOR_HOST for a local emulator"
            ) from None
        finally:
            quiet.setLevel(level)
    try:  # listing needs only storage.objects.list (what objectViewer / objectAdmin grant), not buckets.get
        next(iter(epath.Path(GCS + bucket).iterdir()), None)
    except FileNotFoundError:
        raise InputError(
            f"{text}: bucket gs://{bucket} does not exist or these credentials cannot see it; "
            f"create it (gcloud storage buckets create gs://{bucket}) or fix the URL"
        ) from None
    except PermissionError:
        raise InputError(
            f"{text}: these credentials may not list gs://{bucket}; grant them "
            "roles/storage.objectAdmin on the bucket"
        ) from None
    return epath.Path(text)


def local_absolute(path: epath.Path) -> epath.Path:
    """Orbax wants absolute paths; a URL already is one."""
    return path if is_gcs(path) else epath.Path(os.path.abspath(os.fspath(path)))
