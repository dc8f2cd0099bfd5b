"""synthgen: prompt manifests -> curated, sharded, provenance-stamped synthetic image datasets."""

__version__ = "0.1.0"
