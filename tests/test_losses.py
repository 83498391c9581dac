"""Tokenizer image losses: pixel MSE, backbone feature loss, LPIPS from local files, hinge GAN."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import vgg

from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig, LossConfig
from vfmtok.discriminator import Discriminator, hinge_d_loss, hinge_g_loss, non_saturating_g_loss
from vfmtok.losses import TokenizerLoss, feature_loss
from vfmtok.lpips import LPIPS, VGG_CHANNELS

SIZE = 64


def _images(b: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1  # [-1, 1]


def _natural_images(size: int = SIZE) -> torch.Tensor:
    """Four real photos (skimage) as [-1, 1] batches of (4, 3, size, size)."""
    import skimage.data

    imgs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    out = [torch.from_numpy(a).permute(2, 0, 1).float()[None] / 127.5 - 1 for a in imgs]
    return torch.cat([F.interpolate(x, size=(size, size), mode="bilinear", antialias=True) for x in out])


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread():
    """The tensors here are tiny: one thread costs little on an idle machine, while on the shared
    2-core box two spinning OpenMP threads made this module ~10x slower (97 s vs 9 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def effnet():
    return build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=SIZE))


def _loss(backbone, **over) -> TokenizerLoss:
    torch.manual_seed(0)
    return TokenizerLoss(LossConfig(**over), backbone)


# ----------------------------------------------------------------------------- config, pixel


def test_loss_config_defaults_and_ranges():
    cfg = LossConfig()
    assert (cfg.pixel_weight, cfg.perceptual, cfg.gan_weight, cfg.gan_start) == (2.0, "backbone", 0.5, 0.5)
    ranged = {f.name: f.metadata for f in dataclasses.fields(LossConfig) if f.metadata}
    assert {"pixel_weight", "perceptual_weight", "gan_weight", "gan_start", "disc_lr"} <= set(ranged)
    assert (ranged["gan_start"]["min"], ranged["gan_start"]["max"]) == (0, 1)


def test_pixel_loss_is_weighted_mse_by_hand():
    loss = _loss(None, perceptual="none", gan_weight=0.0)
    images, recon = _images(2, 16, seed=1), _images(2, 16, seed=2)
    out = loss.generator_losses(images, recon, progress=1.0)
    assert set(out) == {"pixel", "perceptual", "gan"}
    by_hand = 2.0 * ((recon - images) ** 2).sum() / recon.numel()
    torch.testing.assert_close(out["pixel"], by_hand)
    assert out["perceptual"].item() == 0.0 and out["gan"].item() == 0.0
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    assert loss.discriminator_loss(images, recon, progress=1.0) is None


def test_backbone_is_required_for_backbone_perceptual_and_gan():
    with pytest.raises(ValueError, match="backbone"):
        TokenizerLoss(LossConfig(perceptual="backbone", gan_weight=0.0), None)
    with pytest.raises(ValueError, match="backbone"):
        TokenizerLoss(LossConfig(perceptual="none", gan_weight=0.5), None)


# ----------------------------------------------------------------------------- backbone perceptual


