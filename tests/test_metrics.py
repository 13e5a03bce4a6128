"""Oracles for the interpretability metrics: closed forms on linear models, analytic cases, slow literal
per-sample re-implementations from the papers' definitions, and invariance to batching.

The literal implementations loop over samples (and features) in Python on purpose; they draw the same per-sample
noise blocks as the batched code (`clearsight.metrics.perturb`: sample i's block is the i-th torch.rand/randn
call of `block_size` values), which is the documented contract that makes batching irrelevant.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import clearsight as cs
from clearsight.metrics import curves, perturb
from clearsight.metrics.maps import average_ranks, spearman

M = cs.metrics


def linear(features: int = 16, classes: int = 3, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).to(dtype).eval()


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cs.models.build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12, 12]).eval()


def images(b: int = 6, seed: int = 1, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 4, 4, generator=g, dtype=dtype), torch.randint(0, 3, (b,), generator=g)


def prob(model: nn.Module, x: torch.Tensor, y: int) -> float:
    with torch.no_grad():
        return float(model(x[None]).softmax(1)[0, y])


def logit(model: nn.Module, x: torch.Tensor, y: int) -> float:
    with torch.no_grad():
        return float(model(x[None])[0, y])


# ---- perturbation curves --------------------------------------------------------------------------------------

def literal_curve(model, x, y, a, *, steps, order, source, replacement):
    """RISE's loop: rank the features, perturb the first (k * F) // steps of them, score the class probability."""
    out = []
    for b in range(x.shape[0]):
        values = a[b].flatten().tolist()
        ranked = sorted(range(len(values)), key=lambda i: (-values[i] if order == "morf" else values[i], i))
        row = []
        for k in range(steps + 1):
            img = source[b].flatten().clone()
            for i in ranked[: k * len(values) // steps]:
                img[i] = replacement[b].flatten()[i]
            row.append(prob(model, img.view_as(x[b]), int(y[b])))
        out.append(row)
    return torch.tensor(out, dtype=x.dtype)


def trapezoid(c: torch.Tensor) -> torch.Tensor:
    return torch.tensor([sum((r[i] + r[i + 1]) / 2 for i in range(len(r) - 1)) / (len(r) - 1) for r in c.tolist()],
                        dtype=c.dtype)


@pytest.mark.parametrize("model_fn", [linear, small_mlp])
def test_deletion_insertion_and_flipping_curves_equal_the_literal_loop(model_fn):
    model = model_fn()
    dtype = next(model.parameters()).dtype
    x, y = images(dtype=dtype)
    a = cs.attributions.gradient(model, x, y)
    zeros = torch.zeros_like(x)
    blurred = curves.blur(x)
    # 5 steps over 16 features: uneven chunks (3, 6, 9, 12, 16 features)
    got = curves.deletion_curves(model, x, y, attribution=a, steps=5, max_batch=4)["deletion"]
    want = literal_curve(model, x, y, a, steps=5, order="morf", source=x, replacement=zeros)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(M.deletion_auc(model, x, y, attribution=a, steps=5), trapezoid(want))
    got = curves.insertion_curves(model, x, y, attribution=a, steps=5)["insertion"]
    want = literal_curve(model, x, y, a, steps=5, order="morf", source=blurred, replacement=x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(M.insertion_auc(model, x, y, attribution=a, steps=5), trapezoid(want))
    flips = curves.flipping_curves(model, x, y, attribution=a, steps=4)
    lerf = literal_curve(model, x, y, a, steps=4, order="lerf", source=x, replacement=zeros)
    torch.testing.assert_close(flips["lerf"], lerf)
    morf = literal_curve(model, x, y, a, steps=4, order="morf", source=x, replacement=zeros)
    torch.testing.assert_close(M.pixel_flipping(model, x, y, attribution=a, steps=4), trapezoid(lerf) - trapezoid(morf))


def test_deletion_starts_at_the_clean_score_and_ends_at_the_baseline():
    model = small_mlp()
    x, y = images()
    c = curves.deletion_curves(model, x, y, attribution="gradient", steps=7, baseline=0.25)["deletion"]
    assert c.shape == (6, 8)
    torch.testing.assert_close(c[:, 0], model(x).softmax(1).gather(1, y[:, None])[:, 0].detach())
    full = torch.full_like(x, 0.25)
    torch.testing.assert_close(c[:, -1], model(full).softmax(1).gather(1, y[:, None])[:, 0].detach())


def test_blur_is_a_normalized_gaussian_with_zero_padding():
    x = torch.zeros(1, 2, 21, 21)
    x[0, :, 10, 10] = 1.0
    b = curves.blur(x)
    torch.testing.assert_close(b.sum(), torch.tensor(2.0))  # interior impulse: the kernel sums to one
    r = torch.arange(11.0) - 5
    g = torch.exp(-(r**2) / 50)
    torch.testing.assert_close(b[0, 0, 5:16, 5:16], g[:, None] * g[None, :] / g.sum() ** 2)
    assert float(curves.blur(torch.ones(1, 1, 5, 5))[0, 0, 2, 2]) < 1  # zero padding darkens near the edges


# ---- faithfulness ---------------------------------------------------------------------------------------------

def test_infidelity_of_the_exact_attribution_of_a_linear_model_is_zero():
    model = linear()
    x, y = images(dtype=torch.float64)
    g = cs.attributions.gradient(model, x, y)  # I . g = f(x) - f(x - I) exactly for a linear model
    exact = M.infidelity(model, x, y, attribution=g, n=8, sigma=0.3)
    assert float(exact.abs().max()) < 1e-20
    x_img = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model8 = linear(features=64)
    g8 = cs.attributions.gradient(model8, x_img, y[:4])
    patches = M.infidelity(model8, x_img, y[:4], attribution=g8, perturbation="patches", patch=4)
    assert float(patches.abs().max()) < 1e-20
    wrong = M.infidelity(model, x, y, attribution=torch.rand_like(g), n=8, sigma=0.3)
    assert bool((wrong > 1e-3).all())


def literal_infidelity(model, x, y, a, *, n, sigma, generator):
    out = []
    d = x[0].numel()
    for b in range(x.shape[0]):
        noise = torch.randn(perturb.block_size(n, tuple(x.shape[1:])), generator=generator, dtype=x.dtype)
        losses = []
        for k in range(n):
            i = sigma * noise[k * d : (k + 1) * d].view_as(x[b])
            losses.append((float((i * a[b]).sum()) - (logit(model, x[b], int(y[b])) -
                                                      logit(model, x[b] - i, int(y[b])))) ** 2)
        out.append(sum(losses) / n)
    return torch.tensor(out)


def test_infidelity_equals_the_literal_per_sample_loop():
    model = small_mlp()
    x, y = images()
    a = cs.attributions.input_x_gradient(model, x, y)
    got = M.infidelity(model, x, y, attribution=a, n=5, sigma=0.2, generator=torch.Generator().manual_seed(3),
                       max_batch=7)
    want = literal_infidelity(model, x, y, a, n=5, sigma=0.2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_infidelity_patches_are_cumulative_row_major_blocks():
    model = small_mlp()
    x, y = images(b=3)
    a = torch.rand_like(x)
    got = M.infidelity(model, x, y, attribution=a, perturbation="patches", patch=2, baseline=0.0)
    want = []
    for b in range(3):
        terms = []
        for k in range(4):  # 2 x 2 patches of a 4 x 4 image, in row-major order, removed cumulatively
            removed = torch.zeros(4, 4, dtype=torch.bool)
            for p in range(k + 1):
                r, c = divmod(p, 2)
                removed[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = True
            i = torch.where(removed, x[b, 0], torch.zeros(4, 4))[None]
            terms.append((float((i * a[b]).sum()) - (logit(model, x[b], int(y[b])) -
                                                     logit(model, x[b] - i, int(y[b])))) ** 2)
        want.append(sum(terms) / 4)
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-6)


def literal_pearson(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    num = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    den = math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))
    return num / den


def test_faithfulness_correlation_equals_the_literal_per_sample_loop():
    model = small_mlp()
    x, y = images()
    a = cs.attributions.gradient(model, x, y)
    runs, k, f = 6, 5, 16
    got = M.faithfulness_correlation(model, x, y, attribution=a, runs=runs, subset=k, max_batch=5,
                                     generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    want = []
    for b in range(x.shape[0]):
        keys = torch.rand(perturb.block_size(runs, (f,)), generator=g)[: runs * f].view(runs, f)
        sums, drops = [], []
        for r in range(runs):
            subset = sorted(range(f), key=lambda i, r=r: float(keys[r, i]))[:k]  # the k smallest keys
            img = x[b].flatten().clone()
            img[subset] = 0.0
            sums.append(float(a[b].flatten()[subset].sum()))
            drops.append(logit(model, x[b], int(y[b])) - logit(model, img.view_as(x[b]), int(y[b])))
        want.append(literal_pearson(sums, drops))
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_faithfulness_correlation_takes_explicit_subsets():
    model = linear(dtype=torch.float32)
    x, y = images()
    a = cs.attributions.input_x_gradient(model, x, y)
    subsets = torch.stack([torch.randperm(16)[:4] for _ in range(6 * 5)]).view(6, 5, 4)
    # deleting S to 0 drops a linear model's logit by sum_S w_i x_i, exactly input x gradient's mass on S
    torch.testing.assert_close(M.faithfulness_correlation(model, x, y, attribution=a, subsets=subsets),
                               torch.ones(6), atol=1e-5, rtol=0)


# ---- complexity, alignment, localisation ---------------------------------------------------------------------

def test_gini_and_entropy_on_analytic_maps():
    model, (x, y) = small_mlp(), images(b=3)
    one_hot = torch.zeros_like(x)
    one_hot[:, 0, 1, 2] = -2.0  # magnitudes: abs is the default
    constant = torch.full_like(x, 0.7)
    torch.testing.assert_close(M.gini(model, x, y, attribution=one_hot), torch.full((3,), 15 / 16))
    torch.testing.assert_close(M.gini(model, x, y, attribution=constant), torch.zeros(3))
    assert bool((M.gini(model, x, y, attribution=torch.rand_like(x)) < 15 / 16).all())  # one-hot is the maximum
    torch.testing.assert_close(M.entropy(model, x, y, attribution=one_hot), torch.zeros(3))
    torch.testing.assert_close(M.entropy(model, x, y, attribution=constant), torch.full((3,), math.log(16)))
    assert bool(M.gini(model, x, y, attribution=torch.zeros_like(x)).isnan().all())  # no distribution: undefined


def test_gini_equals_the_literal_sorted_sum():
    model, (x, y) = small_mlp(), images()
    a = torch.randn_like(x)
    want = []
    for b in range(x.shape[0]):
        v = sorted(abs(t) for t in a[b].flatten().tolist())
        n = len(v)
        want.append(sum((2 * (i + 1) - n - 1) * v[i] for i in range(n)) / (n * sum(v)))
    torch.testing.assert_close(M.gini(model, x, y, attribution=a), torch.tensor(want))


def test_alignment_closed_forms():
    model, (x, y) = small_mlp(), images(b=3)
    torch.testing.assert_close(M.alignment_cosine(model, x, y, attribution=-2 * x), torch.ones(3))
    torch.testing.assert_close(M.alignment(model, x, y, attribution=x), x.flatten(1).norm(dim=1))
    r = torch.randn_like(x)
    torch.testing.assert_close(M.target_cosine(model, x, y, attribution=r, target_map=-3 * r), -torch.ones(3))


def test_localisation_on_analytic_maps():
    model, (x, y) = small_mlp(), images(b=4)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, 0, :2] = True  # the top half of each 4 x 4 image
    inside = torch.rand_like(x) * mask
    torch.testing.assert_close(M.relevance_mass(model, x, y, attribution=inside, mask=mask), torch.ones(4))
    torch.testing.assert_close(M.relevance_rank(model, x, y, attribution=inside + 0.01 * mask, mask=mask),
                               torch.ones(4))
    torch.testing.assert_close(M.pointing_game(model, x, y, attribution=inside, mask=mask), torch.ones(4))
    outside = torch.rand_like(x) * ~mask
    torch.testing.assert_close(M.pointing_game(model, x, y, attribution=outside, mask=mask), torch.zeros(4))
    torch.testing.assert_close(M.decoy_mass(model, x, y, attribution=inside, mask=~mask), torch.zeros(4))
    # negative relevance does not count (Arras et al.); the signed ratio is Quantus's convention
    mixed = inside - 0.5 * (~mask).float()
    torch.testing.assert_close(M.relevance_mass(model, x, y, attribution=mixed, mask=mask), torch.ones(4))
    signed = M.relevance_mass(model, x, y, attribution=mixed, mask=mask, positive=False)
    torch.testing.assert_close(signed, (inside.flatten(1).sum(1)) / mixed.flatten(1).sum(1))
    # the default mask is the strokes: x > 0.5
    strokes = M.relevance_mass(model, x, y, attribution=inside)
    torch.testing.assert_close(strokes, M.relevance_mass(model, x, y, attribution=inside, mask=x > 0.5))
    empty = M.relevance_mass(model, x, y, attribution=inside, mask=torch.zeros_like(mask))
    assert bool(empty.isnan().all())  # no object: no value


def test_relevance_rank_equals_the_literal_definition():
    model, (x, y) = small_mlp(), images()
    a, mask = torch.randn_like(x), torch.rand_like(x) > 0.6
    want = []
    for b in range(x.shape[0]):
        values, m = a[b].flatten().tolist(), mask[b].flatten().tolist()
        k = sum(m)
        top = sorted(range(16), key=lambda i: (-values[i], i))[:k]
        want.append(sum(m[i] for i in top) / k)
    torch.testing.assert_close(M.relevance_rank(model, x, y, attribution=a, mask=mask), torch.tensor(want))


def test_average_ranks_and_spearman_follow_scipy_conventions():
    v = torch.tensor([[3.0, 1.0, 1.0, 2.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(average_ranks(v), torch.tensor([[5.0, 2.0, 2.0, 4.0, 6.0, 2.0],
                                                               [2.5, 2.5, 2.5, 2.5, 5.0, 6.0]]))
    # a literal definition on rows full of ties (and one constant row): the rank of v is 1 + the number of
    # smaller entries + (the number of equal others) / 2
    rows = torch.cat([torch.randint(0, 4, (7, 30), generator=torch.Generator().manual_seed(0)).float(),
                      torch.zeros(1, 30)])
    literal = torch.tensor([[1 + sum(w < u for w in row) + (sum(w == u for w in row) - 1) / 2 for u in row]
                            for row in rows.tolist()])
    torch.testing.assert_close(average_ranks(rows), literal, rtol=0, atol=0)
    # rows without ties (ranked without the tie groups) interleaved with tied ones: each row as the literal says
    mixed = torch.stack([r for pair in zip(torch.randn(8, 30).unbind(), rows.unbind(), strict=True) for r in pair])
    literal = torch.tensor([[1 + sum(w < u for w in row) + (sum(w == u for w in row) - 1) / 2 for u in row]
                            for row in mixed.tolist()])
    torch.testing.assert_close(average_ranks(mixed), literal, rtol=0, atol=0)
    a = torch.randn(3, 20)
    torch.testing.assert_close(spearman(a, a**3), torch.ones(3))  # monotone: 1
    torch.testing.assert_close(spearman(a, -a), -torch.ones(3))


# ---- robustness -----------------------------------------------------------------------------------------------

def test_a_constant_explanation_has_sensitivity_zero():
    model, (x, y) = small_mlp(), images()

    def constant(model, x, target, **_):
        return torch.ones_like(x)

    for metric in (M.max_sensitivity, M.avg_sensitivity):
        torch.testing.assert_close(metric(model, x, y, attribution=constant, n=4), torch.zeros(6))


def literal_sensitivity(model, x, y, *, n, radius, generator, reduce):
    out = []
    d = x[0].numel()
    for b in range(x.shape[0]):
        u = torch.rand(perturb.block_size(n, tuple(x.shape[1:])), generator=generator)
        a0 = cs.attributions.gradient(model, x[b : b + 1], y[b : b + 1])[0]
        ratios = []
        for k in range(n):
            moved = (x[b] + radius * (2 * u[k * d : (k + 1) * d].view_as(x[b]) - 1)).clamp(0, 1)
            a = cs.attributions.gradient(model, moved[None], y[b : b + 1])[0]
            ratios.append(float((a - a0).norm() / a0.norm()))
        out.append(max(ratios) if reduce == "max" else sum(ratios) / n)
    return torch.tensor(out)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_sensitivity_equals_the_literal_per_sample_loop(reduce):
    model, (x, y) = small_mlp(), images()
    metric = M.max_sensitivity if reduce == "max" else M.avg_sensitivity
    got = metric(model, x, y, attribution="gradient", n=5, radius=0.3, max_batch=4,
                 generator=torch.Generator().manual_seed(5))
    want = literal_sensitivity(model, x, y, n=5, radius=0.3, generator=torch.Generator().manual_seed(5),
                               reduce=reduce)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_topk_intersection_and_rank_correlation_score_the_attack_they_share(monkeypatch):
    from clearsight.metrics import robustness
    from clearsight.metrics.shared import batch_cache

    model, (x, y) = small_mlp(), images()
    calls = []
    attack = robustness.explanation_attack

    def counted(*args, **kwargs):
        calls.append(1)
        return attack(*args, **kwargs)

    monkeypatch.setattr(robustness, "explanation_attack", counted)
    with batch_cache():
        top = M.topk_intersection(model, x, y, attribution="gradient", eps=0.1, steps=3, topk=4)
        rank = M.rank_correlation(model, x, y, attribution="gradient", eps=0.1, steps=3, topk=4)
    assert len(calls) == 1  # one attack for both rows of the batch
    x_adv = attack(model, x, y, attribution=cs.attributions.gradient, eps=0.1, steps=3, topk=4)
    a0, a1 = cs.attributions.gradient(model, x, y).flatten(1), cs.attributions.gradient(model, x_adv, y).flatten(1)
    want = [len(set(a0[b].abs().topk(4).indices.tolist()) & set(a1[b].abs().topk(4).indices.tolist())) / 4
            for b in range(6)]
    torch.testing.assert_close(top, torch.tensor(want))
    torch.testing.assert_close(rank, spearman(a0.abs(), a1.abs()))


# ---- sanity, neurons ------------------------------------------------------------------------------------------

def test_randomising_the_top_layer_drops_the_rank_correlation(mnist_mini_train):
    torch.manual_seed(0)
    model = cs.models.build("mlp", num_classes=10, input_shape=(1, 28, 28), widths=[64])
    cs.fit(model, "standard", mnist_mini_train.subset(torch.arange(1000)), epochs=2, batch_size=32, lr=0.05,
           progress="none", val_fraction=0.0, device="cpu")
    model.eval()
    x, y = mnist_mini_train.x[1000:1064], mnist_mini_train.y[1000:1064]
    before = [t.clone() for t in model.state_dict().values()]
    values = M.randomisation(model, x, y, attribution="gradient", layers=1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before, strict=True))
    # the literal test: a copy with its last Linear reset under the same seed, ranks compared
    copied = copy.deepcopy(model)
    torch.manual_seed(3)
    copied.logits.reset_parameters()
    a = cs.attributions.gradient(model, x, y).flatten(1).abs()
    b = cs.attributions.gradient(copied, x, y).flatten(1).abs()
    torch.testing.assert_close(values, spearman(a, b))
    assert float(values.mean()) < 0.8  # the map changed with the weights (it is 1 against itself)
    torch.testing.assert_close(M.randomisation(model, x, y, attribution="gradient", layers=2, seed=3).shape, (64,))
    # rows of one batch share the trained map and its ranks: each still equals its value computed alone
    from clearsight.metrics.shared import batch_cache

    options = [{"layers": 1, "abs": True}, {"layers": 2, "abs": True}, {"layers": 1, "abs": False}]
    alone = [M.randomisation(model, x, y, attribution="gradient", seed=3, **o) for o in options]
    with batch_cache():
        together = [M.randomisation(model, x, y, attribution="gradient", seed=3, **o) for o in options]
    for one, other in zip(alone, together, strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=0)
    assert not torch.equal(alone[0], alone[2])  # abs matters, so sharing across it would show


def test_randomised_values_are_the_seeded_reset_and_survive_changes_made_inside_the_block():
    from clearsight.metrics.sanity import randomised

    torch.manual_seed(0)
    model = cs.models.build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[8])
    literal = copy.deepcopy(model)
    torch.manual_seed(5)
    literal.logits.reset_parameters()
    rng = torch.get_rng_state()
    for _ in range(2):  # the second block gets the kept values, unchanged by the first block's edit
        with randomised(model, layers=1, seed=5):
            assert torch.equal(model.logits.weight, literal.logits.weight)
            assert torch.equal(model.logits.bias, literal.logits.bias)
            with torch.no_grad():
                model.logits.weight.add_(1.0)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    with randomised(model, layers=1, seed=6):  # another seed, other values
        assert not torch.equal(model.logits.weight, literal.logits.weight)


def test_neuron_consistency_of_units_that_each_fire_for_one_class_is_one():
    # unit c of the hidden layer is input feature c: images of class c have feature c large
    model = nn.Sequential()
    model.add_module("flatten", nn.Flatten())
    model.add_module("features", nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    model.add_module("logits", nn.Linear(4, 4))
    with torch.no_grad():
        model.features[0].weight.copy_(torch.eye(4))
        model.features[0].bias.zero_()
    y = torch.arange(4).repeat(5)
    x = (0.1 * torch.rand(20, 4) + 0.8 * nn.functional.one_hot(y, 4)).view(20, 1, 2, 2)
    values = M.neuron_consistency(model, x, y, layer="features", k=5)
    assert float(values.mean()) == pytest.approx(1.0)
    # a pool made batch by batch gives the same per-sample shares as the whole pool at once
    pool = M.neurons.ConsistencyPool(layer="features", k=5)
    for first in range(0, 20, 6):
        pool.update(model, x[first : first + 6], y[first : first + 6], first)
    torch.testing.assert_close(pool.finish(20), values)
    shuffled = y[torch.randperm(20)]  # labels unrelated to the units: purity well below 1
    assert float(M.neuron_consistency(model, x, shuffled, layer="features", k=5).mean()) < 1.0


def test_neuron_consistency_equals_the_literal_top_k_histogram():
    model = small_mlp()
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(30, 1, 4, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    with cs.neurons.capture(model, ["penultimate"]) as acts:
        model(x)
    h = acts["penultimate"][0].detach()
    total, alive = 0.0, 0
    for u in range(h.shape[1]):
        if float(h[:, u].max()) <= 0:  # a unit that never fires has no most-activating images
            continue
        top = sorted(range(30), key=lambda i, u=u: (-float(h[i, u]), i))[:4]  # ties: the earlier sample
        p = [sum(int(y[i]) == c for i in top) / 4 for c in range(3)]
        total, alive = total + sum(q * q for q in p), alive + 1
    assert 0 < alive < h.shape[1]  # the case has dead units and ties, the conventions matter
    values = M.neuron_consistency(model, x, y, k=4)
    assert float(values.mean()) == pytest.approx(total / alive, rel=1e-6)


def test_unit_sensitivity_of_a_linear_layer_is_its_weight_row_norm():
    model = small_mlp()
    x, _ = images(b=5)
    units = torch.tensor([0, 3, 7])
    fc1 = model.features.fc1
    norms = cs.neurons.unit_sensitivity(model, x, layer="features.fc1", units=units)
    torch.testing.assert_close(norms, fc1.weight[units].norm(dim=1).detach().expand(5, 3))
    summed = cs.neurons.unit_sensitivity(model, x, layer="features.fc1", units=units, summed=True)
    torch.testing.assert_close(summed[:, 0], fc1.weight[units].sum(0).norm().detach().expand(5))
    # create_graph: a penalty of the sensitivity reaches the weights
    graph = cs.neurons.unit_sensitivity(model, x, layer="features.fc1", units=units, create_graph=True)
    (grad,) = torch.autograd.grad(graph.sum(), fc1.weight)
    assert float(grad.abs().sum()) > 0
    m = M.neuron_sensitivity(model, x, torch.zeros(5, dtype=torch.int64), layer="features.fc1", units=3, seed=0)
    picked = cs.neurons.sample_units(12, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m, fc1.weight[picked].norm(dim=1).mean().detach().expand(5))


# ---- noise draws ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 5), (61,)])
@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_one_draw_of_many_sample_blocks_equals_the_per_sample_draws(kind, shape):
    """The CPU property batch-size invariance rests on (see clearsight.metrics.perturb)."""
    n, m = 3, perturb.block_size(3, shape)
    many = perturb.draw(7, n, shape, kind=kind, generator=torch.Generator().manual_seed(1), dtype=torch.float32,
                        device="cpu")
    g = torch.Generator().manual_seed(1)
    fn = torch.rand if kind == "uniform" else torch.randn
    one_by_one = torch.stack([fn(m, generator=g)[: n * math.prod(shape)].view(n, *shape) for _ in range(7)])
    torch.testing.assert_close(many, one_by_one, rtol=0, atol=0)


def test_sample_noise_rows_do_not_depend_on_the_chunks():
    def rows(chunk):
        noise = perturb.SampleNoise(5, (3,), kind="normal", generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float32, device="cpu")
        idx = torch.arange(7 * 5)
        return torch.cat([noise.rows(r.div(5, rounding_mode="floor"), r % 5) for r in idx.split(chunk)])

    reference = rows(35)
    for chunk in (1, 3, 5, 6, 34):
        torch.testing.assert_close(rows(chunk), reference, rtol=0, atol=0)
