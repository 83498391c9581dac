"""Record the state-dict keys and shapes of the public VFMTok and LlamaGen models as a fixture.

    pip install einops omegaconf      # what the public model files import (kornia etc. are stubbed)
    git clone https://github.com/CVMI-Lab/VFMTok /tmp/VFMTok
    git clone https://github.com/FoundationVision/LlamaGen /tmp/LlamaGen
    python scripts/record_public_params.py --vfmtok /tmp/VFMTok --llamagen /tmp/LlamaGen

writes ``tests/fixtures/public_params.json``, which ``tests/test_import_weights.py`` checks
``vfmtok.released_weights`` against. Nothing of the public code is copied: each model is built by
the public code itself, at its published config, on the meta device (no memory, no weights), and
only its ``state_dict()`` names and shapes are written, with the commit they come from. The
tokenizer's frozen DINOv2 is replaced by an empty module: its keys are not in the released
checkpoints (the training script drops every key containing "backbone"), and building it would
need the DINOv2 weights file. Modules the model files import but whose code is not needed to
build them (kornia, the CUDA deformable-attention extension, refile, xformers) are stubbed.

Each model is built in its own process (the two repositories share package names).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "public_params.json"
TOKENIZER_FILES = ["vfmtok/tokenizer/vq_model.py", "vfmtok/core/layers.py", "vfmtok/core/transformer.py",
                   "vfmtok/core/deformable_transformer.py", "vfmtok/modules/attention.py",
                   "vfmtok/modules/mlp.py", "vfmtok/modules/ops/modules/ms_deform_attn.py",
                   "configs/vit_transformer.yaml"]
GPT_FILE = "autoregressive/models/gpt.py"
# The released class-conditional generators: VFMTok's (256 tokens) and LlamaGen's (c2i_*_256/384).
VFMTOK_GPTS = ["GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-2B", "GPT-3B"]
LLAMAGEN_GPTS = ["GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B"]


class _Stub(types.ModuleType):
    """A module whose every attribute is a do-nothing callable (for imports the build never uses)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


def _stub(*names: str) -> None:
    for name in names:
        sys.modules.setdefault(name, _Stub(name))


def _shapes(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def tokenizer(repo: Path) -> dict:
    import torch
    from omegaconf import OmegaConf
    from torch import nn

    _stub("kornia", "refile", "MultiScaleDeformableAttention", "cv2")
    sys.path.insert(0, str(repo))
    from vfmtok.tokenizer.vq_model import VQ_models

    empty = types.ModuleType("frozen_backbone_stand_in")
    empty.Empty = type("Empty", (nn.Module,), {"__init__": lambda self, **kw: nn.Module.__init__(self)})
    sys.modules[empty.__name__] = empty
    config = OmegaConf.load(repo / "configs" / "vit_transformer.yaml")
    config.encoder_config.params.visual_encoder_config = {"target": "frozen_backbone_stand_in.Empty"}
    args = {"codebook_size": 16384, "codebook_slots_embed_dim": 12, "z_channels": 512}  # test_net.py's
    with torch.device("meta"):
        model = VQ_models["VQ-16"](transformer_config=config, **args)
    return {"builder": "VQ_models['VQ-16']",
            "args": {**args, "transformer_config": "configs/vit_transformer.yaml"},
            "files": TOKENIZER_FILES, "params": _shapes(model)}


def gpts(repo: Path, names: list[str]) -> dict:
    import torch

    sys.path.insert(0, str(repo))
    from autoregressive.models.gpt import GPT_models

    # The GPT reads drop-path rates with .item(), which meta tensors refuse: that one goes on CPU.
    linspace = torch.linspace
    torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": k.get("device") or "cpu"})

    out = {}
    for name in names:
        args = {"vocab_size": 16384, "block_size": 256, "num_classes": 1000, "cls_token_num": 1,
                "model_type": "c2i"}  # the sampling scripts' defaults
        with torch.device("meta"):
            model = GPT_models[name](**args)
        c = model.config
        out[name] = {"builder": f"GPT_models[{name!r}]", "args": args,
                     "config": {"n_layer": c.n_layer, "n_head": c.n_head, "dim": c.dim,
                                "n_kv_head": c.n_kv_head, "multiple_of": c.multiple_of,
                                "ffn_dim_multiplier": c.ffn_dim_multiplier, "norm_eps": c.norm_eps,
                                "rope_base": c.rope_base, "class_dropout_prob": c.class_dropout_prob},
                     "params": _shapes(model)}
    return out


def _child(kind: str, repo: Path) -> dict:
    script = Path(__file__).resolve()
    proc = subprocess.run([sys.executable, str(script), "--child", kind, str(repo)], capture_output=True,
                          text=True, cwd="/")
    if proc.returncode:
        raise SystemExit(f"building the {kind} models failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vfmtok", type=Path, help="a checkout of CVMI-Lab/VFMTok")
    parser.add_argument("--llamagen", type=Path, help="a checkout of FoundationVision/LlamaGen")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, repo = args.child[0], Path(args.child[1])
        sys.path = [p for p in sys.path if not (Path(p) / "pipeline").is_dir()]  # never this project
        result = {"tokenizer": lambda: tokenizer(repo), "vfmtok_gpt": lambda: gpts(repo, VFMTOK_GPTS),
                  "llamagen_gpt": lambda: gpts(repo, LLAMAGEN_GPTS)}[kind]()
        print(json.dumps(result))
        return
    fixture = {
        "about": "State-dict keys and shapes of the public VFMTok tokenizer and the VFMTok / LlamaGen "
                 "class-conditional GPTs, each built by the public code at its published config on the "
                 "meta device (scripts/record_public_params.py); facts, no code.",
        "sources": {
            "vfmtok": {"repo": "CVMI-Lab/VFMTok", "commit": _commit(args.vfmtok)},
            "llamagen": {"repo": "FoundationVision/LlamaGen", "commit": _commit(args.llamagen)},
        },
        "tokenizer": {"vfmtok": {"source": "vfmtok", **_child("tokenizer", args.vfmtok)}},
        "gpt": {"vfmtok": {"source": "vfmtok", "file": GPT_FILE, "models": _child("vfmtok_gpt", args.vfmtok)},
                "llamagen": {"source": "llamagen", "file": GPT_FILE,
                             "models": _child("llamagen_gpt", args.llamagen)}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
