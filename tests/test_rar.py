"""RAR: published sizes, the annealing schedule, random orders, target-aware positions, the raster
limit, the KV cache, adaLN-zero init and model folders."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers import assert_equal_to_fp32_rounding
from vfmtok import model_folder, zoo
from vfmtok.config import ARTrainConfig
from vfmtok.config_schema import ConfigError, validate
from vfmtok.generator_config import RARConfig, generator_config, generator_family
from vfmtok.gpt import GPT
from vfmtok.rar import RAR, annealed_step, random_ratio, sample_orders
from vfmtok.training import num_params
from vfmtok.transformer import Generator

V, T, C = 64, 16, 10
NO_DROPOUT = dict(class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)


def make_rar(**kw) -> RAR:
    """A tiny RAR with every weight randomised (the zero adaLN init would hide the blocks)."""
    torch.manual_seed(0)
    model = zoo.build("RAR-Tiny", **{"vocab_size": V, "n_tokens": T, "num_classes": C, **NO_DROPOUT, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("RAR-B", 261e6), ("RAR-L", 461e6), ("RAR-XL", 955e6), ("RAR-XXL", 1499e6)],
)
def test_param_counts_match_rar(name, expected):
    """RAR's published counts (1024-code MaskGIT-VQ tokens, 256 per image, ImageNet-1k)."""
    with torch.device("meta"):
        model = zoo.build(name, vocab_size=1024, n_tokens=256, num_classes=1000)
    assert all(p.is_meta for p in model.parameters())
    n = num_params(model)
    assert abs(n - expected) / expected < 0.02, f"{name}: {n / 1e6:.1f}M vs {expected / 1e6:.0f}M"


def test_zoo_registry_and_family_lookup():
    rars = {n for n in zoo.names() if n.startswith("RAR-")}
    assert rars == {"RAR-Tiny", "RAR-B", "RAR-L", "RAR-XL", "RAR-XXL"}
    assert generator_family("RAR-L") == "rar" and generator_family("GPT-L") == "gpt"
    assert generator_family("RAR-Huge") is None
    with pytest.raises(ConfigError, match="must be one of") as e:
        generator_config("RAR-Huge")
    assert "RAR-XXL" in str(e.value) and "GPT-B" in str(e.value)
    with pytest.raises(ConfigError, match="must be one of"):
        zoo.build("RAR-Huge")
    assert zoo.FAMILIES == {"gpt": GPT, "rar": RAR}  # each family registered by defining its class
    cfg = generator_config("RAR-L", vocab_size=16384)
    assert isinstance(cfg, RARConfig)
    assert (cfg.n_layer, cfg.dim, cfg.mlp_dim, cfg.vocab_size) == (24, 1024, 4096, 16384)
    assert isinstance(zoo.build("GPT-Tiny", vocab_size=V, n_tokens=T, num_classes=C), torch.nn.Module)
    with pytest.raises(ConfigError, match="must divide dim"):
        validate(RARConfig(dim=100, n_head=16))
    with pytest.raises(ConfigError, match="randomness_anneal_end"):
        validate(ARTrainConfig(steps=10, batch_size=2, lr=1e-3, randomness_anneal_start=5,
                               randomness_anneal_end=4))


def test_rar_tiny_has_gpt_tinys_parameter_count():
    """The equal-budget pairing of the RAR vs raster comparison (demo: 1024 codes x 16 tokens)."""
    sizes = dict(vocab_size=1024, n_tokens=16, num_classes=10)
    gpt, rar = num_params(zoo.build("GPT-Tiny", **sizes)), num_params(zoo.build("RAR-Tiny", **sizes))
    assert abs(rar - gpt) / gpt < 0.02, (rar, gpt)


def test_annealing_schedule():
    at = [random_ratio(s, 100, 200) for s in (0, 99, 100, 150, 175, 199, 200, 10_000)]
    assert at == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.25, 0.01, 0.0, 0.0])
    assert [random_ratio(s, 5, 5) for s in (4, 5, 6)] == [1.0, 0.0, 0.0]  # a step, no division
    assert random_ratio(0, 0, 0) == 0.0  # the default: raster from the first step
    # the published schedule: 125k to 187.5k of 250k steps
    assert random_ratio(156_250, 125_000, 187_500) == pytest.approx(0.5)


