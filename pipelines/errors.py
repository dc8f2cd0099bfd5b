"""Errors users act on. Each names the file, row and field where that applies."""


class SynthgenError(Exception):
    """Base class; the CLI turns these into a clear message and a non-zero exit."""

    exit_code = 1


class SpecError(SynthgenError):
    """The job spec or the manifest is invalid. Nothing has been written."""

    exit_code = 2


class ManifestError(SpecError):
    pass


class StorageError(SynthgenError):
    pass

