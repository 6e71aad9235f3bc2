"""The validated catalog kept between parses, keyed by the content of the YAML files and of the
code that reads them.

The dag-processor parses ``dags/threads.py`` in a fresh process every 30 s; reading the YAML and
validating it was a third of what that file added to a parse. The catalog a validation produced
is pickled under a key that hashes every catalog file (name and bytes) and the source of the
model and the loader: any change — a file edited, added or removed, a new panelflow — misses the
key and the catalog is loaded and validated again, errors and all. A broken catalog is never
cached (the loader raises before there is anything to keep).

The pickles live in a directory only this user can write (``$AIRFLOW_HOME/panelflow-cache``, else
the temporary directory), checked before every read: a pickle someone else could have written is
never loaded. A cache that cannot be read or written is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import tempfile
from pathlib import Path

from panelflow.catalog import loader, model
from panelflow.catalog.loader import Catalog, default_catalog_dir, load_catalog

log = logging.getLogger(__name__)
KEEP = 3  # older pickles kept beside the current one (a rolling upgrade parses both versions)


def _folder() -> Path | None:
    base = os.environ.get("PANELFLOW_CACHE_DIR") or (
        Path(os.environ["AIRFLOW_HOME"]) / "panelflow-cache" if os.environ.get("AIRFLOW_HOME")
        else Path(tempfile.gettempdir()) / f"panelflow-cache-{os.getuid()}")
    folder = Path(base)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("catalog cache %s is not this user's alone; not used", folder)
        return None
    return folder


def _key(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in [*files, Path(model.__file__), Path(loader.__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:40]


def load_catalog_cached(directory: Path | str | None = None) -> Catalog:
    """:func:`~panelflow.catalog.loader.load_catalog` (``check_steps=False``), from the cache when
    nothing it was built from has changed."""
    directory = Path(directory) if directory else default_catalog_dir()
    files = sorted(directory.glob("*.yaml"))
    folder = _folder() if files else None
    if folder is None:
        return load_catalog(directory, check_steps=False)
    path = folder / f"catalog-{_key(files)}.pickle"
    try:
        with path.open("rb") as fh:
            catalog = pickle.load(fh)
        if isinstance(catalog, Catalog):
            return catalog
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - a stale or torn pickle is a miss
        log.warning("catalog cache %s unreadable (%s); loading the catalog", path.name, exc)
    catalog = load_catalog(directory, check_steps=False)
    try:
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with partial.open("wb") as fh:
            pickle.dump(catalog, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)
        older = sorted(folder.glob("catalog-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in older[KEEP + 1:]:
            stale.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("catalog cache not written (%s)", exc)
    return catalog
