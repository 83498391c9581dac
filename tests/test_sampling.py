"""Sampling, for both generator families: KV cache vs full recompute, greedy/top-k/top-p, seeding
(one generator or per-sample seeds), classifier-free guidance and its schedule, the compiled step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers import assert_equal_to_fp32_rounding
from vfmtok import zoo
from vfmtok.sampling import cfg_scale_at, generate, sample_logits

V, T, C = 64, 16, 10
FAMILIES = ["GPT-Tiny", "RAR-Tiny"]


def make_model(name: str = "GPT-Tiny", **kw):
    """A tiny random model whose logits are far from uniform: the GPT's zero head re-initialised,
    every RAR weight randomised (its adaLN-zero init would leave the blocks as identities)."""
    torch.manual_seed(0)
    model = zoo.build(name, vocab_size=V, n_tokens=T, num_classes=C, class_dropout=0.1,
                             token_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0, **kw)
    with torch.no_grad():
        for p in model.parameters() if name.startswith("RAR") else [model.output.weight]:
            p.normal_(0, 0.2 if p is model.output.weight else 0.1)
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return make_model(request.param)


def greedy_reference(model, labels, n, cfg_scale=1.0):
    """Argmax decoding by re-running the full prefix, written independently of generate()."""
    out = torch.empty(labels.shape[0], 0, dtype=torch.long)
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        for _ in range(n):
            c = model.forward_prefix(labels, out)[:, -1]
            if cfg_scale != 1.0:
                u = model.forward_prefix(null, out)[:, -1]
                c = u + cfg_scale * (c - u)
            out = torch.cat([out, c.argmax(-1, keepdim=True)], dim=1)
    return out


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_kv_cache_logits_match_full_sequence(n_kv_head):
    model = make_model(n_kv_head=n_kv_head)
    labels = torch.tensor([0, 3, 9])
    tokens = torch.randint(0, V, (3, T))
    with torch.no_grad():
        full, _ = model(tokens, labels)  # (B, T, V)
        model.setup_caches(max_batch=4, max_seq_len=T)  # a larger batch than used is fine
        steps = [model.forward_step(torch.tensor([0]), labels=labels)]
        for t in range(1, T):
            steps.append(model.forward_step(torch.tensor([t]), idx=tokens[:, t - 1:t]))
        cached = torch.cat(steps, dim=1)
        # a chunked prefill (class token + 6 tokens at once) then single steps
        model.setup_caches(max_batch=3, max_seq_len=T)
        chunks = [model.forward_step(torch.arange(7), idx=tokens[:, :6], labels=labels)]
        for t in range(7, T):
            chunks.append(model.forward_step(torch.tensor([t]), idx=tokens[:, t - 1:t]))
        chunked = torch.cat(chunks, dim=1)
        model.clear_caches()
        exact, _ = copy.deepcopy(model).double()(tokens, labels)
    assert cached.shape == full.shape == (3, T, V)
    assert full.std() > 0.5  # non-trivial logits
    assert_equal_to_fp32_rounding(cached, full, exact)
    assert_equal_to_fp32_rounding(chunked, full, exact)


def test_forward_step_guards():
    model = make_model()
    with pytest.raises(RuntimeError, match="setup_caches"):
        model.forward_step(torch.tensor([0]), labels=torch.tensor([1]))
    model.setup_caches(1, T)
    with pytest.raises(ValueError, match="position 0"):
        model.forward_step(torch.tensor([3]), labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="input_pos"):
        model.forward_step(torch.tensor([1, 2]), idx=torch.tensor([[1]]))
    model.clear_caches()
    with pytest.raises(ValueError, match="n_tokens"):
        generate(model, torch.tensor([1]), T + 1)


def test_top_k_1_is_greedy_with_and_without_cache(model):
    labels = torch.tensor([0, 1, 2, 7])
    ref = greedy_reference(model, labels, T)
    g = torch.Generator().manual_seed(0)
    cached = generate(model, labels, T, top_k=1, generator=g)
    uncached = generate(model, labels, T, top_k=1, use_kv_cache=False, generator=g)
    zero_temp = generate(model, labels, T, temperature=0.0)
    assert cached.shape == (4, T) and cached.dtype == torch.long
    assert torch.equal(cached, ref) and torch.equal(uncached, ref) and torch.equal(zero_temp, ref)
    assert len(set(map(tuple, ref.tolist()))) > 1  # classes lead to different sequences


def test_seeded_sampling_is_reproducible(model):
    labels = torch.arange(6) % C

    def draw(seed, **kw):
        return generate(model, labels, T, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < V
    # the cache changes nothing but speed: same seed, same samples
    assert torch.equal(a, draw(1, use_kv_cache=False))
    assert torch.equal(draw(3, cfg_scale=2.5), draw(3, cfg_scale=2.5, use_kv_cache=False))


def test_cfg(model):
    labels = torch.tensor([2, 5, 8])
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    # scale 1.0 is guidance off: identical to the default call (no doubled batch)
    assert torch.equal(generate(model, labels, T, cfg_scale=1.0, generator=g()),
                       generate(model, labels, T, generator=g()))
    # scale 0 leaves only the unconditional logits: same draw as sampling the null class
    null = torch.full_like(labels, model.null_class)
    assert torch.equal(generate(model, labels, T, cfg_scale=0.0, generator=g()),
                       generate(model, null, T, generator=g()))
    # greedy guided decoding follows u + s (c - u) exactly
    guided = generate(model, labels, T, cfg_scale=3.0, top_k=1)
    assert torch.equal(guided, greedy_reference(model, labels, T, cfg_scale=3.0))
    assert not torch.equal(guided, greedy_reference(model, labels, T))


def test_top_p_small_keeps_only_top_token(model):
    logits = torch.randn(32, V) * 3
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert torch.equal(sample_logits(logits, top_p=1e-4, generator=g), logits.argmax(-1))
    labels = torch.tensor([1, 4])
    assert torch.equal(generate(model, labels, T, top_p=1e-4, generator=g),
                       greedy_reference(model, labels, T))


def test_top_p_and_top_k_filter_the_right_tokens():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    nucleus = sample_logits(logits, top_p=0.7, generator=g)  # mass 0.5 < 0.7, so add 0.3
    freq = torch.bincount(nucleus, minlength=4).float() / 20000
    assert freq[2:].sum() == 0
    assert freq[0].item() == pytest.approx(0.5 / 0.8, abs=0.02)
    top2 = sample_logits(logits, top_k=2, generator=g)
    assert set(top2.unique().tolist()) == {0, 1}
    plain = torch.bincount(sample_logits(logits, generator=g), minlength=4).float() / 20000
    torch.testing.assert_close(plain, probs, rtol=0, atol=0.02)
    hot = torch.bincount(sample_logits(logits, temperature=0.5, generator=g), minlength=4)
    assert hot[0] / 20000 > 0.6  # lower temperature sharpens
    with pytest.raises(ValueError):
        sample_logits(logits, top_p=0.0)


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_restores_mode_and_frees_caches(name):
    model = make_model(name).train()
    generate(model, torch.tensor([1, 2]), 4, generator=torch.Generator().manual_seed(0))
    assert model.training
    assert all(layer.attention.kv_cache is None for layer in model.layers)
    assert model.causal_mask is None
    assert "causal_mask" not in model.state_dict()


def test_cfg_schedule():
    assert [cfg_scale_at(t, 256, 4.0) for t in (0, 100, 255)] == [4.0, 4.0, 4.0]  # power 0: constant
    ramp = [cfg_scale_at(t, 256, 16.0, 2.75) for t in range(256)]  # RAR-B's published setting
    assert ramp[0] == 1.0 and all(a < b for a, b in zip(ramp, ramp[1:], strict=False)) and ramp[-1] < 16.0
    assert cfg_scale_at(128, 256, 5.0, 1.0) == pytest.approx(3.0)  # half way at p = 1: (1 - cos pi/2) / 2
    assert cfg_scale_at(64, 256, 5.0, 2.0) == pytest.approx(1 + 4 * (1 - math.cos(math.pi / 16)) / 2)


def test_cfg_power_follows_the_schedule(model):
    labels = torch.tensor([2, 5])
    guided = generate(model, labels, T, cfg_scale=4.0, cfg_power=1.5, temperature=0.0)
    out = torch.empty(2, 0, dtype=torch.long)
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        for t in range(T):
            c, u = model.forward_prefix(labels, out)[:, -1], model.forward_prefix(null, out)[:, -1]
            s = 1 + 3.0 * (1 - math.cos(math.pi * (t / T) ** 1.5)) / 2
            out = torch.cat([out, (u + s * (c - u)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(guided, out)
    assert not torch.equal(guided, generate(model, labels, T, cfg_scale=4.0, temperature=0.0))


def test_per_sample_seeds_do_not_depend_on_the_batch(model):
    labels, seeds = torch.tensor([3, 1, 4, 1]), [11, 22, 33, 44]
    batch = generate(model, labels, T, seeds=seeds, cfg_scale=2.0)
    alone = torch.cat([generate(model, labels[i:i + 1], T, seeds=seeds[i:i + 1], cfg_scale=2.0)
                       for i in range(4)])
    assert torch.equal(batch, alone)
    assert torch.equal(batch, generate(model, labels, T, seeds=seeds, cfg_scale=2.0, use_kv_cache=False))
    assert not torch.equal(batch[1], batch[3])  # same class, other seed
    with pytest.raises(ValueError, match="one seed per sample"):
        generate(model, labels, T, seeds=seeds[:2])


def test_inverse_cdf_draws_follow_the_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_logits(logits, uniform=u), minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.02)
    top2 = sample_logits(logits, top_k=2, uniform=u)
    assert set(top2.unique().tolist()) == {0, 1}  # filtered tokens are never drawn
    edge = sample_logits(logits[:2], top_k=2, uniform=torch.tensor([0.0, 1 - 1e-7]))
    assert edge.tolist() == [0, 1]


@pytest.mark.parametrize("name", FAMILIES)
def test_compiled_decode_step_matches_eager_and_traces_once(name):
    """Dynamo traces the decode step once (static cache: the same shapes every step and every call);
    a counting backend stands in for inductor, whose C++ build takes a minute on this CPU."""
    model, graphs = make_model(name), []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    labels, g = torch.tensor([1, 7, 7]), lambda: torch.Generator().manual_seed(5)  # noqa: E731
    eager = generate(model, labels, T, cfg_scale=3.0, generator=g())
    compiled = generate(model, labels, T, cfg_scale=3.0, generator=g(), compile=counting)
    traced = len(graphs)
    again = generate(model, labels, T, cfg_scale=3.0, generator=g(), compile=counting)
    assert torch.equal(compiled, eager) and torch.equal(again, eager)
    assert traced >= 1 and len(graphs) == traced  # no recompile for new caches of the same shape


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FAMILIES)
def test_generate_cuda_bf16_autocast(name):
    model = make_model(name).cuda()
    labels = torch.tensor([0, 1, 2], device="cuda")
    tokens = torch.randint(0, V, (3, T), device="cuda")
    p = model.prefix_len
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        full, _ = model(tokens, labels)
        model.setup_caches(3, model.max_seq_len, dtype=torch.bfloat16)
        steps = [model.forward_step(torch.arange(p, device="cuda"), labels=labels)]
        for t in range(1, T):
            steps.append(model.forward_step(torch.tensor([p + t - 1], device="cuda"),
                                            idx=tokens[:, t - 1:t]))
        model.clear_caches()
        out = generate(model, labels, T, cfg_scale=2.0, cfg_power=1.0, seeds=[1, 2, 3])
        same = generate(model, labels, T, cfg_scale=2.0, cfg_power=1.0, seeds=[1, 2, 3], compile="eager")
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=0.1)
    assert out.shape == (3, T) and out.device.type == "cuda" and out.max() < V
    assert torch.equal(out, same)
