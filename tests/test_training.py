"""Tests of crc_core.training: the spec (round trip, validation), each method end to end on a
tiny net, checkpoints, and resume-after-interrupt equality (bit for bit on CPU)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from crc_core import training
from crc_core.activations import NoCurvatureError
from crc_core.training import TrainSpec



# Tiny runs: 2-layer width-16 nets, 128 training images, batch 64 (2 steps per epoch).
TINY = dict(widths=(784, 16, 10), epochs=1, batch_size=64, train_subset=128,
            attack_steps=3, pgd_steps=2)
METHOD_SPECS = {
    "standard": dict(method="standard", activation="softplus"),
    "curvature": dict(method="curvature", activation="sigmoid", gamma=0.01),
    "crt": dict(method="crt", activation="softplus", gamma=0.01, rho=1.58),
    "pgd": dict(method="pgd", activation="relu", rho=1.58),
}


def tiny_spec(base: str, **changes) -> TrainSpec:
    """A tiny spec of method ``base`` (see METHOD_SPECS), with ``changes`` applied on top."""
    return TrainSpec(**{**TINY, **METHOD_SPECS[base], **changes})


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# The spec
# ------------------------------------------------------------------------------------------------

def test_spec_round_trip_through_json():
    spec = tiny_spec("crt", lr_schedule="cosine", pgd_step_size=0.1)
    again = TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert isinstance(again.widths, tuple) and again.depth == 2


def test_spec_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown TrainSpec field"):
        TrainSpec.from_dict({**tiny_spec("standard").to_dict(), "momentum": 0.9})


@pytest.mark.parametrize("changes, field, allowed", [
    (dict(method="adam"), "method", "one of"),
    (dict(activation="gelu"), "activation", "one of"),
    (dict(dataset="cifar10"), "dataset", "one of"),
    (dict(method="curvature", gamma=-0.1), "gamma", ">= 0"),
    (dict(method="standard", gamma=0.1), "gamma", "0 for method 'standard'"),
    (dict(method="crt", gamma=0.01), "rho", "> 0 for method 'crt'"),
    (dict(method="crt", gamma=0.01, rho=0.0), "rho", "> 0"),
    (dict(method="pgd", rho=-1.0), "rho", "> 0"),
    (dict(method="standard", rho=1.58), "rho", "None for method"),
    (dict(epochs=0), "epochs", ">= 1"),
    (dict(batch_size=0), "batch_size", ">= 1"),
    (dict(lr=0.0), "lr", "> 0"),
    (dict(lr_schedule="step"), "lr_schedule", "one of"),
    (dict(seed=-1), "seed", ">= 0"),
    (dict(widths=(784, 10)), "widths", "at least one hidden width"),
    (dict(widths=(100, 16, 10)), "widths", "784"),
    (dict(attack_steps=0), "attack_steps", ">= 1"),
    (dict(attack_schedule="bisection"), "attack_schedule", "one of"),
    (dict(pgd_targets="all"), "pgd_targets", "one of"),
    (dict(train_subset=0), "train_subset", "[1, 60000]"),
    (dict(epochs=1.5), "epochs", "an integer"),
    (dict(crt_attack_targets=2), "crt_attack_targets", "applies to 'crt' only"),
    (dict(method="crt", rho=1.58, crt_attack_targets=0), "crt_attack_targets", "[1, 9]"),
    (dict(method="crt", rho=1.58, crt_attack_targets=10), "crt_attack_targets", "[1, 9]"),
    (dict(method="crt", rho=1.58, penalty_bound="theorem5"), "penalty_bound", "one of"),
    (dict(method="crt", rho=1.58, penalty_bound="theorem3", widths=(784, 16, 16, 10)),
     "penalty_bound", "L = 2 only"),
    (dict(method="curvature", gamma=0.01, penalty_bound="theorem3"), "penalty_bound",
     "'crt' with L = 2 only"),
])
def test_bad_spec_values_name_the_field_and_range(changes, field, allowed):
    with pytest.raises(ValueError) as info:
        tiny_spec("standard", **changes)
    message = str(info.value)
    assert f"TrainSpec.{field}=" in message
    assert allowed in message


@pytest.mark.parametrize("changes", [dict(method="curvature", gamma=0.01),
                                     dict(method="crt", gamma=0.01, rho=1.58),
                                     dict(method="pgd", gamma=0.01, rho=1.58)])
def test_relu_with_curvature_raises_no_curvature_error(changes):
    with pytest.raises(NoCurvatureError, match="relu"):
        tiny_spec("standard", activation="relu", **changes)


def test_baseline_methods_are_implemented():
    assert training.is_implemented("coap") and training.is_implemented("crown-ibp")


# ------------------------------------------------------------------------------------------------
# Each method end to end
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHOD_SPECS))
def test_each_method_trains_and_checkpoints(method, tmp_path):
    spec = tiny_spec(method, epochs=2)
    model = training.train(spec, tmp_path / "run", progress=False)
    assert model.widths == list(spec.widths)
    history = training.read_history(tmp_path / "run")
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert math.isfinite(row["loss"]) and 0 <= row["test_accuracy"] <= 1
        if spec.gamma > 0:
            assert row["mean_K"] is not None and row["mean_K"] > 0
        else:
            assert row["mean_K"] is None
    for name in (training.CHECKPOINT, training.BEST, training.LAST, "spec.json", "history.json"):
        assert (tmp_path / "run" / name).is_file()
    assert json.loads((tmp_path / "run" / "spec.json").read_text()) == spec.to_dict()
    # The returned model is the best checkpoint (the paper's rule).
    best_epoch = max(history, key=lambda r: (r["test_accuracy"], -r["epoch"]))["epoch"]
    best = training.load_model(tmp_path / "run", "best")
    assert _states_equal(model.state_dict(), best.state_dict())
    if best_epoch == 2:
        assert _states_equal(best.state_dict(), training.load_model(tmp_path / "run", "last").state_dict())
    assert training.is_trained(spec, tmp_path / "run")


def test_training_reduces_the_loss(tmp_path):
    spec = tiny_spec("standard", epochs=3, train_subset=512)
    training.train(spec, tmp_path / "run", progress=False)
    history = training.read_history(tmp_path / "run")
    assert history[-1]["loss"] < history[0]["loss"]


def test_cosine_schedule_reaches_small_lr(tmp_path):
    spec = tiny_spec("standard", epochs=3, lr_schedule="cosine")
    training.train(spec, tmp_path / "run", progress=False)
    lrs = [row["lr"] for row in training.read_history(tmp_path / "run")]
    assert lrs[0] == spec.lr and lrs[0] > lrs[1] > lrs[2] > 0


# ------------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["crt", "pgd", "curvature"])
def test_resume_after_stop_gives_identical_weights(method, tmp_path):
    spec = tiny_spec(method, epochs=2, gamma=0.01, activation="softplus")
    whole = training.train(spec, tmp_path / "whole", progress=False, select="last")
    training.train(spec, tmp_path / "split", progress=False, until_epoch=1)
    assert len(training.read_history(tmp_path / "split")) == 1
    resumed = training.train(spec, tmp_path / "split", progress=False, select="last")
    assert _states_equal(whole.state_dict(), resumed.state_dict())
    a = [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in training.read_history(tmp_path / "whole")]
    b = [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in training.read_history(tmp_path / "split")]
    assert a == b


def test_resume_after_interrupt_mid_epoch(tmp_path, monkeypatch):
    spec = tiny_spec("crt", epochs=2)
    whole = training.train(spec, tmp_path / "whole", progress=False, select="last")

    real_loss = training._loss
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(spec, tmp_path / "split", progress=False)
    monkeypatch.setattr(training, "_loss", real_loss)
    assert len(training.read_history(tmp_path / "split")) == 1
    resumed = training.train(spec, tmp_path / "split", progress=False, select="last")
    assert _states_equal(whole.state_dict(), resumed.state_dict())


def test_finished_run_is_loaded_not_retrained(tmp_path, monkeypatch):
    spec = tiny_spec("standard")
    first = training.train(spec, tmp_path / "run", progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(training, "_loss", fail)
    again = training.train(spec, tmp_path / "run", progress=False)
    assert _states_equal(first.state_dict(), again.state_dict())


def test_resume_refuses_a_different_spec(tmp_path):
    training.train(tiny_spec("standard"), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different spec"):
        training.train(tiny_spec("standard", lr=2e-3), tmp_path / "run", progress=False)
    # resume=False starts over.
    training.train(tiny_spec("standard", lr=2e-3), tmp_path / "run", progress=False, resume=False)
    assert training.is_trained(tiny_spec("standard", lr=2e-3), tmp_path / "run")


def test_no_temporary_files_left(tmp_path):
    training.train(tiny_spec("standard"), tmp_path / "run", progress=False)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# The CRT attack against k target classes (crt_attack_targets)
# ------------------------------------------------------------------------------------------------

def test_crt_attack_targets_is_written_only_when_not_one():
    assert "crt_attack_targets" not in tiny_spec("crt").to_dict()  # older specs compare equal
    spec = tiny_spec("crt", crt_attack_targets=9)
    d = spec.to_dict()
    assert d["crt_attack_targets"] == 9 and TrainSpec.from_dict(d) == spec


def _crt_batch(k: int, seed: int = 0):
    torch.manual_seed(seed)
    spec = tiny_spec("crt", crt_attack_targets=k)
    from crc_core.models import MLP
    model = MLP(spec.widths, activation="softplus")
    x = torch.rand(6, 784)
    y = torch.arange(6) % 10
    with torch.no_grad():
        logits0 = model(x)
    return model, x, y, logits0, spec


def test_crt_loss_with_one_target_is_the_runner_up_loss():
    model, x, y, logits0, spec = _crt_batch(1)
    from crc_core.checks import runner_up
    x_att = training.crt_attack(model, x, y, runner_up(logits0, y), spec).x
    expected = torch.nn.functional.cross_entropy(model(x_att), y)
    got = training._crt_loss_k_targets(model, x, y, logits0, spec, None)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # The spec's default path (k = 1) is the same loss.
    loss, _, _ = training._loss(model, x, y, spec.replace(gamma=0.0), 0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


class _FixedBounds:
    """A stand-in for the training-time curvature estimate: the same (m, M) for every pair and
    batch, so attacks batched differently solve the same problems."""

    def bounds(self, model, y, t):
        return torch.full(y.shape, -0.5, dtype=torch.float64), torch.full(y.shape, 0.5, dtype=torch.float64)


def test_crt_loss_against_every_class_is_the_worst_of_the_per_target_attacks():
    model, x, y, logits0, spec = _crt_batch(9)
    from crc_core.checks import largest_other_classes
    T = largest_other_classes(logits0, y, 9)
    per_target = []
    for j in range(9):
        x_att = training.crt_attack(model, x, y, T[:, j], spec, _FixedBounds()).x
        assert ((x_att - x).norm(dim=1) <= spec.rho * (1 + 1e-5)).all()
        per_target.append(torch.nn.functional.cross_entropy(model(x_att), y, reduction="none"))
    per_target = torch.stack(per_target, 1)
    expected = per_target.max(1).values.mean()
    got = training._crt_loss_k_targets(model, x, y, logits0, spec, _FixedBounds())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The worst of 9 is at least the runner-up's (column 0), strictly somewhere on this batch.
    one = training._crt_loss_k_targets(model, x, y, logits0, spec.replace(crt_attack_targets=1),
                                       _FixedBounds())
    torch.testing.assert_close(one, per_target[:, 0].mean(), rtol=1e-5, atol=1e-6)
    assert float(got.detach()) > float(one.detach())


def test_crt_with_three_targets_trains_and_resumes_bit_for_bit(tmp_path):
    spec = tiny_spec("crt", epochs=2, crt_attack_targets=3)
    whole = training.train(spec, tmp_path / "whole", progress=False, select="last")
    assert json.loads((tmp_path / "whole" / "spec.json").read_text())["crt_attack_targets"] == 3
    training.train(spec, tmp_path / "split", progress=False, until_epoch=1)
    resumed = training.train(spec, tmp_path / "split", progress=False, select="last")
    assert _states_equal(whole.state_dict(), resumed.state_dict())
    with pytest.raises(ValueError, match="different spec"):
        training.train(spec.replace(crt_attack_targets=1), tmp_path / "whole", progress=False)


# ------------------------------------------------------------------------------------------------
# Theorem 3's bound as the penalty (penalty_bound = "theorem3")
# ------------------------------------------------------------------------------------------------

def test_penalty_bound_is_written_only_when_not_the_papers():
    assert "penalty_bound" not in tiny_spec("crt").to_dict()   # older specs compare equal
    spec = tiny_spec("crt", penalty_bound="theorem3")
    d = spec.to_dict()
    assert d["penalty_bound"] == "theorem3" and TrainSpec.from_dict(d) == spec


def test_theorem3_penalty_is_the_bound_and_its_gradient_the_eigenvalues():
    from crc_core import curvature
    from crc_core.models import MLP
    torch.manual_seed(0)
    model = MLP([784, 24, 10], activation="softplus").double()
    y, t = torch.tensor([0, 3, 0, 7]), torch.tensor([1, 5, 1, 2])
    estimator = curvature.CurvatureEstimator(iters=60, tol=0.0)
    for _ in range(3):                                  # the warm start converges
        K3 = estimator.theorem3_penalty(model, y, t)
    m, M = curvature.theorem3_bounds(model, y, t)        # rigorous: a hair above the truth
    torch.testing.assert_close(K3.detach(), torch.maximum(-m, M).to(K3.dtype), rtol=1e-6, atol=0)
    assert (K3.detach() <= torch.maximum(-m, M) + 1e-12).all()
    assert K3[0] == K3[2]                                # one value per distinct pair
    assert (K3.detach() < curvature.theorem4_bound(model, y, t)).all()
    # Its gradient is that of the exact extreme eigenvalue (Hellmann-Feynman).
    K3.sum().backward()
    got = [w.grad.clone() for w in model.weights]
    model.zero_grad()
    W1, W2 = model.weights
    exact = []
    for yi, ti in zip(y.tolist(), t.tolist()):
        w = W2[yi] - W2[ti]
        P = W1.t() @ torch.diag((0.25 * w).clamp(min=0)) @ W1
        N = W1.t() @ torch.diag((-0.25 * w).clamp(min=0)) @ W1
        exact.append(torch.maximum(torch.linalg.eigvalsh(P)[-1], torch.linalg.eigvalsh(N)[-1]))
    torch.stack(exact).sum().backward()
    for g, w in zip(got, model.weights):
        torch.testing.assert_close(g, w.grad, rtol=1e-5, atol=1e-8)


def test_theorem3_penalty_rejects_deeper_nets_and_relu():
    from crc_core import curvature
    from crc_core.activations import NoCurvatureError
    from crc_core.models import MLP
    estimator = curvature.CurvatureEstimator()
    with pytest.raises(ValueError, match="L = 2"):
        estimator.theorem3_penalty(MLP([784, 8, 8, 10], activation="softplus"), 0, 1)
    with pytest.raises(NoCurvatureError):
        estimator.theorem3_penalty(MLP([784, 8, 10], activation="relu"), 0, 1)


def test_crt_with_theorem3_penalty_trains_and_resumes_bit_for_bit(tmp_path):
    spec = tiny_spec("crt", epochs=2, penalty_bound="theorem3", gamma=0.05)
    whole = training.train(spec, tmp_path / "whole", progress=False, select="last")
    history = training.read_history(tmp_path / "whole")
    assert all(row["mean_K"] is not None and row["mean_K"] > 0 for row in history)
    training.train(spec, tmp_path / "split", progress=False, until_epoch=1)
    resumed = training.train(spec, tmp_path / "split", progress=False, select="last")
    assert _states_equal(whole.state_dict(), resumed.state_dict())
    paper = training.train(spec.replace(penalty_bound="theorem4"), tmp_path / "paper",
                           progress=False, select="last")
    assert not _states_equal(whole.state_dict(), paper.state_dict())


def test_theorem3_penalty_over_all_targets_is_the_largest_per_target_one(tmp_path):
    from crc_core import curvature
    model, x, y, logits0, _ = _crt_batch(1)
    model = model.double()
    logits0 = logits0.double()
    estimator = curvature.CurvatureEstimator(iters=60, tol=0.0)
    for _ in range(3):                                   # the warm start converges
        got = training._theorem3_penalty_all_targets(model, y, logits0, estimator)
    per_target = torch.stack([estimator.theorem3_penalty(model, y, (y + j) % 10)
                              for j in range(1, 10)], 1)
    torch.testing.assert_close(got, per_target.max(1).values, rtol=1e-6, atol=0)
    spec = tiny_spec("crt", penalty_bound="theorem3-all")
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    training.train(spec, tmp_path / "run", progress=False)
    assert training.read_history(tmp_path / "run")[0]["mean_K"] > 0
