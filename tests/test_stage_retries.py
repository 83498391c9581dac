"""A training task that fails before its first checkpoint and is retried by Prefect ends with
exactly the weights of an uninterrupted run: the retried task rebuilds the model, loss, optimizer
and EMA from the seed (or the last checkpoint), never from what the failed attempt left behind."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.layout import Layout
from pipeline.params.profiles import profile_data
from pipeline.stages import train_ar, train_tokenizer
from pipeline.stages.extract_features import extract_features_flow
from pipeline.stages.prepare import prepare_flow
from pipeline.stages.tokenize import tokenize_flow
from tests.conftest import FASHION_MNIST, REPO

pytestmark = [
    pytest.mark.slow,  # each stage's flow run end to end against Prefect's API
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"),
]


class Flaky(RuntimeError):
    """A transient failure (not a user error): Prefect retries the task."""


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A smoke project up to its tokens (the tokenizer trained once, uninterrupted)."""
    root = tmp_path_factory.mktemp("retry")
    params = profile_data("smoke", REPO)
    params["train_tokenizer"]["checkpoint_every"] = 4  # of 6 steps: the failure at step 1 is before it
    params["train_ar"]["checkpoint_every"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for flow in (prepare_flow, extract_features_flow, train_tokenizer.train_tokenizer_flow, tokenize_flow):
        flow(params_file=str(root / "params.yaml"), root=str(root))
    return root


def _copy_inputs(src, dst, *folders: str):
    dst.mkdir()
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    for name in folders:
        shutil.copytree(src / "data" / name, dst / "data" / name)


def _fail_once_at(monkeypatch, module, step_to_fail: int) -> list[int]:
    """Make the stage's DVCLive logger raise once, while the loop reports ``step_to_fail``."""
    calls: list[int] = []
    real = module.open_live

    def open_live(folder, start_step):
        live = real(folder, start_step)
        log_metric = live.log_metric

        def flaky(name, value, *a, **k):
            if not calls and live.step == step_to_fail:
                calls.append(live.step)
                raise Flaky(f"lost the connection at step {live.step}")
            return log_metric(name, value, *a, **k)

        live.log_metric = flaky
        return live

    monkeypatch.setattr(module, "open_live", open_live)
    return calls


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_retried_tokenizer_task_equals_uninterrupted(tokenized, tmp_path, monkeypatch):
    root = tmp_path / "flaky"
    _copy_inputs(tokenized, root, "prepared", "features")
    calls = _fail_once_at(monkeypatch, train_tokenizer, step_to_fail=1)
    train_tokenizer.train_tokenizer_flow(params_file=str(root / "params.yaml"), root=str(root))
    assert calls == [1]  # it did fail, after two optimizer steps, and Prefect retried it
    _assert_same(_weights(Layout(root).tokenizer), _weights(Layout(tokenized).tokenizer))


def test_retried_gpt_task_equals_uninterrupted(tokenized, tmp_path, monkeypatch):
    clean, root = tmp_path / "clean", tmp_path / "flaky"
    for folder in (clean, root):
        _copy_inputs(tokenized, folder, "prepared", "tokens", "tokenizer")
    train_ar.train_ar_flow(params_file=str(clean / "params.yaml"), root=str(clean))
    calls = _fail_once_at(monkeypatch, train_ar, step_to_fail=1)
    train_ar.train_ar_flow(params_file=str(root / "params.yaml"), root=str(root))
    assert calls == [1]
    _assert_same(_weights(Layout(root).generator), _weights(Layout(clean).generator))
