"""The trained models as the pipeline loads them."""
