"""The LlamaGen-style GPT: sizes, init, RoPE, causality, label dropout, trainability."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok import zoo
from vfmtok.config_schema import ConfigError, validate
from vfmtok.generator_config import GPTConfig
from vfmtok.gpt import GPT, rope_2d_tables
from vfmtok.training import num_params
from vfmtok.transformer import ClassEmbedder, apply_rope

NO_DROPOUT = dict(class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return zoo.build("GPT-Tiny", **{"vocab_size": 64, "n_tokens": 16, "num_classes": 10, **NO_DROPOUT, **kw})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("GPT-B", 111e6), ("GPT-L", 343e6), ("GPT-XL", 775e6), ("GPT-XXL", 1.4e9)],
)
def test_param_counts_match_llamagen(name, expected):
    with torch.device("meta"):
        model = zoo.build(name, vocab_size=16384, n_tokens=256, num_classes=1000)
    assert all(p.is_meta for p in model.parameters())
    n = num_params(model)
    assert abs(n - expected) / expected < 0.02, f"{name}: {n / 1e6:.1f}M vs {expected / 1e6:.0f}M"


def test_zoo_sizes_and_registry():
    with torch.device("meta"):
        big = {n: zoo.build(n, num_classes=1000) for n in ("GPT-2B", "GPT-3B")}
    assert (big["GPT-2B"].config.n_layer, big["GPT-2B"].config.dim) == (48, 1920)
    assert (big["GPT-3B"].config.n_layer, big["GPT-3B"].config.dim) == (24, 3200)
    assert abs(num_params(big["GPT-3B"]) - 3.1e9) / 3.1e9 < 0.02
    gpts = {n for n in zoo.names() if n.startswith("GPT-")}
    assert gpts >= {"GPT-Tiny", "GPT-Small", "GPT-B", "GPT-L", "GPT-XL", "GPT-XXL"}
    with pytest.raises(ConfigError, match="GPT-Huge.*must be one of"):
        zoo.build("GPT-Huge")
    model = zoo.build("GPT-Small", vocab_size=100, n_tokens=64, num_classes=7)
    assert model.cls_embedding.table.num_embeddings == 8  # + null class
    assert model.output.out_features == 100 and model.rope_cos.shape[0] == 65


def test_config_validation():
    with pytest.raises(ConfigError, match="perfect square"):
        validate(GPTConfig(n_tokens=200))
    with pytest.raises(ConfigError, match="must divide dim"):
        validate(GPTConfig(dim=100, n_head=12))
    with pytest.raises(ConfigError, match="n_kv_head"):
        GPT(GPTConfig(n_head=12, n_kv_head=5))  # the model validates its config
    assert GPTConfig(dim=768).ffn_hidden == 2048  # LlamaGen: int(2/3 * 4 * 768) rounded to 256


def test_zero_init_head_gives_uniform_logits():
    model = tiny().eval()
    assert torch.count_nonzero(model.output.weight) == 0
    idx = torch.randint(0, 64, (3, 16))
    logits, loss = model(idx, torch.tensor([0, 5, 9]), targets=idx)
    assert logits.shape == (3, 16, 64) and logits.dtype == torch.float32
    assert torch.count_nonzero(logits) == 0
    assert loss.item() == pytest.approx(math.log(64), abs=1e-5)
    assert model(idx, torch.tensor([0, 5, 9]))[1] is None


def test_teacher_forcing_is_causal_and_class_conditioned():
    model = tiny().eval()
    torch.nn.init.normal_(model.output.weight, std=0.2)
    idx = torch.randint(0, 64, (2, 16))
    labels = torch.tensor([1, 2])
    ref, _ = model(idx, labels)
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 64
    out, _ = model(changed, labels)
    # output i sees [cls, tok_0..tok_{i-1}]: positions 0..5 do not see tok_5 onward
    torch.testing.assert_close(out[:, :6], ref[:, :6])
    assert (out[:, 6:] - ref[:, 6:]).abs().amax() > 1e-3
    other, _ = model(idx, torch.tensor([3, 4]))
    assert (other[:, 0] - ref[:, 0]).abs().amax() > 1e-3  # the class token alone drives pos 0


def test_rope_class_token_unrotated_and_relative():
    cos, sin = rope_2d_tables(grid=4, head_dim=16, base=10000.0)
    assert cos.shape == sin.shape == (17, 8)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    x = torch.randn(2, 17, 3, 16)
    rot = apply_rope(x, cos, sin)
    torch.testing.assert_close(rot[:, 0], x[:, 0], rtol=0, atol=0)  # class token untouched
    assert (rot[:, 2] - x[:, 2]).abs().amax() > 1e-3  # grid cells are rotated...
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))  # ...isometrically

    def pos(r, c):  # sequence position of grid cell (r, c)
        return 1 + 4 * r + c

    # the q.k score depends only on the 2D offset between the two grid cells
    q, k = torch.randn(16), torch.randn(16)

    def score(pq, pk):
        qq = apply_rope(q.view(1, 1, 1, 16), cos[pq:pq + 1], sin[pq:pq + 1])
        kk = apply_rope(k.view(1, 1, 1, 16), cos[pk:pk + 1], sin[pk:pk + 1])
        return (qq * kk).sum()

    s1, s2 = score(pos(0, 1), pos(2, 0)), score(pos(1, 2), pos(3, 1))
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-4)
    assert (score(pos(0, 1), pos(2, 0)) - score(pos(0, 1), pos(0, 3))).abs() > 1e-3
    model = tiny()
    assert torch.all(model.rope_cos[0] == 1) and torch.all(model.rope_sin[0] == 0)


def test_loss_decreases_on_fixed_batch():
    model = tiny().train()
    idx = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(20):
        _, loss = model(idx, labels, targets=idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(64), abs=1e-4)
    assert losses[-1] < 0.6 * losses[0], losses


def test_label_dropout_rate_in_train_never_in_eval():
    emb = ClassEmbedder(num_classes=10, dim=8, dropout=0.25)
    labels = torch.randint(0, 10, (20000,))
    torch.manual_seed(0)
    dropped = emb.train().drop(labels)
    null = dropped == 10
    assert 0.23 < null.float().mean().item() < 0.27
    assert torch.equal(dropped[~null], labels[~null])  # the rest are untouched
    assert torch.equal(emb.eval().drop(labels), labels)
    assert emb(labels[:4]).shape == (4, 1, 8)


def test_full_label_dropout_equals_null_class():
    model = tiny(class_dropout=1.0)
    torch.nn.init.normal_(model.output.weight, std=0.2)
    idx = torch.randint(0, 64, (2, 16))
    dropped, _ = model.train()(idx, torch.tensor([3, 4]))
    null, _ = model.eval()(idx, torch.full((2,), model.null_class))
    conditional, _ = model(idx, torch.tensor([3, 4]))
    torch.testing.assert_close(dropped, null)
    assert (conditional - null).abs().amax() > 1e-3  # eval mode keeps the real labels


def test_grouped_query_attention_is_smaller_and_runs():
    full, gqa = tiny(), tiny(n_kv_head=2)
    assert num_params(gqa) < num_params(full)
    logits, loss = gqa(torch.randint(0, 64, (2, 16)), torch.tensor([0, 1]),
                       targets=torch.randint(0, 64, (2, 16)))
    assert logits.shape == (2, 16, 64) and torch.isfinite(loss)


def test_save_pretrained_rebuilds_from_the_folder_alone(tmp_path):
    model = tiny(token_dropout=0.2).eval()
    torch.nn.init.normal_(model.output.weight, std=0.1)
    model.save_pretrained(tmp_path / "gpt", name="GPT-Tiny")
    loaded = GPT.from_pretrained(tmp_path / "gpt")
    assert loaded.config == model.config and not loaded.training
    idx, labels = torch.randint(0, 64, (2, 16)), torch.tensor([1, 3])
    torch.testing.assert_close(loaded(idx, labels)[0], model(idx, labels)[0])
