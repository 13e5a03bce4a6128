"""The evaluation driver: one batch loop for every row kind, shared maps, worst-case reuse by metadata, extras,
pooled statistics, certificates, suites as data, result rows, and the layering it relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import clearsight as cs
from clearsight import results
from clearsight.errors import ConfigError, DataError

SRC = Path(cs.__file__).parent


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cs.models.build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[12, 12])


def toy(n: int = 40, seed: int = 1, extras: dict | None = None) -> cs.data.ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return cs.data.ArrayDataset(x, y, classes=["a", "b", "c"], name="toy", split="test", extras=extras)


RANDOM_SUITE = {"name": "mixed", "rows": [
    {"metric": "accuracy"},
    {"metric": "deletion_auc", "attribution": {"name": "gradient"}, "steps": 5},
    {"metric": "pixel_flipping", "attribution": "gradient", "steps": 4},
    {"metric": "faithfulness_correlation", "attribution": "gradient", "runs": 6, "subset": 4},
    {"metric": "infidelity", "attribution": "input_x_gradient", "n": 4},
    {"metric": "max_sensitivity", "attribution": "gradient", "n": 3, "samples": 25},
    {"metric": "gini", "attribution": "gradient"},
    {"metric": "relevance_mass", "attribution": "gradient"},
    {"metric": "randomisation", "attribution": "gradient"},
    {"metric": "neuron_consistency", "k": 3},
    {"metric": "robust_accuracy", "attack": "pgd", "eps": 0.1, "steps": 3},
]}


def test_rows_do_not_depend_on_batch_size_or_max_batch():
    model, ds = mlp(), toy()
    reference = {r["key"]: r for r in cs.evaluate_rows(model, ds, suite=RANDOM_SUITE, batch_size=40, progress="none")}
    for batch_size, max_batch in ((7, 5), (16, 64), (3, 2)):
        rows = cs.evaluate_rows(model, ds, suite=RANDOM_SUITE, batch_size=batch_size, max_batch=max_batch,
                                progress="none")
        for row in rows:
            ref = reference[row["key"]]
            if row["metric"] == "robust_accuracy":  # pgd's random start is drawn per batch, not per sample
                continue
            assert row["value"] == pytest.approx(ref["value"], rel=1e-5, abs=1e-6), (row["key"], batch_size)
            assert row["n"] == ref["n"]
    assert reference["max_sensitivity/attribution=gradient/n=3/samples=25"]["n"] == 25
    assert all(r["seed"] == 0 and r["batch_size"] == 40 for r in reference.values())  # provenance on every row


def test_each_attribution_map_is_computed_once_per_batch_and_shared(monkeypatch):
    from clearsight.attributions import ATTRIBUTIONS
    from clearsight.registry import Entry

    calls = []
    entry = ATTRIBUTIONS.entry("gradient")

    def counted(model, x, target, **kw):
        calls.append(x.shape[0])
        return entry.fn(model, x, target, **kw)

    monkeypatch.setitem(ATTRIBUTIONS._entries, "gradient", Entry("gradient", counted, entry.meta))
    suite = {"rows": [{"metric": m, "attribution": "gradient"} for m in
                      ("deletion_auc", "insertion_auc", "gini", "entropy", "alignment", "relevance_mass")]
             + [{"metric": "max_sensitivity", "attribution": "gradient", "n": 2}]}
    cs.evaluate_rows(mlp(), toy(n=30), suite=suite, batch_size=10, progress="none")
    # 3 batches: one map each for the six rows that read it, plus the sensitivity's 2 perturbed copies per sample
    assert calls.count(10) == 3 and sum(calls) == 30 + 30 * 2


def test_rows_keep_their_curves_and_the_curve_means_reduce_to_the_value():
    rows = cs.evaluate_rows(mlp(), toy(n=12), suite={"rows": [
        {"metric": "deletion_auc", "attribution": "gradient", "steps": 4},
        {"metric": "pixel_flipping", "attribution": "gradient", "steps": 4}]}, batch_size=5, progress="none")
    deletion, flipping = rows
    assert list(deletion["curve"]) == ["deletion"] and len(deletion["curve"]["deletion"]) == 5
    c = torch.tensor(deletion["curve"]["deletion"])
    assert deletion["value"] == pytest.approx(float((c[1:] + c[:-1]).sum() / 8), rel=1e-6)  # AUC is linear
    assert set(flipping["curve"]) == {"morf", "lerf"}


def test_extras_reach_the_metrics_that_declare_them():
    ds = toy(n=20)
    target_map = torch.randn(20, 1, 4, 4)
    mask = torch.zeros(20, 1, 4, 4)
    mask[:, :, :2, :2] = 1
    with_extras = toy(n=20, extras={"target_map": target_map, "mask": mask})
    model = mlp()
    rows = {r["metric"]: r for r in cs.evaluate_rows(model, with_extras, batch_size=6, progress="none", suite={
        "rows": [{"metric": "target_cosine", "attribution": "gradient"},
                 {"metric": "decoy_mass", "attribution": "gradient"}]})}
    g = cs.attributions.gradient(model.eval(), ds.x, ds.y)
    direct = cs.metrics.target_cosine(model, ds.x, ds.y, attribution=g, target_map=target_map)
    assert rows["target_cosine"]["value"] == pytest.approx(float(direct.mean()), rel=1e-5)
    direct = cs.metrics.decoy_mass(model, ds.x, ds.y, attribution=g, mask=mask)
    assert rows["decoy_mass"]["value"] == pytest.approx(float(direct.nanmean()), rel=1e-5)
    assert rows["decoy_mass"]["higher_is_better"] is False and "mask" not in rows["decoy_mass"]["options"]
    with pytest.raises(ConfigError, match="needs the per-sample extra 'target_map'.*its extras: none"):
        cs.evaluate_rows(model, ds, suite={"rows": [{"metric": "target_cosine", "attribution": "gradient"}]})
    with pytest.raises(ConfigError, match="gets 'mask' from the dataset"):
        cs.evaluate_rows(model, ds, suite={"rows": [{"metric": "decoy_mass", "attribution": "gradient",
                                                     "mask": 1}]})


def test_shipped_suites_read_the_dataset_extras_and_kind():
    quick = cs.metrics.suite("quick", eps_grid={"linf": (0.1, 0.3)}, num_classes=10, input_shape=(1, 28, 28),
                             extras=["mask"])
    metrics = {r.metric for r in quick.rows}
    assert {"deletion_auc", "insertion_auc", "gini", "max_sensitivity", "relevance_mass", "pointing_game",
            "decoy_mass"} <= metrics and "target_cosine" not in metrics
    tabular = cs.metrics.suite("quick", eps_grid={"linf": (0.05,)}, num_classes=2, input_shape=(61,))
    assert not {"relevance_mass", "decoy_mass"} & {r.metric for r in tabular.rows}
    assert all(r.options.get("start", 0.0) == 0.0 for r in tabular.rows if r.metric == "insertion_auc")
    full = cs.metrics.suite("full", eps_grid={"linf": (0.1,)}, num_classes=10, input_shape=(1, 28, 28))
    assert set(cs.metrics.METRICS.names()) - {r.metric for r in full.rows} == {
        "certified_accuracy", "certified_delta", "certified_topk", "delta_bound", "decoy_mass", "target_cosine"}
    worst = [r for r in full.rows if r.metric == "robust_accuracy" and len(r.options["attack"]) == 2]
    assert worst[0].options["attack"] == [("pgd", {}), ("apgd", {"loss": "dlr", "steps": 100})]


def test_a_suite_round_trips_through_yaml():
    full = cs.metrics.suite("full", eps_grid={"linf": (0.1, 0.3), "l2": (1.5,)}, num_classes=10,
                            input_shape=(1, 28, 28), extras=["mask", "target_map"])
    again = cs.metrics.suite(yaml.safe_load(yaml.safe_dump(full.to_data())), eps_grid=None, num_classes=10)
    assert [r.key for r in again.rows] == [r.key for r in full.rows] and again.hygiene == full.hygiene
    with pytest.raises(ConfigError, match="every suite row needs 'metric: NAME'"):
        cs.metrics.suite({"rows": [{"attribution": "gradient"}]}, eps_grid=None, num_classes=3)
    with pytest.raises(ConfigError, match="has no option 'stepz'"):
        cs.metrics.suite({"rows": [{"metric": "deletion_auc", "attribution": "gradient", "stepz": 3}]},
                         eps_grid=None, num_classes=3)
    with pytest.raises(ConfigError, match="needs an attribution"):
        cs.metrics.suite({"rows": [{"metric": "gini"}]}, eps_grid=None, num_classes=3)
    with pytest.raises(ConfigError, match="looks like an attack string"):
        cs.metrics.get("robust_accuracy")(mlp(), toy(4).x, toy(4).y, eps=0.1, attack="pgd+apgd:loss=dlr")


def test_pooled_rows_are_pool_statistics_whatever_the_batching():
    model, ds = mlp(), toy(n=30)
    suite = {"rows": [{"metric": "neuron_consistency", "k": 4, "pool": p} for p in ("real", "both")]}
    whole = {r["key"]: r["value"] for r in cs.evaluate_rows(model, ds, suite=suite, batch_size=30, progress="none")}
    split = {r["key"]: r["value"] for r in cs.evaluate_rows(model, ds, suite=suite, batch_size=7, progress="none")}
    direct = cs.metrics.neuron_consistency(model.eval(), ds.x, ds.y, k=4)
    assert whole["neuron_consistency/k=4/pool=real"] == pytest.approx(float(direct.mean()))
    assert split["neuron_consistency/k=4/pool=real"] == pytest.approx(whole["neuron_consistency/k=4/pool=real"])
    assert 0 < whole["neuron_consistency/k=4/pool=both"] <= 1


# ---- certificates through the driver --------------------------------------------------------------------------

def test_certify_rows_keep_their_keys_and_are_the_means_of_the_certified_metrics():
    test = cs.data.load("german-credit", "test")
    torch.manual_seed(6)
    model = cs.models.build("mlp", num_classes=2, input_shape=test.input_shape, widths=[32])
    suite = cs.metrics.certified_suite(eps=[0.02], gamma=0.01, topk=5, sensitive="sex", delta=0.5)
    rows = {r["key"]: r for r in cs.evaluate_rows(model, test, suite=suite, batch_size=64, progress="none")}
    assert set(rows) == {  # the keys `bounds.certify` wrote before certify became a suite
        "certified_accuracy/eps=0.02/gamma=0.01", "delta_bound/eps=0.02/gamma=0.01/of=logit/p=2.0/relative=True",
        "certified_delta/delta=0.5/eps=0.02/gamma=0.01/of=logit/p=2.0/relative=True",
        "certified_topk/eps=0.02/gamma=0.01/of=logit/sensitive=sex/topk=5"}
    features = test.sensitive["sex"]
    options = {"certified_accuracy": {}, "delta_bound": {}, "certified_delta": {"delta": 0.5},
               "certified_topk": {"sensitive": features, "topk": 5}}
    for row in rows.values():
        name = row["metric"]
        values = cs.metrics.get(name)(model, test.x, test.y, eps=0.02, gamma=0.01, **options[name])
        assert row["value"] == pytest.approx(float(values.mean()), rel=1e-5) and row["n"] == len(test)
    assert {r["metric"]: r["higher_is_better"] for r in rows.values()} == {
        "certified_accuracy": True, "delta_bound": False, "certified_delta": True, "certified_topk": True}
    with pytest.raises(ConfigError, match="valid attributes: sex, age"):
        cs.evaluate_rows(model, test, suite=cs.metrics.certified_suite(eps=[0.01], topk=5, sensitive="religion"))
    with pytest.raises(ConfigError, match="needs both topk and sensitive"):
        cs.metrics.certified_suite(eps=[0.01], topk=5)


def test_the_certified_rows_of_a_batch_share_one_gradient_bound(monkeypatch):
    from clearsight.metrics import certified

    calls = []
    bounds = certified.gradient_bounds

    def counted(*args, **kwargs):
        calls.append(kwargs["eps"])
        return bounds(*args, **kwargs)

    monkeypatch.setattr(certified, "gradient_bounds", counted)
    test = cs.data.load("german-credit", "test")
    model = cs.models.build("mlp", num_classes=2, input_shape=test.input_shape, widths=[16])
    cs.evaluate_rows(model, test, suite=cs.metrics.certified_suite(eps=[0.02], topk=5, sensitive="sex", delta=0.5,
                                                                   relative=False), batch_size=100, progress="none")
    assert calls == [0.02, 0.02]  # two batches: one bound each for delta_bound, certified_delta and certified_topk


def test_evaluation_reads_a_parametrized_weight_once_and_in_eval_mode():
    from torch.nn.utils import parametrize

    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls, self.modes = 0, []

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.modes.append(self.training)
            return w * (1.0 + 0.01 * self.calls)  # a different weight at every read, as spectral_norm in train mode

    model = cs.models.build("mlp", num_classes=3, input_shape=(1, 4, 4), widths=[8])
    counter = Counted()
    parametrize.register_parametrization(model.logits, "weight", counter)
    counter.calls, counter.modes = 0, []
    model.train()
    suite = cs.metrics.certified_suite(eps=[0.02], delta=1.0)
    cs.evaluate_rows(model, toy(n=12), suite=suite, batch_size=4, progress="none")
    assert counter.calls == 1 and counter.modes == [False]
    assert all(m.training for m in model.modules())


# ---- result rows ------------------------------------------------------------------------------------------------

def test_old_rows_are_read_with_their_keys():
    old = [  # rows as clearsight wrote them before options moved under "options"
        {"key": "robust_accuracy/attack=pgd+apgd:loss=dlr,steps=100/eps=0.1/norm=linf/steps=40",
         "metric": "robust_accuracy", "attack": "pgd+apgd:loss=dlr,steps=100", "norm": "linf", "eps": 0.1,
         "steps": 40, "value": 0.5, "n": 10, "higher_is_better": True, "dataset": "mnist", "split": "test",
         "suite": "full"},
        {"key": "certified_topk/eps=0.01/gamma=0.0/of=logit/sensitive=sex,age/topk=5", "metric": "certified_topk",
         "eps": 0.01, "gamma": 0.0, "n": 200, "dataset": "german-credit", "split": "test", "topk": 5,
         "sensitive": "sex,age", "of": "logit", "value": 0.7, "higher_is_better": True},
        {"key": "hygiene/eps=0.3/max_gap=None/norm=linf", "metric": "hygiene", "eps": 0.3, "norm": "linf",
         "max_gap": None, "value": 0.0, "n": 256, "higher_is_better": False, "warnings": [], "dataset": "mnist",
         "split": "test", "suite": "quick"}]
    for row in old:
        new = results.upgrade(row)
        assert results.row_key(new["metric"], new["options"]) == row["key"] == new["key"]
        assert new["value"] == row["value"] and new["n"] == row["n"]
    assert results.upgrade(old[0])["options"]["attack"] == [["pgd", {}], ["apgd", {"loss": "dlr", "steps": 100}]]
    assert results.upgrade(results.upgrade(old[1])) == results.upgrade(old[1])


def test_rows_hold_options_apart_so_any_option_name_is_allowed(tmp_path):
    row = results.make_row("max_sensitivity", {"n": 10, "radius": 0.1}, torch.tensor([1.0, float("nan"), 3.0]),
                           higher_is_better=False, where={"dataset": "d", "split": "test", "suite": "s"})
    assert row["key"] == "max_sensitivity/n=10/radius=0.1" and row["n"] == 2 and row["value"] == 2.0
    assert row["options"] == {"n": 10, "radius": 0.1} and "1 of 3 samples have no value" in row["warnings"][0]
    cs.io.append_jsonl(tmp_path / "r.jsonl", [row])
    assert results.read_rows(tmp_path / "r.jsonl") == [row]


# ---- state, passes and layers -------------------------------------------------------------------------------------

def state(model: nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [(type(m).__name__, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
            [t.detach().clone() for t in model.state_dict().values()])


def same(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and all(torch.equal(u, v) for u, v in zip(a[3], b[3], strict=True))


def test_context_managers_that_change_the_model_restore_it_also_on_error():
    from clearsight.attacks.explanation import softplus_relus
    from clearsight.metrics.sanity import randomised

    model = mlp()
    before = state(model)
    managers = [lambda: cs.neurons.capture(model, ["features", "logits"]), lambda: softplus_relus(model),
                lambda: randomised(model, layers=2, seed=1)]
    for make in managers:
        with make():
            changed = state(model)
            model(torch.rand(2, 1, 4, 4))
        assert same(state(model), before)
        with pytest.raises(RuntimeError, match="inside"), make():
            raise RuntimeError("inside")
        assert same(state(model), before)
    assert not same(changed, before)  # randomised did change the weights inside its block


def test_explanation_attack_makes_no_model_copy_and_two_forwards_per_step(monkeypatch):
    from clearsight.attacks import explanation

    def no_copy(*args, **kwargs):
        raise AssertionError("the attack copied the model")

    monkeypatch.setattr(explanation.copy, "deepcopy", no_copy)
    model = mlp().eval()
    x, y = toy(8).x, toy(8).y
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, inp: forwards.append(inp[0].shape[0]))
    try:
        explanation.explanation_attack(model, x, y, attribution=cs.attributions.gradient, eps=0.1, steps=5, topk=4)
    finally:
        handle.remove()
    assert len(forwards) == 1 + 2 * 5  # the map of x, then per step the surrogate and the candidate passes
    kinds = [type(m) for m in model.modules()]
    assert nn.ReLU in kinds and nn.Softplus not in kinds  # the ReLUs are back


def test_lower_layers_import_nothing_from_higher_ones():
    higher = ("clearsight.metrics", "clearsight.results", "clearsight.engine", "clearsight.evaluation",
              "clearsight.report", "clearsight.study")
    lower = [*(SRC / d for d in ("bounds", "attacks", "attributions")), SRC / "neurons.py"]
    files = [f for p in lower for f in ([p] if p.is_file() else sorted(p.glob("*.py")))]
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(higher), f"{path.name} imports {name}"


def test_bad_attribution_inputs_get_clear_errors():
    model, ds = mlp(), toy(4)
    with pytest.raises(DataError, match="does not fit inputs"):
        cs.metrics.gini(model, ds.x, ds.y, attribution=torch.rand(4, 3))
    with pytest.raises(DataError, match="NaN or infinite"):
        cs.metrics.gini(model, ds.x, ds.y, attribution=torch.full_like(ds.x, float("nan")))
    with pytest.raises(ConfigError, match="precomputed map is not enough"):
        cs.metrics.max_sensitivity(model, ds.x, ds.y, attribution=ds.x)
    with pytest.raises(cs.errors.UnknownNameError, match="unknown attribution 'gradiant'"):
        cs.metrics.gini(model, ds.x, ds.y, attribution="gradiant")
    with pytest.raises(ConfigError, match="subset must be an integer in 1..15"):
        cs.metrics.faithfulness_correlation(model, ds.x, ds.y, attribution="gradient", subset=16)


def test_a_row_does_not_change_the_values_of_the_other_rows():
    """Each random row draws from a stream of its own: PGD starts, the adversarial pool's PGD, the attribution
    calls of a sensitivity row at perturbed inputs; the shared smoothgrad map keeps its own stream."""
    model, ds = mlp(), toy(n=30)
    base = [{"metric": "robust_accuracy", "attack": "pgd", "eps": 0.3, "steps": 2},
            {"metric": "gini", "attribution": {"name": "smoothgrad", "n": 3}}]
    extra = [{"metric": "neuron_consistency", "pool": "adversarial", "k": 3, "steps": 2},
             {"metric": "max_sensitivity", "attribution": {"name": "smoothgrad", "n": 3}, "n": 2},
             {"metric": "randomisation", "attribution": {"name": "smoothgrad", "n": 3}}]
    alone = {r["key"]: r["value"] for r in cs.evaluate_rows(model, ds, suite={"rows": base}, batch_size=10,
                                                            progress="none")}
    together = {r["key"]: r["value"] for r in cs.evaluate_rows(model, ds, suite={"rows": extra + base},
                                                               batch_size=10, progress="none")}
    assert all(together[k] == alone[k] for k in alone), (alone, together)
    assert 0.0 < alone["robust_accuracy/attack=pgd/eps=0.3/steps=2"] < 1.0  # the attack does something here


def test_localisation_leaves_the_decoy_patch_out_of_the_strokes():
    """On decoy-mnist the patch is bright for digits 0-5; it must not count as the object."""
    data = cs.data.load("decoy-mnist", "test").subset(torch.arange(60))
    patch = data.extras["mask"]
    on_patch = patch.clone()  # a map whose only mass is on the patch: a shortcut
    model = cs.models.build("small-cnn", num_classes=10).eval()
    rows = {r["metric"]: r["value"] for r in cs.evaluate_rows(model, data, progress="none", suite={"rows": [
        {"metric": m, "attribution": {"name": "gradient"}} for m in ("relevance_mass", "pointing_game")]})}
    g = cs.attributions.gradient(model, data.x, data.y)
    for name, value in rows.items():  # the driver passes the dataset's mask as `exclude`
        with_exclude = cs.metrics.get(name)(model, data.x, data.y, attribution=g, exclude=patch)
        assert value == pytest.approx(float(with_exclude.nanmean()), rel=1e-5), name
    bright = (data.x * patch).flatten(1).amax(1) > 0.5  # samples whose patch would pass as stroke
    assert bool(bright.any())
    for name in ("relevance_mass", "pointing_game"):
        fn = cs.metrics.get(name)
        fooled = fn(model, data.x, data.y, attribution=on_patch)  # without exclude the patch is "object"
        fixed = fn(model, data.x, data.y, attribution=on_patch, exclude=patch)
        assert bool((fooled[bright] == 1.0).all()) and float(fixed.nan_to_num(0.0).max()) == 0.0, name


def test_degenerate_maps_have_no_localisation_value_and_parametrized_layers_are_refused():
    model, ds = mlp(), toy(n=6)
    for name in ("pointing_game", "relevance_rank"):
        values = cs.metrics.get(name)(model, ds.x, ds.y, attribution=torch.zeros_like(ds.x),
                                      mask=torch.ones_like(ds.x))
        assert bool(values.isnan().all()), name
        constant = cs.metrics.get(name)(model, ds.x, ds.y, attribution=torch.full_like(ds.x, 0.3),
                                        mask=torch.ones_like(ds.x))
        assert bool(constant.isnan().all()), name
    zero = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        zero[1].weight.zero_()  # a zero input gradient everywhere: the relative change is undefined
    s = cs.metrics.get("max_sensitivity")(zero, ds.x, ds.y, attribution="gradient", n=2)
    assert bool(s.isnan().all())
    spectral = nn.Sequential(nn.Flatten(), nn.utils.parametrizations.spectral_norm(nn.Linear(16, 3)))
    with pytest.raises(ConfigError, match="parametrized"):
        cs.metrics.get("randomisation")(spectral, ds.x, ds.y, attribution="gradient")


def test_rows_read_back_hold_numbers_for_non_finite_values(tmp_path):
    row = results.make_row("gini", {}, torch.tensor([float("nan")]), higher_is_better=True,
                           where={"dataset": "toy", "split": "test", "suite": "x"})
    cs.io.write_jsonl(tmp_path / "r.jsonl", [row])
    back = results.read_rows(tmp_path / "r.jsonl")[0]
    assert isinstance(back["value"], float) and back["value"] != back["value"]  # NaN as a number


def test_deletion_and_pixel_flipping_share_the_morf_curve(monkeypatch):
    from clearsight.metrics import curves

    calls: list[str] = []
    original = curves.curve

    def counting(*args, **kwargs):
        calls.append(kwargs["order"])
        return original(*args, **kwargs)

    monkeypatch.setattr(curves, "curve", counting)
    model, ds = mlp(), toy(n=12)
    rows = {r["metric"]: r for r in cs.evaluate_rows(model, ds, batch_size=12, progress="none", suite={"rows": [
        {"metric": "deletion_auc", "attribution": "gradient", "steps": 4},
        {"metric": "pixel_flipping", "attribution": "gradient", "steps": 4}]})}
    assert sorted(calls) == ["lerf", "morf"]  # one MoRF curve for both rows
    assert rows["pixel_flipping"]["curve"]["morf"] == rows["deletion_auc"]["curve"]["deletion"]


def test_a_worst_case_row_is_the_same_with_or_without_its_prefix_rows(monkeypatch):
    """A worst-case row over [pgd, fgsm, pgd-margin] is its prefix [pgd, fgsm] plus pgd-margin on what that left,
    and the prefix is [pgd] plus fgsm: every attack draws from the generator of the row that ends with it, so the
    row's value does not change when the suite also has the prefix rows (it did: alone, its pgd drew from the
    worst-case row's stream; 1-step pgd makes the random start matter), and hidden prefixes are not reported."""
    import importlib

    pgd_module = importlib.import_module("clearsight.attacks.pgd")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(90, 16)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct at eps 0, so every sample is attacked
    ds = cs.data.ArrayDataset(x, y, classes=["a", "b", "c"], name="toy", split="test")
    attacks = [{"name": "pgd"}, {"name": "fgsm"}, {"name": "pgd", "loss": "margin"}]
    calls = [0]
    run = pgd_module.run_attack

    def counting(*args, **kwargs):
        calls[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(pgd_module, "run_attack", counting)
    for eps in (0.02, 0.05):
        row = {"metric": "robust_accuracy", "eps": eps, "steps": 1}
        last = {**row, "attack": attacks}
        prefixes = [{**row, "attack": attacks[:1]}, {**row, "attack": attacks[:2]}]
        calls[0] = 0
        alone = cs.evaluate_rows(model, ds, suite={"rows": [last]}, batch_size=30, progress="none")
        calls_alone, calls[0] = calls[0], 0
        together = cs.evaluate_rows(model, ds, suite={"rows": [*prefixes, last]}, batch_size=30, progress="none")
        assert [r["key"] for r in alone] == [together[-1]["key"]]  # the hidden prefixes are not reported
        assert alone[0]["value"] == together[-1]["value"]
        assert calls_alone == calls[0]  # the hidden prefixes cost no attack the row would not run anyway
        one, two, three = (r["value"] for r in together)
        assert one >= two > three > 0  # each later attack breaks samples the earlier ones left
        # prefixes listed after the row they extend: still computed once, reported in the suite's order
        calls[0] = 0
        reversed_ = cs.evaluate_rows(model, ds, suite={"rows": [last, *prefixes[::-1]]}, batch_size=30,
                                     progress="none")
        assert [r["key"] for r in reversed_] == [together[2]["key"], together[1]["key"], together[0]["key"]]
        assert [r["value"] for r in reversed_] == [three, two, one]
        assert calls[0] == calls_alone


def test_a_raw_row_is_planned_as_its_suite_form():
    """Row objects built by hand (not through the suite parser) may hold attacks as bare names, pairs or mappings:
    planned in (name, options) form, so a bare name is one attack (it was split into its letters), a raw row and
    its spec-form twin get one key, one generator and one plan, and a raw worst case reuses a raw prefix."""
    from clearsight.metrics.suites import Row, Suite

    model, ds = mlp(), toy(n=12)
    options = {"eps": 0.05, "steps": 2}

    def values(*rows):
        return [r["value"] for r in cs.evaluate_rows(model, ds, suite=Suite("raw", [
            Row("robust_accuracy", {**options, "attack": a}) for a in rows]), batch_size=12, progress="none")]

    spec_form = values([("pgd", {})], [("pgd", {}), ("fgsm", {})])
    for one in ("pgd", ("pgd", {}), ["pgd"], [{"name": "pgd"}]):
        assert values(one) == spec_form[:1]
    raw = values(["pgd", "fgsm"], ["pgd"])  # the prefix after its row, both raw: planned once, suite order kept
    assert raw == spec_form[::-1]
    assert len(values("pgd", ("pgd", {}), [{"name": "pgd"}])) == 1  # one row in three spellings: reported once
