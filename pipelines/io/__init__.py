"""Storage (fsspec), the output lease, and retries of transient storage errors."""
