"""Embed and score (DESIGN step 5): open_clip image/text embeddings and CLIPScore."""
