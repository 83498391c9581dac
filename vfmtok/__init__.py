"""VFMTok: frozen vision foundation models as visual tokenizers, and a raster GPT or RAR over their
tokens. Plain PyTorch + timm; knows nothing of DVC or Prefect (``vfmtok/ruff.toml`` keeps it so).
Configs: ``vfmtok.config`` and ``vfmtok.generator_config``; models by name: ``vfmtok.zoo``."""
