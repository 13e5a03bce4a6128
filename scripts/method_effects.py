"""Train training methods side by side on mnist-mini (small-cnn) and measure the effects their papers claim.

    python scripts/method_effects.py --out runs/effects --epochs 3 standard pgd-at:steps=7 trades:steps=7 \\
        input-gradient jacobian teacher ir consistency-at:steps=7 scaat:steps=7 activation-sensitivity
    python scripts/method_effects.py --out runs/effects-decoy --epochs 3 --dataset decoy-mnist standard \\
        input-gradient:lam=10,explanation_mask=mask

Each METHOD[:key=value,...] trains small-cnn with `clearsight.fit` (batch 64, SGD lr 0.05 cosine, seed 0, the
objective's defaults except the options given) into OUT/<method spec>/ (a finished run is reused, an interrupted
one resumed). `teacher` is pgd-at with the l2 training budget (eps 2.0, 7 steps): IR's teacher; after it,
`clearsight targets` writes OUT/targets.safetensors (SmoothGrad n=50, sigma 0.15, t=1), which `ir` trains with
and every method is scored against (target_cosine). One JSON line per method on stdout, measured on the first 500
test images (decoy-mnist: the same images with random patches):

    acc, rob_linf_0.1, rob_l2_1.5   clean accuracy and PGD-20 robust accuracy (linf eps 0.1, l2 eps 1.5)
    gnorm                           mean ||d z_y / d x||_2 (input-gradient norm)
    gini                            mean Gini index of |gradient| maps (sparsity)
    neuron_sensitivity              mean ||d a_u / d x|| over 8 sampled penultimate units
    consistency_adv                 neuron consistency of penultimate units on PGD (linf 0.1) images
    feat_dist                       mean squared distance of l2-normalized penultimate features, x vs PGD x_adv
    target_cos                      cosine of gradient maps to the held-out target maps (when targets exist)
    decoy_mass                      share of |gradient| mass on decoy-mnist's patch (decoy-mnist only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import clearsight as cs
from clearsight import io, targets
from clearsight.config import parse_value
from clearsight.neurons import capture
from clearsight.objectives.consistency import feature_distance

N_TEST = 500
FIT = {"batch_size": 64, "lr": 0.05, "progress": "none", "device": "cpu", "seed": 0}
TEACHER = ("pgd-at", {"eps": 2.0, "norm": "l2", "steps": 7})


def parse(spec: str) -> tuple[str, dict]:
    name, _, text = spec.partition(":")
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        options[key] = parse_value(value)
    return name, options


def train(out: Path, spec: str, dataset: str, epochs: int) -> torch.nn.Module:
    name, options = parse(spec)
    if name == "teacher":
        name, options = TEACHER
    data = cs.data.load(dataset, "train")
    if name == "ir":
        data = targets.attach(data, out / "targets.safetensors")
        options = {**options, "targets": str(out / "targets.safetensors")}
    torch.manual_seed(FIT["seed"])
    model = cs.models.build("small-cnn", num_classes=10)
    run = out / spec.replace("/", "_")
    doc = {"data": {"name": dataset}, "model": {"name": "small-cnn"},
           "shapes": {"num_classes": 10, "input_shape": [1, 28, 28], "classes": data.classes}}
    t0 = time.perf_counter()
    cs.fit(model, cs.objectives.build(name, dataset=dataset, **options), data, epochs=epochs, out_dir=run,
           resume=True, run_config=doc, **FIT)
    model.train_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    if spec == "teacher" and not (out / "targets.safetensors").exists():
        targets.compute(run, out / "targets.safetensors", progress="none")
    return model.eval()


def measure(model: torch.nn.Module, dataset: str, out: Path) -> dict:
    test = cs.data.load(dataset, "test").subset(torch.arange(N_TEST))
    if (out / "targets.safetensors").exists() and dataset == "mnist-mini":
        full = targets.attach(cs.data.load(dataset, "test"), out / "targets.safetensors")
        test = full.subset(torch.arange(N_TEST))
    labelled = [("acc", {"metric": "accuracy"}),
                ("rob_linf_0.1", {"metric": "robust_accuracy", "eps": 0.1, "norm": "linf", "steps": 20}),
                ("rob_l2_1.5", {"metric": "robust_accuracy", "eps": 1.5, "norm": "l2", "steps": 20}),
                ("gini", {"metric": "gini", "attribution": "gradient"}),
                ("neuron_sensitivity", {"metric": "neuron_sensitivity", "layer": "penultimate", "units": 8}),
                ("consistency_adv", {"metric": "neuron_consistency", "layer": "penultimate", "pool": "adversarial",
                                     "eps": 0.1})]
    if "target_map" in test.extras:
        labelled.append(("target_cos", {"metric": "target_cosine", "attribution": "gradient"}))
    if "mask" in test.extras:
        labelled.append(("decoy_mass", {"metric": "decoy_mass", "attribution": "gradient"}))
    rows = cs.evaluate_rows(model, test, suite={"name": "effects", "rows": [r for _, r in labelled]}, device="cpu",
                            progress="none")
    assert [r["metric"] for r in rows] == [r["metric"] for _, r in labelled]  # rows come back in suite order
    result = {label: row["value"] for (label, _), row in zip(labelled, rows, strict=True)}
    g = cs.attributions.gradient(model, test.x, test.y)
    result["gnorm"] = float(g.flatten(1).norm(dim=1).mean())
    torch.manual_seed(0)
    x_adv = cs.attacks.pgd(model, test.x, test.y, eps=0.1, steps=10)
    with torch.no_grad(), capture(model, ["penultimate"]) as acts:
        model(test.x)
        model(x_adv)
    result["feat_dist"] = float(feature_distance(acts["penultimate"][0], acts["penultimate"][1], "l2sq").mean())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="+", metavar="METHOD[:key=value,...]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="mnist-mini", choices=["mnist-mini", "decoy-mnist"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.methods:
        model = train(args.out, spec, args.dataset, args.epochs)
        row = {"method": spec, "dataset": args.dataset, "epochs": args.epochs,
               "train_s": round(model.train_seconds), **measure(model, args.dataset, args.out)}  # type: ignore[attr-defined]
        print(json.dumps(row), flush=True)
        io.append_jsonl(args.out / "effects.jsonl", [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
