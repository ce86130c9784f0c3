"""Tests of crc_core.evaluation: the per-image tables, the summary's arithmetic (recomputed here
independently from the stored per-image arrays, on a smoke run and on every committed results
file), sound rounding, the soundness audit, and ReLU nets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from crc_core import MLP, evaluation, store
from crc_core.runs import EVAL_RADII, PRESETS
from crc_core.training import TrainSpec

SMOOTH_RUN = "mnist-sigmoid-2x1024-crt-g0.01-r1.58"      # 2 layers, Table 5: local bounds, CROWN
BASELINE_RUN = "mnist-relu-2x1024-crown-ibp-r1.58"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    out = {}
    for name in (SMOOTH_RUN, BASELINE_RUN):
        out[name] = store.run_experiment(name, "smoke", results_dir=root / "results",
                                         runs_dir=root / "runs", progress=False)
    return out


# ------------------------------------------------------------------------------------------------
# The arithmetic, recomputed independently
# ------------------------------------------------------------------------------------------------

def _count(flags):
    return sum(bool(f) for f in flags), len(flags)


def _expected_proportions(result):
    """Every proportion of a results file, counted here from its per-image arrays."""
    test, sub = result["per_test_image"], result["per_image"]
    correct = [p == l for p, l in zip(test["predicted"], test["label"])]
    out = {"clean_accuracy": _count(correct)}
    for key, col in test.items():
        kind, _, rest = key.partition("/")
        if kind == "radius":
            for rho in EVAL_RADII:
                out[f"certified_accuracy/{rest}/{rho:g}"] = _count(
                    [c and r is not None and r >= rho for c, r in zip(correct, col)])
        elif kind == "certified":
            sampled = test.get(f"sampled/{rest.split('/')[1]}", [True] * len(col))
            out[f"certified_accuracy/{rest}"] = _count(
                [c and f for c, f, s in zip(correct, col, sampled) if s])
    for key, col in sub.items():
        kind, _, rest = key.partition("/")
        if kind == "radius" or kind == "paper_radius":
            tname, bounds = rest.split("/") if kind == "radius" else (rest, "paper")
            for rho in EVAL_RADII:
                flags = [r is not None and r >= rho for r in col]
                direct = sub.get(f"certified/{tname}/{bounds}/{rho:g}")
                if direct is not None:
                    flags = [a or b for a, b in zip(flags, direct)]
                out[f"certified_fraction/{tname}/{bounds}/{rho:g}"] = _count(flags)
        elif kind == "certified":
            tname, bounds, rk = rest.split("/")
            if f"radius/{tname}/{bounds}" not in sub:
                out[f"certified_fraction/{rest}"] = _count(col)
        elif kind == "tight":
            out[f"certificate_success/{rest}"] = _count(col)
        elif kind == "paper_counted":
            out[f"paper_counted_fraction/{rest}"] = _count(col)
        elif kind == "attack_tight":
            out[f"attack_success/{rest}"] = _count(col)
        elif kind == "pgd_robust":
            out[f"robust_fraction_pgd/{rest}"] = _count(col)
    return out


def _check_arithmetic(result):
    metrics = result["metrics"]
    expected = _expected_proportions(result)
    stored = {k: v for k, v in metrics.items() if isinstance(v, dict) and v.get("count") is not None}
    assert set(stored) == set(expected), set(stored) ^ set(expected)
    for key, (k, n) in expected.items():
        entry = stored[key]
        assert (entry["count"], entry["n"]) == (k, n), key
        assert entry["value"] == k / n, key
        lo, hi = entry["ci95"]
        assert lo <= entry["value"] <= hi, key
    clean = metrics["clean_accuracy"]["value"]
    for key, entry in metrics.items():
        if key.startswith("robust_accuracy_pgd/"):
            frac = metrics[key.replace("robust_accuracy_pgd", "robust_fraction_pgd")]["value"]
            assert entry["value"] == pytest.approx(frac * clean, rel=1e-12), key
            assert entry["count"] is None
    test = result["per_test_image"]
    assert metrics["float64_decisions_differ"] == sum(
        a != b for a, b in zip(test["predicted"], test["predicted64"]))
    for key, col in result["per_image"].items():
        if key.startswith("radius/"):
            name = "mean_certificate/" + key.split("/", 1)[1]
            assert metrics[name] == pytest.approx(sum(col) / len(col), rel=1e-12), name


def test_every_proportion_equals_what_the_per_image_arrays_give(smoke_results):
    for result in smoke_results.values():
        _check_arithmetic(result)
    smooth = smoke_results[SMOOTH_RUN]["metrics"]
    assert "certified_accuracy/all-classes/global/1.58" in smooth
    assert "certified_fraction/runner-up/local/0.5" in smooth
    assert "certified_accuracy/all-classes/crown/1.58" in smoke_results[BASELINE_RUN]["metrics"]


def test_committed_results_files_are_consistent():
    files = sorted((REPO / "results").glob("*/*.json")) + \
        sorted((REPO / "results").glob("*/tuning/*.json"))     # crc_core.tuning's tries
    for path in files:
        result = json.loads(path.read_text())
        assert result["schema"] == store.RESULTS_SCHEMA, path
        _check_arithmetic(result)
        audit = result["audit"]
        if audit is not None:
            assert audit["violations"] == 0, path


def test_summary_counts_radius_at_least_rho():
    test = {"label": [0, 1, 2, 3], "predicted": [0, 1, 2, 0], "predicted64": [0, 1, 2, 0],
            "radius/all-classes/global": [1.58, 1.57999, 2.0, 0.0]}
    sub = {"label": [0, 1], "runner_up": [1, 0], "radius/runner-up/global": [1.58, 0.4],
           "tight/runner-up/global": [True, False]}
    m = evaluation.summarize(test, sub)
    assert m["clean_accuracy"]["count"] == 3
    assert m["certified_accuracy/all-classes/global/1.58"]["count"] == 2     # 1.58 and 2.0
    assert m["certified_accuracy/all-classes/global/0.5"]["count"] == 3
    assert m["certified_fraction/runner-up/global/1.58"]["count"] == 1
    assert m["certificate_success/runner-up/global"]["count"] == 1


# ------------------------------------------------------------------------------------------------
# Rounding, the audit, ReLU nets
# ------------------------------------------------------------------------------------------------

def test_radii_are_rounded_down_and_upper_bounds_up():
    values = torch.tensor([1.579999999, 1.58000001, 0.123456789, 2.0, float("nan")], dtype=torch.float64)
    down = evaluation.round_down(values)
    up = evaluation.round_up(values)
    assert down[:4] == [1.57999, 1.58, 0.12345, 2.0] and down[4] is None
    assert up[:4] == [1.58, 1.58001, 0.12346, 2.0]
    for v, d, u in zip(values[:4].tolist(), down, up):
        assert d <= v <= u


def test_stored_radii_never_exceed_the_computed_ones(smoke_results):
    result = smoke_results[SMOOTH_RUN]
    for key, col in result["per_image"].items():
        if key.startswith("radius/"):
            assert all(r == math.floor(r * 1e5 + 1e-6) / 1e5 for r in col), key


def test_the_audit_finds_violations_of_a_false_certificate():
    torch.manual_seed(0)
    model = MLP([784, 32, 10], "softplus")
    X = torch.rand(8, 784)
    Y = model(X).argmax(1)
    false_radius = torch.full((8,), 20.0, dtype=torch.float64)   # far beyond the boundary
    out = evaluation.soundness_audit(model, X, Y, false_radius, restarts=2, steps=20)
    assert out["images"] == 8 and out["pairs"] == 16
    assert out["violations"] > 0 and len(out["violating_indices"]) == out["violations"]
    none = evaluation.soundness_audit(model, X, Y, torch.zeros(8, dtype=torch.float64),
                                      restarts=2, steps=20)
    assert none["images"] == 0 and none["violations"] == 0


def test_smoke_audit_is_clean(smoke_results):
    audit = smoke_results[SMOOTH_RUN]["audit"]
    assert audit["violations"] == 0 and audit["images"] > 0
    assert audit["pairs"] == audit["images"] * PRESETS["smoke"].audit_restarts
    assert smoke_results[BASELINE_RUN]["audit"] is None


def test_relu_net_evaluation_skips_curvature():
    torch.manual_seed(0)
    model = MLP([784, 16, 10], "relu")
    spec = TrainSpec(widths=(784, 16, 10), activation="relu", method="standard", epochs=1)
    out = evaluation.evaluate(model, spec, PRESETS["smoke"], progress=False)
    m = out["metrics"]
    assert m["K_ub"] is None and m["K_lb"] is None and out["audit"] is None
    assert not any(key.startswith(("certified_", "attack_success", "certificate_success"))
                   for key in m)
    assert "robust_fraction_pgd/runner-up/0.5" in m
    with pytest.raises(ValueError, match="crown_mode"):
        evaluation.evaluate(model, spec, PRESETS["smoke"], progress=False, crown_mode="fast")


# --------------------------------------------------------------------------------------
# evaluation_subset
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(123)
    model = nn.Linear(784, 10)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 784, generator=gen))
        model.bias.zero_()
    X = torch.rand(3000, 784, generator=gen)
    with torch.no_grad():
        Y = model(X).argmax(1)
    wrong = torch.rand(3000, generator=gen) < 0.5  # about half misclassified
    Y = torch.where(wrong, (Y + 1) % 10, Y)
    return model, X, Y


def test_evaluation_subset_correct_and_deterministic(toy):
    model, X, Y = toy
    idx = evaluation.evaluation_subset(model, X, Y, 500, seed=0)
    assert idx.dtype == torch.int64 and idx.shape == (500,)
    assert len(set(idx.tolist())) == 500
    with torch.no_grad():
        assert torch.equal(model(X[idx]).argmax(1), Y[idx])
    assert torch.equal(idx, evaluation.evaluation_subset(model, X, Y, 500, seed=0))
    assert torch.equal(idx, evaluation.evaluation_subset(model, X, Y, 500, seed=0, batch_size=97))
    other = evaluation.evaluation_subset(model, X, Y, 500, seed=1)
    assert not torch.equal(idx.sort().values, other.sort().values)


def test_evaluation_subset_is_permutation_prefix(toy):
    model, X, Y = toy
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        correct = model(X).argmax(1) == Y
    expected = perm[correct[perm]][:300]
    assert torch.equal(evaluation.evaluation_subset(model, X, Y, 300, seed=5), expected)
    assert torch.equal(evaluation.evaluation_subset(model, X, Y, 100, seed=5), expected[:100])


def test_evaluation_subset_errors_and_mode(toy):
    model, X, Y = toy
    n_correct = int((model(X).argmax(1) == Y).sum())
    assert len(evaluation.evaluation_subset(model, X, Y, n_correct, seed=0)) == n_correct
    with pytest.raises(ValueError, match="correctly classified"):
        evaluation.evaluation_subset(model, X, Y, n_correct + 1, seed=0)
    for n in (0, -3):
        with pytest.raises(ValueError):
            evaluation.evaluation_subset(model, X, Y, n, seed=0)
    model.train()
    seen = []
    handle = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    try:
        evaluation.evaluation_subset(model, X, Y, 10, seed=0)
        still_training = model.training
    finally:
        handle.remove()
        model.eval()
    assert seen and not any(seen) and still_training


def test_evaluation_subset_uses_model_dtype(toy):
    model, X, Y = toy
    model64 = nn.Linear(784, 10).double()
    with torch.no_grad():
        model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    idx = evaluation.evaluation_subset(model64, X, Y, 200, seed=3)
    with torch.no_grad():
        assert torch.equal(model64(X[idx].double()).argmax(1), Y[idx])


def _certified_but_broken(per_image, rho_key):
    """Subset images certified at ρ (any certificate, all classes) that PGD broke at ρ."""
    broken = [not ok for ok in per_image[f"pgd_robust/untargeted/{rho_key}"]]
    out = {}
    for key, col in per_image.items():
        parts = key.split("/")
        if key.startswith("radius/all-classes/"):
            certified = [r is not None and r >= float(rho_key) for r in col]
        elif key.startswith("certified/all-classes/") and parts[-1] == rho_key:
            certified = [bool(c) for c in col]
        else:
            continue
        out[key] = sum(c and b for c, b in zip(certified, broken))
    return out


def test_no_committed_certificate_is_broken_by_the_stored_pgd():
    """A cross-check of every committed certificate, the baselines' included (the audit proper
    covers the CRC ones): no subset image certified at ρ is one PGD found an adversarial for."""
    files = sorted((REPO / "results").glob("*/*.json")) + \
        sorted((REPO / "results").glob("*/tuning/*.json"))
    checked = 0
    for path in files:
        per_image = json.loads(path.read_text())["per_image"]
        for rho in EVAL_RADII:
            counts = _certified_but_broken(per_image, f"{rho:g}")
            assert all(v == 0 for v in counts.values()), (path.name, rho, counts)
            checked += len(counts)
    assert checked > 0 or not files


# --------------------------------------------------------------------------------------
# Baseline certificates at nested radii (the test-set table bounds only what is open)
# --------------------------------------------------------------------------------------

class _CountingCrown:
    """CROWN's margin bounds, recording which images each call bounded."""

    def __init__(self):
        from crc_core.baselines import crown
        self.crown = crown
        self.calls = []

    def margin_lower_bounds(self, model, x, y, rho):
        self.calls.append((rho, x.clone()))
        return self.crown.margin_lower_bounds(model, x, y, rho)


