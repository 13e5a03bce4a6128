"""clearsight pgd (linf and l2) side by side with torchattacks PGD / PGDL2: time, ratio to the floor, robust accuracy.

    python bench/attacks.py            # full run (quiet machine, 2 threads): a few minutes
    python bench/attacks.py --quick    # smoke run: 1 training epoch, one batch, few steps, one repeat

Model: small-cnn trained on mnist-mini with clearsight.fit (standard objective), cached in --cache (default
$CLEARSIGHT_DATA/bench or ~/.cache/clearsight/bench) so later runs load it. Inputs: mnist-mini test images.

Settings, matched honestly:
- both attack the model in eval mode, from a random start, with the same eps, steps and step size
  (2.5 * eps / steps, clearsight's default, passed to torchattacks as alpha), cross-entropy loss, 1 restart;
- linf random start: uniform in the eps cube for both;
- l2 random start: clearsight draws uniformly in the ball (radius eps * U^(1/D), the contract); torchattacks
  PGDL2 draws the radius uniform in [0, eps]. Same direction distribution. In D = 784 nearly all of our starts
  lie on the sphere in a random direction, and the budget spent on that direction is only slowly turned towards
  the gradient (at a rate set by step_size / eps, independent of steps), so ours can be slightly weaker on l2:
  in a 1,024-image check at 10 steps, robust accuracy 0.527 vs 0.520 (linf: 0.621 vs 0.622);
- clearsight returns per sample the worst iterate (misclassified first, else the highest loss) and scores the
  last iterate with one extra forward pass; torchattacks returns the last iterate. So ours does steps
  forward+backward passes plus one forward pass, and can only be stronger.
Robust accuracy = share of the images still classified correctly after the attack (misclassified clean images
count as broken for both).

Floor: `steps` forward+backward passes (gradient w.r.t. the input only) at the attack's batch size, each timed
with the parameters frozen and not, whichever is faster, measured in this same run, with the model as given
(NCHW weights). Shown beside it: the same on the clean images (on CPU a pass over perturbed MNIST images is
measurably slower than over clean ones, mostly in max pooling, whose cost depends on the data), and the same
with the weights in channels-last layout, which clearsight's attacks use on CPU (`clearsight.modes.channels_last`)
and which a torchattacks user can set up by hand (row "torchattacks ..., channels-last weights"). Ratios are
given to the NCHW ball floor. A single pass timed alone (best of a few) is cheaper than a pass inside a long
loop (caches, allocator), so one more reference is timed the way the attacks are, in the same rotated rounds:
a loop of `steps` plain passes at one point of the ball (column "x loop"). Times are the best of --repeats
runs (after a warm-up), the order rotated each round so load drift hits all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks

import clearsight as cs
from clearsight import attacks, io
from clearsight.attacks.ball import Ball
from clearsight.data.base import default_root
from clearsight.modes import channels_last, eval_mode, frozen_parameters


def trained_model(cache: Path, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cs.models.build("small-cnn", num_classes=10)
    run = cache / f"small-cnn-mnist-mini-e{epochs}"
    weights = run / "model.safetensors"
    if weights.exists():
        model.load_state_dict(io.load_weights(weights))
    else:
        train = cs.data.load("mnist-mini", split="train")
        cs.fit(model, "standard", train, epochs=epochs, batch_size=64, lr=0.05, out_dir=run, resume=True,
               progress="lines", device="cpu")
    return model.eval()


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def one_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    xi = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)


def layout(model: torch.nn.Module, x: torch.Tensor, nhwc: bool) -> contextlib.AbstractContextManager:
    """The model's weights in channels-last layout (as clearsight's attacks hold them on CPU), or as they are."""
    return channels_last(model, x) if nhwc else contextlib.nullcontext()


def floor_per_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, nhwc: bool) -> float:
    with eval_mode(model), layout(model, x, nhwc):
        one_pass(model, x, y)  # warm-up
        free = best_time(lambda: one_pass(model, x, y), repeats)
        with frozen_parameters(model):
            frozen = best_time(lambda: one_pass(model, x, y), repeats)
    return min(free, frozen)


def plain_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` input-gradient passes at one point of the ball, frozen parameters: the attack without its steps."""
    with eval_mode(model), frozen_parameters(model):
        for _ in range(steps):
            one_pass(model, x, y)
    return x


