"""Curate (DESIGN step 7): dedup, references and prior datasets, safety, bias audit and rebalancing; one decision per sample."""