def test_nested_baseline_flags_equal_the_direct_ones_and_skip_what_is_settled():
    from crc_core.attacks import runner_up

    torch.manual_seed(3)
    model = MLP([20, 32, 32, 10], "relu")
    x = torch.randn(200, 20)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:40] = (y[:40] + 1) % 10                       # 40 misclassified
    correct = logits.argmax(1) == y
    t = runner_up(logits, y)
    radii = (0.002, 0.01, 0.05)
    counting = _CountingCrown()
    nested = evaluation._baseline_flags_nested(counting, model, x, y, t, radii, correct)
    from crc_core.baselines import crown
    for rho in radii:
        direct = evaluation._baseline_flags(crown, model, x, y, t, rho, correct)
        assert torch.equal(nested[rho][0], direct[0]) and torch.equal(nested[rho][1], direct[1])
    # the radii vary enough that the check says something
    counts = [int(nested[rho][1].sum()) for rho in radii]
    assert counts[0] > counts[-1] > 0
    # largest radius first, on the correctly classified images only; then only the open ones
    assert [rho for rho, _ in counting.calls] == sorted(radii, reverse=True)
    assert counting.calls[0][1].shape[0] == int(correct.sum())
    open_at_mid = int((correct & ~nested[0.05][1]).sum())
    assert counting.calls[1][1].shape[0] == open_at_mid