def test_feature_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    p = [torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    t = [torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    total = 0.0
    for a, b in zip(p, t, strict=True):  # per level: sum over channels, mean over (batch, space)
        a = a / a.pow(2).sum(1, keepdim=True).sqrt()
        b = b / b.pow(2).sum(1, keepdim=True).sqrt()
        total += sum(float(((a[n, :, i, j] - b[n, :, i, j]) ** 2).sum())
                     for n in range(a.shape[0]) for i in range(a.shape[2]) for j in range(a.shape[3])
                     ) / (a.shape[0] * a.shape[2] * a.shape[3])
    torch.testing.assert_close(feature_loss(p, t), torch.tensor(total))
    # opposite unit vectors are the maximum, 4 per position, on the LPIPS scale (not 1/C of it)
    x = torch.ones(1, 6, 2, 2)
    assert feature_loss([x], [-x]).item() == pytest.approx(4.0)


def test_backbone_perceptual_zero_on_identity_positive_otherwise(effnet):
    loss = _loss(effnet, perceptual="backbone", perceptual_weight=1.5, gan_weight=0.0)
    images = _natural_images()
    same = loss.generator_losses(images, images.clone(), progress=0.0)["perceptual"]
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    noisy = (images + 0.3 * _images(4, seed=5)).clamp(-1, 1)
    near = loss.generator_losses(images, noisy, progress=0.0)["perceptual"].item()
    far = loss.generator_losses(images, _images(4, seed=6), progress=0.0)["perceptual"].item()
    assert 0 < near < far


def test_backbone_perceptual_gradient_reaches_recon_not_backbone(effnet):
    loss = _loss(effnet, perceptual="backbone", gan_weight=0.0)
    images = _natural_images()
    recon = (images + 0.2 * _images(4, seed=7)).requires_grad_(True)
    loss.generator_losses(images, recon, progress=0.0)["perceptual"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in effnet.parameters())


# ----------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random VGG16 trunk + random positive LPIPS heads in the torchvision / lpips layouts."""
    torch.manual_seed(0)
    trunk = vgg.make_layers(vgg.cfgs["D"])  # torchvision's vgg16().features, randomly initialised
    sd = {k: v.clone() for k, v in trunk.state_dict().items()}
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate(VGG_CHANNELS)}
    d = tmp_path_factory.mktemp("lpips")
    torch.save({f"features.{k}": v for k, v in sd.items()}, d / "vgg16.pth")  # torchvision key layout
    save_file(sd, str(d / "vgg16_features.safetensors"))  # features-only layout
    torch.save(lin, d / "vgg.pth")
    return dict(
        dir=d,
        vgg=str(d / "vgg16.pth"),
        vgg_st=str(d / "vgg16_features.safetensors"),
        lin=str(d / "vgg.pth"),
        sd=sd,
        lin_sd=lin,
    )


def _lpips_reference(x, y, sd, lin_sd):
    """LPIPS step by step with explicit conv ops: VGG16 blocks of 2, 2, 3, 3, 3 convs, tapping each
    block's last relu, pooling between blocks."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = sorted({int(k.split(".")[0]) for k in sd})  # conv layer indices in order
    weights = [(sd[f"{i}.weight"], sd[f"{i}.bias"]) for i in convs]

    def taps(img):
        h, out, it = (img - shift) / scale, [], iter(weights)
        for block, n_convs in enumerate((2, 2, 3, 3, 3)):
            if block:
                h = F.max_pool2d(h, 2)
            for _ in range(n_convs):
                w, b = next(it)
                h = F.relu(F.conv2d(h, w, b, padding=1))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y), strict=True)):
        nx = fx / (torch.sqrt((fx**2).sum(1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy**2).sum(1, keepdim=True)) + 1e-10)
        d = F.conv2d((nx - ny) ** 2, lin_sd[f"lin{k}.model.1.weight"])  # (B, 1, H, W)
        total += d.mean(dim=(1, 2, 3))
    return total


def test_lpips_matches_step_by_step_reference(lpips_files):
    f = lpips_files
    x, y = _images(2, 32, seed=8), _images(2, 32, seed=9)
    ref = _lpips_reference(x, y, f["sd"], f["lin_sd"])
    got = LPIPS(f["vgg"], f["lin"])(x, y)
    assert got.shape == (2,) and (ref > 0).all()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(LPIPS(f["vgg_st"], f["lin"])(x, y), got)  # both file layouts agree


def test_lpips_identity_zero_symmetric_and_differentiable(lpips_files):
    f = lpips_files
    net = LPIPS(f["vgg"], f["lin"])
    x, y = _images(3, 32, seed=10), _images(3, 32, seed=11)
    torch.testing.assert_close(net(x, x), torch.zeros(3), rtol=0, atol=1e-7)
    torch.testing.assert_close(net(x, y), net(y, x))
    assert not any(p.requires_grad for p in net.parameters())
    loss = TokenizerLoss(
        LossConfig(
            perceptual="lpips",
            perceptual_weight=2.0,
            gan_weight=0.0,
            lpips_vgg_weights=f["vgg"],
            lpips_lin_weights=f["lin"],
        ),
        None,
    )
    recon = y.clone().requires_grad_(True)
    term = loss.generator_losses(x, recon, progress=0.0)["perceptual"]
    torch.testing.assert_close(term, 2.0 * net(recon, x).mean())
    term.backward()
    assert recon.grad.abs().sum() > 0


def test_lpips_missing_or_bad_files_error(lpips_files, tmp_path):
    f = lpips_files
    missing = str(tmp_path / "nowhere" / "vgg16.pth")
    with pytest.raises(FileNotFoundError, match="nowhere/vgg16.pth"):
        LPIPS(missing, f["lin"])
    with pytest.raises(FileNotFoundError, match="no_lin.pth"):
        LPIPS(f["vgg"], str(tmp_path / "no_lin.pth"))
    with pytest.raises(ValueError, match="lpips_vgg_weights.*needs both LPIPS weight files"):
        TokenizerLoss(LossConfig(perceptual="lpips", gan_weight=0.0), None)  # the config says so first
    bad = dict(f["lin_sd"])
    bad["lin2.model.1.weight"] = torch.rand(1, 128, 1, 1)
    torch.save(bad, tmp_path / "bad_lin.pth")
    with pytest.raises(ValueError, match=r"lin2.*\(1, 256, 1, 1\)"):
        LPIPS(f["vgg"], str(tmp_path / "bad_lin.pth"))
    save_file({"0.weight": f["sd"]["0.weight"]}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        LPIPS(str(tmp_path / "partial.safetensors"), f["lin"])


# ----------------------------------------------------------------------------- GAN


def test_gan_is_off_before_gan_start(effnet):
    loss = _loss(effnet, perceptual="none", gan_start=0.5)
    images, recon = _natural_images(), _images(4, seed=12).requires_grad_(True)
    out = loss.generator_losses(images, recon, progress=0.49)
    assert out["gan"].item() == 0.0 and not out["gan"].requires_grad
    assert loss.discriminator_loss(images, recon, progress=0.49) is None
    assert loss.generator_losses(images, recon, progress=0.5)["gan"].item() != 0.0
    assert loss.discriminator_loss(images, recon, progress=0.5) is not None
    off = _loss(effnet, perceptual="none", gan_weight=0.0, gan_start=0)  # weight 0: GAN off for good
    assert off.discriminator_loss(images, recon, progress=1.0) is None


def test_gan_losses_on_hand_made_logits(effnet, monkeypatch):
    loss = _loss(effnet, perceptual="none", gan_weight=0.5, gan_start=0, gan_loss="hinge")
    images = torch.full((1, 3, SIZE, SIZE), 0.5)
    recon = torch.full((1, 3, SIZE, SIZE), -0.5)
    real = [torch.tensor([0.5, 2.0, -1.0]).view(1, 1, 1, 3), torch.tensor([3.0]).view(1, 1, 1, 1)]
    fake = [torch.tensor([-2.0, 0.0, 1.0]).view(1, 1, 1, 3), torch.tensor([-0.5]).view(1, 1, 1, 1)]

    def fake_disc(x, levels=None):
        return real if x.mean() > 0 else fake

    monkeypatch.setattr(loss.discriminator, "forward", fake_disc)
    # level 0: real relu(1-[.5,2,-1]) = [.5,0,2] -> 5/6; fake relu(1+[-2,0,1]) = [0,1,2] -> 1
    # level 1: real relu(1-3) = 0; fake relu(1-.5) = .5. D = mean(5/6 + 1, 0 + .5) = 7/6
    d = loss.discriminator_loss(images, recon, progress=0.0)
    assert d.item() == pytest.approx(7 / 6)
    # G: -mean(mean([-2,0,1]), -0.5) = -mean(-1/3, -1/2) = 5/12, times gan_weight 0.5
    g = loss.generator_losses(images, recon, progress=0.0)["gan"]
    assert g.item() == pytest.approx(0.5 * 5 / 12)
    assert hinge_d_loss(real, fake).item() == pytest.approx(7 / 6)
    assert hinge_g_loss(fake).item() == pytest.approx(5 / 12)
    # non-saturating G: mean over levels of mean(softplus(-D(fake))) = -log sigmoid(D(fake))
    sp = lambda v: math.log1p(math.exp(-v))  # noqa: E731
    expected = ((sp(-2.0) + sp(0.0) + sp(1.0)) / 3 + sp(-0.5)) / 2
    assert non_saturating_g_loss(fake).item() == pytest.approx(expected)
    loss.cfg.gan_loss = "non_saturating"
    g = loss.generator_losses(images, recon, progress=0.0)["gan"]
    assert g.item() == pytest.approx(0.5 * expected)


def test_spectral_norm_bounds_the_heads(effnet):
    with_sn = _loss(effnet, perceptual="none", gan_start=0, disc_spectral_norm=True).discriminator
    conv = with_sn.heads[0].net[0]
    assert hasattr(conv, "parametrizations")
    for _ in range(20):  # power iterations converge in train mode
        with_sn.heads[0](torch.randn(2, 40, 8, 8))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=0.05)
    plain = _loss(effnet, perceptual="none", gan_start=0, disc_spectral_norm=False).discriminator
    assert not hasattr(plain.heads[0].net[0], "parametrizations")


def test_discriminator_shapes_and_trainable_parameters(effnet):
    loss = _loss(effnet, perceptual="none", gan_start=0)
    disc = loss.discriminator
    assert isinstance(disc, Discriminator)
    logits = disc(_images(2))
    assert [tuple(t.shape) for t in logits] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    trainable = [p for p in loss.parameters() if p.requires_grad]
    heads = list(disc.parameters())
    assert len(trainable) == len(heads) > 0 and all(a is b for a, b in zip(trainable, heads, strict=True))
    assert not any(p is q for p in heads for q in effnet.parameters())  # trunk is not in D's params


def test_d_loss_gradient_reaches_only_the_heads(effnet):
    loss = _loss(effnet, perceptual="none", gan_start=0)
    images = _natural_images()
    recon = _images(4, seed=13).requires_grad_(True)
    loss.discriminator_loss(images, recon, progress=0.0).backward()
    for p in loss.discriminator.parameters():
        assert p.grad is not None
    assert sum(p.grad.abs().sum() for p in loss.discriminator.parameters()) > 0
    assert recon.grad is None
    assert all(p.grad is None for p in effnet.parameters())


def test_g_loss_gradient_reaches_recon_not_heads(effnet):
    loss = _loss(effnet, perceptual="backbone", gan_start=0)
    images = _natural_images()
    recon = _images(4, seed=14).requires_grad_(True)
    out = loss.generator_losses(images, recon, progress=0.0)
    out["gan"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())  # no stale D grads
    assert all(p.requires_grad for p in loss.discriminator.parameters())  # restored after the G pass
    assert all(p.grad is None for p in effnet.parameters())


def test_discriminator_steps_lower_the_hinge_loss(effnet):
    loss = _loss(effnet, perceptual="none", gan_start=0, disc_lr=1e-3)
    opt = torch.optim.Adam(loss.discriminator.parameters(), lr=loss.cfg.disc_lr)
    real = _natural_images()
    noise = _images(4, seed=15)
    history = []
    for _ in range(12):
        d = loss.discriminator_loss(real, noise, progress=0.0)
        opt.zero_grad(set_to_none=True)
        d.backward()
        opt.step()
        history.append(d.item())
    assert history[0] > 1.0  # untrained heads: logits near 0, hinge near 2
    assert history[-1] < 0.5 * history[0]
    # the learned heads rank unseen real vs noise correctly on average
    with torch.no_grad():
        r = torch.stack([t.mean() for t in loss.discriminator(_natural_images().flip(-1))]).mean()
        f = torch.stack([t.mean() for t in loss.discriminator(_images(4, seed=16))]).mean()
    assert r > f


def test_precomputed_image_levels_give_the_same_losses(effnet):
    loss = _loss(effnet, perceptual="backbone", gan_start=0)
    images, recon = _natural_images(), _images(4, seed=18)
    levels = effnet(images).levels
    a = loss.generator_losses(images, recon, progress=0.0)
    b = loss.generator_losses(images, recon, progress=0.0, image_levels=levels)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    torch.testing.assert_close(
        loss.discriminator_loss(images, recon, progress=0.0),
        loss.discriminator_loss(images, recon, progress=0.0, image_levels=levels),
    )


def test_state_dict_holds_only_the_discriminator_and_round_trips(effnet):
    loss = _loss(effnet, perceptual="backbone", gan_start=0)
    sd = loss.state_dict()
    assert sd and all(k.startswith("discriminator.heads.") for k in sd)
    other = _loss(effnet, perceptual="backbone", gan_start=0)
    with torch.no_grad():
        for p in other.discriminator.parameters():
            p.add_(1.0)
    other.load_state_dict(sd)
    for a, b in zip(loss.discriminator.parameters(), other.discriminator.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="unexpected"):
        other.load_state_dict({**sd, "backbone.x": torch.zeros(1)})


# ----------------------------------------------------------------------------- mixed precision


def _check_autocast(device: str, backbone) -> None:
    loss = _loss(backbone, perceptual="backbone", gan_start=0).to(device)
    images = _natural_images().to(device)
    recon = (images + 0.1 * _images(4, seed=17).to(device)).requires_grad_(True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = loss.generator_losses(images, recon, progress=0.0)
        d = loss.discriminator_loss(images, recon, progress=0.0)
    for v in [*out.values(), d]:
        assert v.dtype == torch.float32 and torch.isfinite(v)
    sum(out.values()).backward()
    d.backward()
    assert torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0


def test_losses_fp32_under_cpu_bf16_autocast(effnet):
    _check_autocast("cpu", effnet)


@pytest.mark.cuda
def test_losses_fp32_under_cuda_bf16_autocast():
    bb = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=SIZE)).cuda()
    _check_autocast("cuda", bb)