def test_orders_identity_at_zero_permutations_at_one():
    state = torch.get_rng_state()
    assert torch.equal(sample_orders(5, T, 0.0), torch.arange(T).expand(5, T))
    assert torch.equal(torch.get_rng_state(), state)  # r = 0 draws nothing
    perms = sample_orders(200, T, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perms.sort(dim=1).values, torch.arange(T).expand(200, T))  # permutations
    assert (perms != torch.arange(T)).any(dim=1).all()
    half = sample_orders(4000, T, 0.5, generator=torch.Generator().manual_seed(1))
    permuted = (half != torch.arange(T)).any(dim=1).float().mean().item()
    assert 0.46 < permuted < 0.54


def test_target_aware_embedding_of_step_t_is_position_of_token_t_plus_1():
    model = make_rar()
    with torch.no_grad():  # keep only the target-aware table; row j = j in every channel
        for p in (model.cls_token, model.pos_embed, model.step_embed, model.tok_embeddings.weight,
                  model.cls_embedding.table.weight):
            p.zero_()
        model.target_pos_embed.copy_(torch.arange(T, dtype=torch.float)[:, None].expand(T, model.config.dim))
    orders = sample_orders(3, T, 1.0, generator=torch.Generator().manual_seed(0))
    seq = torch.randint(0, V, (3, T - 1))
    x, c = model.embed_inputs(torch.tensor([1, 2, 3]), seq, orders)
    assert x.shape == c.shape == (3, T + 1, model.config.dim)
    assert torch.all(x[:, 0] == 0)  # [CLS] predicts nothing
    torch.testing.assert_close(x[:, 1, 0], orders[:, 0].float())  # the class token: token 0's cell
    for t in range(T - 1):  # input token t (position 2 + t) carries the cell of token t + 1
        torch.testing.assert_close(x[:, 2 + t, 0], orders[:, t + 1].float())
    raster, _ = model.embed_inputs(torch.tensor([1]), seq[:1])
    torch.testing.assert_close(raster[0, 1:, 0], torch.arange(T, dtype=torch.float))


def test_at_r_zero_training_is_raster_training_on_the_same_weights():
    model = make_rar().train()  # dropout off: train mode is deterministic
    idx, labels = torch.randint(0, V, (4, T)), torch.tensor([0, 3, 5, 9])
    step_fn = annealed_step(2, 4)
    raster_logits, raster_loss = model(idx, labels, targets=idx)
    annealed = step_fn(model, idx, labels, 4)  # step >= end: r = 0
    identity_logits, _ = model(idx, labels, orders=sample_orders(4, T, 0.0))
    torch.testing.assert_close(annealed, raster_loss, rtol=0, atol=0)
    torch.testing.assert_close(identity_logits, raster_logits, rtol=0, atol=0)
    # the raster model is what sampling runs: the same logits as the prefix path
    torch.testing.assert_close(model.eval().forward_prefix(labels, idx[:, :-1]), raster_logits)
    assert step_fn(model.train(), idx, labels, 0) != raster_loss  # r = 1: another order, another loss


def test_random_order_is_causal_in_generation_order():
    model = make_rar()
    idx, labels = torch.randint(0, V, (2, T)), torch.tensor([1, 2])
    orders = sample_orders(2, T, 1.0, generator=torch.Generator().manual_seed(3))
    ref, loss = model(idx, labels, targets=idx, orders=orders)
    k = 5
    changed = idx.clone()
    rows = torch.arange(2)
    changed[rows, orders[:, k]] = (changed[rows, orders[:, k]] + 1) % V  # the k-th generated token
    out, _ = model(changed, labels, orders=orders)
    torch.testing.assert_close(out[:, : k + 1], ref[:, : k + 1])  # rows <= k have not seen it
    assert (out[:, k + 1:] - ref[:, k + 1:]).abs().amax() > 1e-3
    expected = torch.nn.functional.cross_entropy(ref.flatten(0, 1), idx.gather(1, orders).flatten())
    torch.testing.assert_close(loss, expected)  # row i is scored against token orders[i]