def test_committed_baseline_certificates_are_nested_in_the_radius():
    """Every committed test-set baseline flag certified at the larger ρ is certified at the
    smaller one (as the nested computation assumes, and as the results bounded at every ρ show)."""
    small, large = (f"{rho:g}" for rho in sorted(EVAL_RADII))
    checked = 0
    for path in sorted((REPO / "results").glob("*/*.json")):
        per_test = json.loads(path.read_text()).get("per_test_image") or {}
        for key, col in per_test.items():
            if key.startswith("certified/") and key.endswith("/" + large):
                inner = per_test[key[: -len(large)] + small]
                assert not any(a and not b for a, b in zip(col, inner)), (path.name, key)
                checked += 1
    assert checked > 0 or not list((REPO / "results").glob("*/*.json"))


def test_slow_baseline_certificates_cover_a_seeded_sample_of_the_test_set():
    from crc_core import data
    from crc_core.baselines import coap
    from crc_core.metrics import summarize

    preset = PRESETS["smoke"]
    torch.manual_seed(0)
    model = MLP([784, 32, 32, 32, 10], "relu")
    with torch.no_grad():   # a net smooth enough that COAP certifies some images at 0.5
        model.layers[0].weight.mul_(0.3)
        model.layers[3].bias.copy_(torch.linspace(0, 1, 10))
    spec = TrainSpec(widths=(784, 32, 32, 32, 10), activation="relu", method="coap", epochs=1,
                     rho=1.58)
    X, Y = data.load("mnist", "test")
    X, Y = X[:300], Y[:300]
    with torch.no_grad():
        Y = torch.where(torch.arange(300) % 3 == 0, model(X).argmax(1), Y)   # some correct
    table = evaluation.test_set_table(model, spec, X, Y, preset, crown_mode="at-radii",
                                      progress=False)
    correct = table["predicted"] == table["label"]
    metrics = summarize(table, {"label": torch.zeros(0)})
    samples = {name: table[f"sampled/{name}"] for name in ("coap", "crown")}
    for name, mask in samples.items():
        k = preset.test_samples[(name, 4)]
        assert int(mask.sum()) == k
        assert torch.equal(mask, evaluation.test_sample(spec, name, 300, preset))   # seeded
        assert metrics[f"certified_accuracy/all-classes/{name}/0.5"]["n"] == k
    assert not (samples["coap"] & ~samples["crown"]).any()     # the smaller sample is inside
    mask = samples["coap"]
    for rho in EVAL_RADII:
        key = f"certified/all-classes/coap/{rho:g}"
        assert not table[key][~mask].any()
        lb = coap.margin_lower_bounds(model, X[mask], Y[mask], rho)
        direct = (lb.scatter(1, Y[mask][:, None], math.inf).amin(1) > 0) & correct[mask]
        assert torch.equal(table[key][mask], direct)
    assert int(table["certified/all-classes/coap/0.5"].sum()) > 0
    # two-layer nets, CROWN on three layers, and a preset without samples: every test image
    assert evaluation.test_sample(spec.replace(widths=(784, 32, 10)), "coap", 300, preset) is None
    assert evaluation.test_sample(spec.replace(widths=(784, 32, 32, 10)), "crown", 300,
                                  preset) is None
    assert evaluation.test_sample(spec, "coap", 300, PRESETS["paper"]) is None
