"""Commands that use the pipeline's results: generate, reconstruct, summary (``vfmtok-pipeline ...``)."""
