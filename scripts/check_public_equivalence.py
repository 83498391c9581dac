"""Check that imported weights make this project's models compute what the public code computes.

    pip install einops omegaconf
    python scripts/check_public_equivalence.py --vfmtok /tmp/VFMTok     # a checkout of CVMI-Lab/VFMTok

A child process builds, with the public code (on CPU, the CUDA deformable-attention op replaced
by the pure-PyTorch reference the public code ships for testing), the public tokenizer at its
published config and a small LlamaGen-style GPT, perturbs every weight (so no zero or identity
init hides a wrong mapping), and runs them on random inputs: the tokenizer from given DINOv2
levels to its anchor features, code indices and decoded image; the GPT to its logits. This
process imports those weights through ``vfmtok.released_weights`` and runs ours on the same
inputs. It prints the largest differences and exits non-zero above the tolerances. The two
repositories share the package name ``vfmtok``, hence the two processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
B, SEED = 2, 0
TINY_GPT = {"n_layer": 2, "n_head": 4, "dim": 64, "vocab_size": 64, "block_size": 16, "num_classes": 10}


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def public_reference(repo: Path, out: Path) -> None:
    """Child: build and run the public models; save weights, inputs and outputs."""
    from torch import nn

    sys.path = [p for p in sys.path if not (Path(p) / "pipeline").is_dir()]
    for name in ("kornia", "refile", "MultiScaleDeformableAttention", "cv2"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["refile"].smart_open = open
    sys.path.insert(0, str(repo))
    from omegaconf import OmegaConf

    import vfmtok.modules.ops.modules.ms_deform_attn as msda
    from vfmtok.modules.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch

    msda.MSDeformAttnFunction = types.SimpleNamespace(
        apply=lambda v, shapes, start, loc, w, step: ms_deform_attn_core_pytorch(v, shapes, loc, w))
    torch.manual_seed(SEED)
    latents = [torch.randn(B, 576, 1024) for _ in range(4)]  # DINOv2-L levels at 336 px

    class Levels(nn.Module):  # stands in for the frozen DINOv2
        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, imgs):
            return latents

    mod = types.ModuleType("levels_stand_in")
    mod.Levels = Levels
    sys.modules[mod.__name__] = mod
    from autoregressive.models.gpt import ModelArgs, Transformer

    from vfmtok.tokenizer.vq_model import VQ_models

    config = OmegaConf.load(repo / "configs" / "vit_transformer.yaml")
    config.encoder_config.params.visual_encoder_config = {"target": "levels_stand_in.Levels"}
    tok = VQ_models["VQ-16"](transformer_config=config, codebook_size=16384, codebook_slots_embed_dim=12,
                             z_channels=512).eval()
    _perturb(tok)
    with torch.no_grad():
        slots, _ = tok.encode_transformer(torch.zeros(B, 3, 336, 336))
        _, _, indices = tok.encode(torch.zeros(B, 3, 336, 336))
        indices = indices.view(B, -1)
        image, _ = tok.decode_code(indices, (B, indices.shape[1], 12), channel_first=False)
    gpt = Transformer(ModelArgs(**TINY_GPT, cls_token_num=1, model_type="c2i", token_dropout_p=0.0,
                                resid_dropout_p=0.0, ffn_dropout_p=0.0))
    _perturb(gpt)
    gpt.train()  # the full-sequence path; every dropout is 0, and the labels are never dropped:
    gpt.cls_embedding.dropout_prob = 0.0
    idx, labels = torch.randint(0, 64, (B, 15)), torch.tensor([3, 7])
    with torch.no_grad():
        logits, _ = gpt(idx, labels)
    torch.save({"tokenizer": tok.state_dict(), "levels": latents, "slots": slots, "indices": indices,
                "image": image, "gpt": gpt.state_dict(), "idx": idx, "labels": labels, "logits": logits}, out)


def ours(ref: dict) -> dict[str, float]:
    from types import SimpleNamespace

    from vfmtok import released_weights as pw
    from vfmtok.generator_config import GPTConfig
    from vfmtok.gpt import GPT
    from vfmtok.tokenizer import build_tokenizer

    cfg = pw.tokenizer_config()
    stand_in = SimpleNamespace(level_channels=[1024] * 4, level_shapes=[(24, 24)] * 4, image_size=336)
    tok = build_tokenizer(cfg, stand_in).eval()
    expected = {k: tuple(v.shape) for k, v in tok.state_dict().items()}
    tok.load_state_dict(pw.convert(ref["tokenizer"], pw.tokenizer_rules(cfg), pw.TOKENIZER_IGNORED, expected))
    levels = [lv.transpose(1, 2).reshape(B, 1024, 24, 24) for lv in ref["levels"]]  # tokens -> maps
    with torch.no_grad():
        slots = tok.encoder(levels)
        indices = tok.encode(None, levels)
        image = tok._pixels(tok.post_quant(tok.quantizer.lookup(ref["indices"])))
    gcfg = GPTConfig(vocab_size=64, n_tokens=16, dim=64, n_layer=2, n_head=4, num_classes=10, cls_rope="zero",
                     class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0)
    gpt = GPT(gcfg).eval()
    expected = {k: tuple(v.shape) for k, v in gpt.state_dict().items()}
    gpt.load_state_dict(pw.convert(ref["gpt"], pw.gpt_rules(2), pw.GPT_IGNORED, expected))
    with torch.no_grad():
        logits = gpt.forward_prefix(ref["labels"], ref["idx"])
    return {"anchor features max |diff|": float((slots - ref["slots"]).abs().max()),
            "code indices that differ": float((indices != ref["indices"]).float().mean()),
            "decoded image max |diff|": float((image - ref["image"]).abs().max()),
            "GPT logits max |diff|": float((logits - ref["logits"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vfmtok", type=Path, required=True)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        public_reference(args.vfmtok, args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = Path(tmp) / "reference.pt"
        child = [sys.executable, __file__, "--vfmtok", str(args.vfmtok), "--child", str(ref_file)]
        proc = subprocess.run(child, cwd="/", capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"the public models failed:\n{proc.stderr[-4000:]}")
        sys.path.insert(0, str(ROOT))
        diffs = ours(torch.load(ref_file, weights_only=True))
    tolerance = {"anchor features max |diff|": 1e-3, "code indices that differ": 0.01,
                 "decoded image max |diff|": 1e-2, "GPT logits max |diff|": 1e-4}
    for name, value in diffs.items():
        print(f"{name}: {value:.3g} (tolerance {tolerance[name]:g})")
    if any(diffs[k] > tolerance[k] for k in diffs):
        raise SystemExit("our models do not compute what the public code computes")


if __name__ == "__main__":
    main()
