"""VFMTok: frozen vision foundation models as visual tokenizers, and a LlamaGen-style GPT over their
tokens. Plain PyTorch + timm; knows nothing of DVC or Prefect. Configs: ``vfmtok.config``."""
