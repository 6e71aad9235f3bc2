"""The parse's catalog cache: a hit is the same catalog, any change to a file is a miss, a broken
catalog is never served from it, and a directory others may write is not used."""

from __future__ import annotations

import os
import shutil

import pytest

from panelflow.catalog import CatalogError, default_catalog_dir, load_catalog
from panelflow.catalog.cache import load_catalog_cached


@pytest.fixture
def catalog_dir(tmp_path, monkeypatch):
    folder = tmp_path / "catalog"
    shutil.copytree(default_catalog_dir(), folder)
    monkeypatch.setenv("PANELFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return folder


def test_a_hit_is_the_catalog_the_loader_gives(catalog_dir, tmp_path):
    first = load_catalog_cached(catalog_dir)
    assert len(list((tmp_path / "cache").glob("catalog-*.pickle"))) == 1
    again = load_catalog_cached(catalog_dir)
    fresh = load_catalog(catalog_dir)
    assert again.threads == fresh.threads == first.threads
    assert again.settings == fresh.settings and again.run_groups == fresh.run_groups


def test_an_edited_file_is_read_again(catalog_dir):
    load_catalog_cached(catalog_dir)
    path = catalog_dir / "housekeeping.yaml"
    path.write_text(path.read_text().replace("priority: 5", "priority: 4", 1))
    edited = load_catalog_cached(catalog_dir)
    assert edited.threads == load_catalog(catalog_dir).threads


def test_a_broken_catalog_is_never_served_from_the_cache(catalog_dir):
    load_catalog_cached(catalog_dir)
    path = catalog_dir / "housekeeping.yaml"
    path.write_text(path.read_text() + "\n  - name: Broken\n    domain: nowhere\n")
    with pytest.raises(CatalogError):
        load_catalog_cached(catalog_dir)


def test_a_directory_others_may_write_is_not_used(catalog_dir, tmp_path):
    shared = tmp_path / "cache"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    load_catalog_cached(catalog_dir)
    assert list(shared.iterdir()) == []
