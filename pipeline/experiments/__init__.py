"""Comparing runs: two revisions side by side, and the paper's claims in miniature."""
