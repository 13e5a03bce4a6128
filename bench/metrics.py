"""clearsight.metrics side by side with Quantus 0.6: agreement, speed ratio, and each metric against its floor.

    python bench/metrics.py            # small-cnn trained 1 epoch on mnist-mini, 128 test images, 5 rounds
    python bench/metrics.py --quick    # smoke run: 32 images, fewer perturbations, 1 round

Same model (eval mode), same inputs (the first B mnist-mini test images), same labels as targets, and the same
attribution on both sides: clearsight's input gradient, given to Quantus as `a_batch` and, where it recomputes
explanations, as its `explain_func` (a wrapper around `cs.attributions.gradient`). Pairs:

    Quantus Sparseness              gini
    Quantus PixelFlipping           deletion_auc (the MoRF curve; Quantus's curve has no unperturbed start
                                    point and its AUC is the trapezoid rule with dx=1, ours is normalized to
                                    [0, 1], so the curves are compared point by point and the AUCs converted)
    Quantus MaxSensitivity          max_sensitivity (Quantus does not clip x + noise to [0, 1]; clearsight's
                                    attributions refuse inputs outside it, so Quantus is given the same clipped
                                    uniform noise through perturb_func)
    Quantus RelevanceMassAccuracy   relevance_mass(positive=False) (Quantus's signed ratio) on the strokes x > 0.5
    Quantus Infidelity              infidelity(perturbation="patches", patch=4) (Quantus's default: cumulative
                                    black 4x4 patches, the same deterministic perturbation n_perturb_samples=10
                                    times; clearsight makes each once)
    Quantus FaithfulnessCorrelation faithfulness_correlation (100 random subsets of 224 features)
    Quantus MPRT (top-down)         randomisation(layers=1..L), the cascading re-initialization with the same seed

Agreement: the max abs difference of the per-sample values. Random perturbations are made identical on both
sides where the metric draws them: MaxSensitivity's noise is clearsight's per-sample stream handed to Quantus step
by step; FaithfulnessCorrelation's subsets are Quantus's own np.random.choice draws, recorded in its perturb_func and
given to clearsight as `subsets=` (the timing rows draw clearsight's own subsets).

Floor: the forward passes (forward-only metrics, under inference mode) or input-gradient passes (metrics that
recompute attributions) the metric must make, run at the fastest batch size of 64-512 (found first, each size timed
over passes covering 2,048 images; randomisation: sizes up to B, as each of its passes runs a different model on
the call's B images). Every timing is the best of the rounds; in each round clearsight, Quantus and the floor's
passes run one after the other, so a change in the machine's speed (it is shared) moves all three alike.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import quantus
import torch
from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

import clearsight as cs
from clearsight.metrics import curves, perturb
from clearsight.metrics.shared import batch_cache

THREADS = 2
warnings.filterwarnings("ignore")


def setup(batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    train = cs.data.load("mnist-mini", split="train")
    model = cs.models.build("small-cnn", num_classes=10)
    cs.fit(model, "standard", train, epochs=1, batch_size=64, lr=0.05, progress="none", val_fraction=0.0,
           device="cpu")
    test = cs.data.load("mnist-mini", split="test")
    return model.eval(), test.x[:batch].clone(), test.y[:batch].clone()


def best(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def best_size(model: torch.nn.Module, x: torch.Tensor, *, backward: bool, rounds: int, images: int = 2048,
              largest: int = 512) -> int:
    """The batch size among 64..`largest` with the fastest forward (or input-gradient) passes per image, each size
    timed over a run of passes covering `images` images (a single pass of tens of milliseconds is too noisy)."""
    sizes = sorted({min(s, largest) for s in (64, 128, 256, 512)})  # a B under 64 (--quick): B alone
    return min(sizes, key=lambda size: best(passes(model, x, backward=backward, size=size, images=images)[0],
                                            rounds)[0] / images)


def passes(model: torch.nn.Module, x: torch.Tensor, *, backward: bool, size: int, images: int
           ) -> tuple[Callable[[], Any], float]:
    """A callable making the forward (or input-gradient) passes of batch `size` that cover `images` images, and the
    factor from its time to the time of exactly `images` images (a whole number of passes covers about as many)."""
    rows = x.repeat(math.ceil(size / x.shape[0]), 1, 1, 1)[:size]
    y = torch.zeros(size, dtype=torch.int64)
    n = max(1, round(images / size))

    def run():
        for _ in range(n):
            if backward:
                cs.attributions.gradient(model, rows, y)
            else:
                with torch.inference_mode():
                    model(rows)

    run()  # warm-up
    return run, images / (n * size)


def explain(model, inputs, targets, **_):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return cs.attributions.gradient(model, x, torch.as_tensor(targets, dtype=torch.int64)).numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    b = 32 if args.quick else 128
    rounds = 1 if args.quick else 5
    n_sens = 10 if args.quick else 50
    runs = 20 if args.quick else 100
    model, x, y = setup(b)
    xn, yn = x.numpy(), y.numpy()
    a = cs.attributions.gradient(model, x, y)
    an = a.numpy()
    fwd_size = best_size(model, x, backward=False, rounds=rounds)
    grad_size = best_size(model, x, backward=True, rounds=rounds)
    print(f"small-cnn (1 epoch), {b} mnist-mini test images, {THREADS} threads; fastest batch size: forward "
          f"{fwd_size}, input gradient {grad_size}", flush=True)
    rows = []

    def floor_of(images: int, *, backward: bool, size: int | None = None) -> tuple[Callable[[], Any], float]:
        return passes(model, x, backward=backward, size=size or (grad_size if backward else fwd_size), images=images)

    def record(name, ours_fn, theirs_fn, floor, agree):
        """Times ours, Quantus's and the floor's passes alternating in each round (load drift hits all three
        alike), best of the rounds each; `floor` is (passes callable, scale) or None (a reduction of a map)."""
        t_ours = t_theirs = t_floor = float("inf")
        for _ in range(rounds):
            t_ours = min(t_ours, best(ours_fn, 1)[0])
            t_theirs = min(t_theirs, best(theirs_fn, 1)[0])
            if floor is not None:
                t_floor = min(t_floor, best(floor[0], 1)[0] * floor[1])
        rows.append((name, t_ours, t_theirs, t_floor if floor is not None else 0.0, agree))
        print(f"  {name}: ours {t_ours:.3f} s, quantus {t_theirs:.3f} s", flush=True)

    # gini vs Sparseness
    sparse = quantus.Sparseness(disable_warnings=True)
    q = np.array(sparse(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy()))
    o = cs.metrics.gini(model, x, y, attribution=a).numpy()
    record("gini / Sparseness", lambda: cs.metrics.gini(model, x, y, attribution=a),
           lambda: sparse(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy()), None, np.abs(o - q).max())

    # deletion_auc vs PixelFlipping (28 steps of 28 pixels)
    flip = quantus.PixelFlipping(features_in_step=28, perturb_baseline="black", disable_warnings=True)
    q = np.array(flip(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy()))
    c = curves.deletion_curves(model, x, y, attribution=a, steps=28)["deletion"].numpy()
    agree = max(np.abs(c[:, 1:] - q).max(), np.abs(np.trapezoid(c[:, 1:], axis=1) - np.trapezoid(q, axis=1)).max())
    record("deletion_auc / PixelFlipping", lambda: cs.metrics.deletion_auc(model, x, y, attribution=a, steps=28),
           lambda: flip(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy()),
           floor_of(29 * b, backward=False), agree)

    # max_sensitivity vs MaxSensitivity, identical clipped noise
    radius = 0.2
    noise = perturb.draw(b, n_sens, tuple(x.shape[1:]), kind="uniform", generator=torch.Generator().manual_seed(1),
                         dtype=x.dtype, device="cpu").numpy()
    step = {"t": 0}

    def shared_noise(arr, indices, **_):
        moved = arr + radius * (2 * noise[:, step["t"] % n_sens].reshape(arr.shape) - 1)
        step["t"] += 1
        return np.clip(moved, 0.0, 1.0)

    def quantus_sens():
        step["t"] = 0
        m = quantus.MaxSensitivity(nr_samples=n_sens, lower_bound=radius, perturb_func=shared_noise,
                                   disable_warnings=True)
        return np.array(m(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), explain_func=explain,
                          batch_size=b))

    q = quantus_sens()

    def ours_sens():
        return cs.metrics.max_sensitivity(model, x, y, attribution="gradient", n=n_sens, radius=radius,
                                          generator=torch.Generator().manual_seed(1))

    record(f"max_sensitivity n={n_sens} / MaxSensitivity", ours_sens, quantus_sens,
           floor_of((n_sens + 1) * b, backward=True),
           np.abs(ours_sens().numpy() - q).max())

    # relevance_mass vs RelevanceMassAccuracy, strokes mask
    mask = (x > 0.5)
    rma = quantus.RelevanceMassAccuracy(disable_warnings=True)
    sn = mask.numpy().astype(np.float32)
    q = np.array(rma(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), s_batch=sn))
    o = cs.metrics.relevance_mass(model, x, y, attribution=a, mask=mask, positive=False).numpy()
    record("relevance_mass / RelevanceMassAccuracy",
           lambda: cs.metrics.relevance_mass(model, x, y, attribution=a, mask=mask, positive=False),
           lambda: rma(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), s_batch=sn), None,
           np.abs(o - q).max())

    # infidelity vs Infidelity (patches of 4: 49 cumulative perturbations)
    infid = quantus.Infidelity(perturb_patch_sizes=[4], disable_warnings=True)
    q = np.array(infid(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), batch_size=b))
    o = cs.metrics.infidelity(model, x, y, attribution=a, perturbation="patches", patch=4).numpy()
    record("infidelity patches / Infidelity",
           lambda: cs.metrics.infidelity(model, x, y, attribution=a, perturbation="patches", patch=4),
           lambda: infid(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), batch_size=b),
           floor_of(50 * b, backward=False), np.abs(o - q).max() / max(np.abs(q).max(), 1e-12))

    # faithfulness_correlation vs FaithfulnessCorrelation; for the agreement clearsight gets the subsets Quantus drew
    # (recorded in its perturb_func), since Quantus draws them with np.random among other numpy draws
    drawn: list[np.ndarray] = []

    def recording(arr, indices, **kwargs):
        drawn.append(np.array(indices))
        return batch_baseline_replacement_by_indices(arr, indices, **kwargs)

    recorded = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=224, return_aggregate=False,
                                               perturb_func=recording, disable_warnings=True)
    q = np.array(recorded(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), batch_size=b))
    subsets = torch.as_tensor(np.stack(drawn, axis=1), dtype=torch.int64)  # [B, runs, 224]
    o = cs.metrics.faithfulness_correlation(model, x, y, attribution=a, runs=runs, subset=224,
                                            subsets=subsets).numpy()
    faith = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=224, return_aggregate=False,
                                            disable_warnings=True)
    record(f"faithfulness_correlation runs={runs} / FaithfulnessCorrelation",
           lambda: cs.metrics.faithfulness_correlation(model, x, y, attribution=a, runs=runs, subset=224,
                                                       generator=torch.Generator().manual_seed(0)),
           lambda: faith(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), batch_size=b),
           floor_of((runs + 1) * b, backward=False), np.nanmax(np.abs(o - q)))

    # randomisation vs MPRT: the same cascading top-down re-initialization (Quantus seeds seed + 1 per layer)
    layers = len(cs.metrics.sanity.top_layers(model, 100))
    mprt = quantus.MPRT(seed=42, disable_warnings=True)
    scores = mprt(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), explain_func=explain, batch_size=b)
    names = [k for k in scores if k != "original"]

    def ours_rand():  # in a batch cache, as in evaluation: the trained model's map is made once for the L rows
        with batch_cache():
            return [cs.metrics.randomisation(model, x, y, attribution=cs.attributions.gradient, layers=k, seed=43)
                    for k in range(1, layers + 1)]

    o = ours_rand()
    # its passes run a different model each (trained, then each cascade step): none can hold more than the call's
    # B images, so its floor is the fastest batch size up to B
    rand_size = best_size(model, x, backward=True, rounds=rounds, largest=b)
    agree = max(np.abs(o[k].numpy() - np.array(scores[names[k]])).max() for k in range(layers))
    record(f"randomisation layers=1..{layers} / MPRT",
           ours_rand, lambda: mprt(model=model, x_batch=xn, y_batch=yn, a_batch=an.copy(), explain_func=explain,
                                   batch_size=b),
           floor_of((layers + 1) * b, backward=True, size=rand_size), agree)

    print()
    print(f"{'metric / Quantus':<52} {'ours s':>8} {'quantus s':>10} {'q/ours':>7} {'floor s':>8} {'ours/fl':>8} "
          f"{'max|diff|':>10}")
    for name, t_o, t_q, floor, agree in rows:
        ratio = f"{t_o / floor:8.2f}" if floor > 0 else f"{'-':>8}"
        print(f"{name:<52} {t_o:8.3f} {t_q:10.3f} {t_q / t_o:7.1f} {floor:8.3f} {ratio} {agree:10.2e}")
    print("(infidelity: relative difference; randomisation floor: the trained map once and one randomised map per "
          "row, (L + 1) B gradients at the best batch size up to B)")


if __name__ == "__main__":
    main()
