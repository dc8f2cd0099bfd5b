"""The audit report: one module per section, plus the dataset metrics it quotes."""
