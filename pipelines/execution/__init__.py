"""The only package that imports ray: the local/remote cluster and the Ray Data plans."""
