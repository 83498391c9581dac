"""The DVC + Prefect pipeline around ``vfmtok``: params, stages, on-disk formats, orchestration."""