def in_layout(attack: Callable, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torchattacks on the model with channels-last weights, what a user could set up by hand."""
    with channels_last(model, x):
        return attack(x, y)


def robust(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode(model), torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 batch, 10 steps, 1 repeat")
    parser.add_argument("--cache", type=Path, default=default_root() / "bench", help="where the model is cached")
    parser.add_argument("--batch", type=int, default=256, help="attack batch size (torchattacks measured at 256)")
    parser.add_argument("--batches", type=int, default=None, help="number of test batches (default 4, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="pgd steps (default 40, quick 10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    steps = args.steps or (10 if args.quick else 40)
    batches = args.batches or (1 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)

    model = trained_model(args.cache, epochs=1 if args.quick else 3)
    test = cs.data.load("mnist-mini", split="test")
    n = min(batches * args.batch, len(test))
    x_all, y_all = test.x[:n], test.y[:n]
    print(f"small-cnn on mnist-mini: clean accuracy {robust(model, x_all, y_all):.3f} on {n} test images; "
          f"batch {args.batch}, {steps} steps, {args.threads} threads, best of {repeats}")

    settings = [("linf", 0.1), ("l2", 1.5)]  # from the MNIST evaluation grids (METHODS.md)
    header = f"{'attack':<36}{'time s':>9}{'x floor':>9}{'x loop':>9}{'x torchattacks':>16}{'robust acc':>12}"
    print(header)
    print("-" * len(header))
    for norm, eps in settings:
        alpha = 2.5 * eps / steps
        ours = partial(attacks.pgd, eps=eps, norm=norm, steps=steps, step_size=alpha)
        ta_cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
        theirs = ta_cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        times = dict.fromkeys(["floor", "floor clean", "floor nhwc", "ours", "theirs", "theirs nhwc", "loop"], 0.0)
        correct = {"ours": 0.0, "theirs": 0.0, "theirs nhwc": 0.0}
        for i in range(0, n, args.batch):
            x, y = x_all[i : i + args.batch], y_all[i : i + args.batch]
            times["floor clean"] += steps * floor_per_pass(model, x, y, max(repeats, 3), nhwc=False)
            inside = Ball(x, eps, norm).random_point(torch.Generator().manual_seed(i))
            times["floor"] += steps * floor_per_pass(model, inside, y, max(repeats, 3), nhwc=False)
            times["floor nhwc"] += steps * floor_per_pass(model, inside, y, max(repeats, 3), nhwc=True)
            runs = {"ours": partial(ours, model, x, y), "theirs": partial(theirs, x, y),
                    "theirs nhwc": partial(in_layout, theirs, model, x, y),
                    "loop": partial(plain_loop, model, inside, y, steps)}
            for run in runs.values():
                run()  # warm-up at the timed batch size (allocator, kernels)
            best = dict.fromkeys(runs, float("inf"))
            names = list(runs)
            for r in range(repeats):
                torch.manual_seed(r)
                k = r % len(names)
                for name in names[k:] + names[:k]:  # rotate the order: drift hits all alike
                    t0 = time.perf_counter()
                    x_adv = runs[name]()
                    best[name] = min(best[name], time.perf_counter() - t0)
                    if r == 0 and name in correct:
                        correct[name] += robust(model, x_adv, y) * x.shape[0]
            for name in best:
                times[name] += best[name]
        for name, label in (("ours", f"clearsight pgd {norm} eps {eps}"),
                            ("theirs", f"torchattacks {ta_cls.__name__} {norm} eps {eps}"),
                            ("theirs nhwc", "  same, channels-last weights")):
            ratio_ta = times[name] / times["theirs"]
            print(f"{label:<36}{times[name]:>9.3f}{times[name] / times['floor']:>9.3f}"
                  f"{times[name] / times['loop']:>9.3f}{ratio_ta:>16.3f}{correct[name] / n:>12.3f}")
        for key, label in (("floor", f"floor ({steps} x best single pass)"), ("floor clean", "  same, clean x"),
                           ("floor nhwc", "  same, channels-last weights"), ("loop", f"loop of {steps} plain passes")):
            print(f"{label:<36}{times[key]:>9.3f}{times[key] / times['floor']:>9.3f}"
                  f"{times[key] / times['loop']:>9.3f}")
    print("\ntargets: robust accuracy within 0.01 of torchattacks; our time <= theirs and <= 1.05 x floor")


if __name__ == "__main__":
    main()
