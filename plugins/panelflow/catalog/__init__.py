"""The thread catalog: YAML in ``include/catalog`` → validated, typed data."""

from panelflow.catalog.loader import Catalog, CatalogError, default_catalog_dir, load_catalog

__all__ = ["Catalog", "CatalogError", "default_catalog_dir", "load_catalog"]
