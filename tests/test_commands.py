"""`generate`, `reconstruct` and `summary` on tiny random model folders (seconds, no pipeline run).

The smoke pipeline's real models go through the same commands in tests/test_dvc_smoke.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.commands import generate, reconstruct, summary
from pipeline.formats import prepared
from pipeline.layout import Layout
from tests.helpers import tiny_tokenizer_config
from vfmtok import files, zoo
from vfmtok.tokenizer import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
CLASSES = [{"label": i, "key": k, "name": n} for i, (k, n) in enumerate(
    [("n01", "T-shirt/top"), ("n02", "Trouser"), ("n03", "Ankle boot")])]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A project folder with data/tokenizer (a tiny 32 px vqgan: no backbone), data/generator and classes."""
    root = tmp_path_factory.mktemp("models")
    layout = Layout(root)
    torch.manual_seed(0)
    tok = build_tokenizer(tiny_tokenizer_config("vqgan", vqgan_ch=8, vqgan_mult=[1, 1, 2, 2, 2])).eval()
    tok.save_pretrained(layout.tokenizer)
    gpt = zoo.build("GPT-Tiny", vocab_size=tok.codebook_size, n_tokens=tok.n_tokens, num_classes=len(CLASSES),
                    class_dropout=0.1, token_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # far from uniform: seeds matter
    gpt.save_pretrained(layout.generator, name="GPT-Tiny")
    files.write_json(layout.prepared / prepared.CLASSES, CLASSES)
    return root


def test_classes_resolve_by_number_or_by_name_whatever_the_punctuation(root):
    folder = Layout(root).prepared
    assert generate.resolve_class("2", 3, folder) == (2, "Ankle boot")
    assert generate.resolve_class("ankle-boot", 3, folder) == (2, "Ankle boot")
    assert generate.resolve_class("T-shirt top", 3, folder) == (0, "T-shirt/top")
    assert generate.resolve_class("N02", 3, folder) == (1, "Trouser")  # the class key
    with pytest.raises(generate.GenerateError, match=r"'sock': no such class \(classes: 0=T-shirt/top"):
        generate.resolve_class("sock", 3, folder)
    with pytest.raises(generate.GenerateError, match="knows classes 0..2"):
        generate.resolve_class("3", 3, folder)
    empty = root / "nowhere"
    assert generate.resolve_class("1", 3, empty) == (1, "1")
    with pytest.raises(generate.GenerateError, match="classes.json not found .* as a number 0..2"):
        generate.resolve_class("Trouser", 3, empty)


def test_generate_writes_a_seeded_grid(root, tmp_path, capsys):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert main(["--root", str(root), "generate", "--class", "trouser", "-n", "10", "--out", str(out),
                     "--seed", str(seed), "--cfg", "2.5", "--temperature", "1.2", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "10 samples of class 1 (Trouser), 32 px, cfg 2.5, temperature 1.2, top-k 0, top-p 1, seed 1" \
        in said
    grid = np.asarray(Image.open(a))
    # 8 a row, two rows; cells scaled 4x to 128 px, 2 px padding (scaled too)
    assert grid.shape == (2 * (32 + 2) * 4 + 2 * 4, 8 * (32 + 2) * 4 + 2 * 4, 3)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


def test_generate_draws_as_the_project_params_say_unless_told(root, tmp_path, capsys):
    """Without sampling flags a grid is drawn with params.yaml's ``sample`` settings (as the run's
    samples.png was); a flag overrides its own setting only; no params.yaml: plain sampling."""
    project = tmp_path / "project"
    shutil.copytree(root, project)
    params = yaml.safe_load((REPO / "params" / "base.yaml").read_text())
    params["sample"].update(temperature=0.5, top_k=7, top_p=0.9, cfg_scale=1.5)
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    def said(*flags: str, where=project) -> str:
        assert main(["--root", str(where), "generate", "--class", "1", "-n", "2", "--out",
                     str(tmp_path / "g.png"), "--device", "cpu", *flags]) == 0
        return capsys.readouterr().out

    assert "cfg 1.5, temperature 0.5, top-k 7, top-p 0.9," in said()
    assert "cfg 1.5, temperature 0.9, top-k 7, top-p 0.9," in said("--temperature", "0.9")
    assert "cfg 1, temperature 1, top-k 0, top-p 1," in said(where=root)


def test_generate_samples_from_a_rar_folder_too(root, tmp_path, capsys):
    """``--generator`` takes either family's folder: its config.json says which."""
    gpt = zoo.from_pretrained(Layout(root).generator).config
    rar = zoo.build("RAR-Tiny", vocab_size=gpt.vocab_size, n_tokens=gpt.n_tokens, num_classes=len(CLASSES))
    rar.save_pretrained(tmp_path / "rar", name="RAR-Tiny")
    out = tmp_path / "rar.png"
    assert main(["--root", str(root), "generate", "--class", "0", "-n", "2", "--generator",
                 str(tmp_path / "rar"), "--out", str(out), "--device", "cpu"]) == 0
    assert "2 samples of class 0 (T-shirt/top)" in capsys.readouterr().out and out.is_file()


@pytest.mark.parametrize("args, message", [
    (["--class", "sock"], "no such class"),
    (["--class", "1", "-n", "0"], "-n 0: must be >= 1"),
    (["--class", "1", "--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
    (["--class", "1", "--generator", "/nonexistent/gen"], "/nonexistent/gen/config.json: not found"),
])
def test_generate_bad_input_is_one_line_and_writes_nothing(root, tmp_path, capsys, args, message):
    out = tmp_path / "grid.png"
    assert main(["--root", str(root), "generate", *args, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_generator_folder_under_its_earlier_name_is_one_line_saying_what_to_rename(root, tmp_path, capsys):
    old = tmp_path / "project"
    shutil.copytree(root, old)
    (old / "data" / "generator").rename(old / "data" / "gpt")
    out = tmp_path / "grid.png"
    assert main(["--root", str(old), "generate", "--class", "1", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"mv {old}/data/gpt {old}/data/generator" in err, err
    assert not out.exists()


def _inputs(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)),
        "gray16.png": Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)),
        "palette.png": Image.fromarray(rng.integers(0, 255, (50, 90), dtype=np.uint8)).convert("P"),
        "alpha.png": Image.new("RGBA", (33, 77), (10, 200, 30, 128)),
        "cmyk.jpg": Image.new("CMYK", (64, 48), (0, 128, 255, 0)),
    }
    for name, img in paths.items():
        img.save(folder / name)
    (folder / "sub").mkdir()
    Image.new("L", (20, 20), 128).save(folder / "sub" / "rgb.png")  # same stem as rgb.jpg
    return [folder / n for n in paths] + [folder / "sub" / "rgb.png"]


def test_reconstruct_any_size_and_mode(root, tmp_path, capsys):
    paths = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--root", str(root), "reconstruct", *map(str, paths), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(paths) + 1 and lines[-1] == f"token ids: {out / 'tokens.json'}"
    assert f"{paths[0]} (200x300 RGB -> 32x32 RGB): 4 tokens, PSNR " in lines[0]
    assert "(40x40 I;16 -> 32x32 RGB)" in lines[1] and "(90x50 P -> " in lines[2]
    assert "(33x77 RGBA -> " in lines[3] and "(64x48 CMYK -> " in lines[4] and lines[5].endswith("rgb-2.png")
    tokens = json.loads((out / "tokens.json").read_text())
    assert sorted(tokens) == sorted(map(str, paths))
    assert all(len(t) == 4 and all(0 <= i < 32 for i in t) for t in tokens.values())
    assert sorted(p.name for p in out.glob("*.png")) == ["alpha.png", "cmyk.png", "gray16.png", "palette.png",
                                                          "rgb-2.png", "rgb.png"]
    # The printed PSNR is the reconstruction's against the input as the tokenizer saw it.
    (r,) = reconstruct.reconstruct_images(root, [paths[0]], tmp_path / "again", "cpu")
    seen = reconstruct.read_image(paths[0], 32)[0].astype(np.float64)
    rec = np.asarray(Image.open(r.out), dtype=np.float64)
    assert rec.shape == (32, 32, 3)
    assert r.psnr == pytest.approx(10 * np.log10(255.0**2 / np.mean((seen - rec) ** 2)), abs=1e-9)
    assert r.tokens == tokens[str(paths[0])]  # deterministic


def test_reconstruct_bad_input_is_one_line_and_writes_nothing(root, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    for args, message in (([good, bad], f"{bad}: not an image this can read"),
                          ([tmp_path / "missing.jpg"], "missing.jpg: no such file")):
        assert main(["--root", str(root), "reconstruct", *map(str, args), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not out.exists()
    assert main(["--root", str(tmp_path), "reconstruct", str(good), "--out", str(out)]) == 2
    assert "data/tokenizer/config.json: not found" in capsys.readouterr().err and not out.exists()


def test_summary_reads_any_reports_and_says_what_to_run(tmp_path):
    assert "no results yet: run `dvc repro`" in summary.summary(tmp_path)
    layout = Layout(tmp_path)
    files.write_json(layout.metrics_table("json"), {
        "tokenizer_kind": "vqgan", "tokens_per_image": 16, "gfid": 236.6, "rfid": 231.7, "psnr": 17.25,
        "ssim": 0.41, "codebook_usage": 0.258, "linear_probe_acc": 0.665, "sample_class_acc": 0.47,
        "val_class_acc": 0.835, "fid_samples": 300, "inception_score": None})
    files.write_json(layout.report("train_ar"), {"val_loss": 1.5, "steps": 800})
    grid = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(grid).save(layout.picture("samples"))
    text = summary.summary(tmp_path)
    assert "tokenizer vqgan, 16 tokens per image" in text
    assert "PSNR 17.25 dB, SSIM 0.410, rFID 231.7, codebook usage 25.8%" in text
    assert "gFID 236.6, AR val loss 1.500, steps 800" in text and "(real val images: 83.5%)" in text
    assert "reports/samples.png" in text and "tokenizer_recon.png" not in text  # only what exists
    assert "vfmtok-pipeline compare HEAD try-vqgan" in text and "dvc exp show --md" in text
    assert max(len(line) for line in text.splitlines()) <= 90
