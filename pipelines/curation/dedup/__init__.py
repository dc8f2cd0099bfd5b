"""Deduplication: exact and perceptual (hashes), semantic (embedding clusters)."""