def test_kv_cache_logits_match_full_sequence():
    model = make_rar()
    labels, tokens = torch.tensor([0, 3, 9]), torch.randint(0, V, (3, T))
    with torch.no_grad():
        full, _ = model(tokens, labels)  # (B, T, V), raster
        model.setup_caches(max_batch=4, max_seq_len=model.max_seq_len)  # a larger batch is fine
        steps = [model.forward_step(torch.arange(2), labels=labels)]  # [CLS] + class -> token 0
        for t in range(1, T):
            steps.append(model.forward_step(torch.tensor([t + 1]), idx=tokens[:, t - 1:t]))
        model.setup_caches(max_batch=3, max_seq_len=model.max_seq_len)  # chunked prefill: + 6 tokens
        chunks = [model.forward_step(torch.arange(8), idx=tokens[:, :6], labels=labels)]
        chunks += [model.forward_step(torch.tensor([t + 1]), idx=tokens[:, t - 1:t]) for t in range(7, T)]
        model.clear_caches()
        exact, _ = copy.deepcopy(model).double()(tokens, labels)
    assert full.std() > 0.5  # non-trivial logits
    assert_equal_to_fp32_rounding(torch.cat(steps, dim=1), full, exact)
    assert_equal_to_fp32_rounding(torch.cat(chunks, dim=1), full, exact)
    with pytest.raises(RuntimeError, match="setup_caches"):
        model.forward_step(torch.arange(2), labels=labels)
    model.setup_caches(1, 4)
    with pytest.raises(ValueError, match="positions 0 and 1"):
        model.forward_step(torch.tensor([2, 3]), labels=labels[:1])
    with pytest.raises(ValueError, match="max_seq_len"):
        model.setup_caches(1, T + 2)


def test_adaln_zero_init_blocks_start_as_identity_and_training_learns():
    torch.manual_seed(0)
    model = zoo.build("RAR-Tiny", vocab_size=V, n_tokens=T, num_classes=C, **NO_DROPOUT)
    assert torch.count_nonzero(model.cls_token) == 0
    x, c = model.embed_inputs(torch.tensor([1, 2]), torch.randint(0, V, (2, T - 1)))
    h = x
    for layer in model.layers:
        h = layer(h, c)
    torch.testing.assert_close(h, x, rtol=0, atol=0)
    idx = torch.randint(0, V, (8, T), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % C
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    step_fn, losses = annealed_step(0, 30), []
    for step in range(30):
        loss = step_fn(model.train(), idx, labels, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(V)) < 0.2
    assert losses[-1] < 0.7 * losses[0], losses


def test_save_pretrained_rebuilds_from_the_folder_alone(tmp_path):
    model = make_rar(attn_dropout=0.1)
    model.save_pretrained(tmp_path / "rar", name="RAR-Tiny")
    loaded = zoo.from_pretrained(tmp_path / "rar")
    assert isinstance(loaded, RAR) and loaded.config == model.config and not loaded.training
    idx, labels = torch.randint(0, V, (2, T)), torch.tensor([1, 3])
    torch.testing.assert_close(loaded(idx, labels)[0], model(idx, labels)[0])
    zoo.build("GPT-Tiny", vocab_size=V, n_tokens=T, num_classes=C).save_pretrained(tmp_path / "gpt")
    assert type(zoo.from_pretrained(tmp_path / "gpt")).__name__ == "GPT"
    assert type(Generator.from_pretrained(tmp_path / "rar")) is RAR  # the base class picks the family
    with pytest.raises(ConfigError, match="expected 'vfmtok.rar'"):
        RAR.from_pretrained(tmp_path / "gpt")
    with pytest.raises(model_folder.ModelFolderError, match="not found"):
        zoo.from_pretrained(tmp_path / "missing")
