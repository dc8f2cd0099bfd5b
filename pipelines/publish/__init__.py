"""Publish (DESIGN step 9): shards, index last, card, provenance, verification of a published dataset."""
