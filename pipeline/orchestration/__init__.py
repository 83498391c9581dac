"""Prefect around DVC: the pipeline as one flow, scheduled retrains, metrics artifacts."""
