"""Speed of the interval bounds relative to the passes they replace, measured side by side in one run.

    python bench/bounds.py            # full: more repeats and larger batches
    python bench/bounds.py --quick    # a few seconds, for a shared machine

Rows: gradient_bounds (eps 0.01, gamma 0.01, from x) vs one forward + backward (cross-entropy, gradients of the
parameters, as in a training step) of the same model and batch (target <= 4x); interval_forward over a given
box vs a forward pass (target <= 2.5x); both bounds evaluated without autograd, as in certification. Also shown:
a certified-explanation training step (forward, bounds and backward through both) vs a standard step (no target).
Every method runs in rounds of interleaved blocks of calls (fwd+bwd, gradient_bounds, forward, ibp, cert step).
Times (ms) are the minimum over rounds; "ratio" is the median over rounds of the ratio of the two blocks in one
round (adjacent for both targets, so under nearly the same machine load), "(min)" the ratio of the two minima,
which a load burst during one method's best block can skew on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import clearsight as cs
from clearsight.bounds import gradient_bounds, interval_forward
from clearsight.objectives.certified import certified_explanation


def _time(fns: dict[str, Callable[[], object]], repeats: int, block: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each function in each of `repeats` rounds of interleaved blocks of calls.

    Each block repeats a call until about `block` seconds pass (so microsecond calls are measured above timer
    and scheduler noise); in every round the blocks of all functions run back to back, so a ratio of two
    adjacent blocks of one round compares the functions under the same machine load.
    """
    inner = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, round(block / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / inner[name])
    return times


def ratios(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float]:
    """(median over rounds of num/den in the same round, min(num) / min(den))."""
    paired = statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
    return paired, min(times[num]) / min(times[den])


def bench_case(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds of each pass for one model and batch, per round (`_time`)."""
    y = torch.randint(0, 10 if x.dim() > 2 else 2, (x.shape[0],))
    model.eval()

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def bounds() -> None:
        with torch.no_grad():
            gradient_bounds(model, x, y, eps=0.01, gamma=0.01)

    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)  # interval_forward takes a box

    def ibp() -> None:
        with torch.no_grad():
            interval_forward(model, lower, upper)

    def certified_step() -> None:
        model.zero_grad(set_to_none=True)
        certified_explanation(model, x, y, eps=0.01, gamma=0.01).loss.backward()

    return _time({"fwd+bwd": forward_backward, "gradient_bounds": bounds, "forward": forward, "ibp": ibp,
                  "cert_step": certified_step}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and one batch size per model")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.manual_seed(0)
    repeats = 7 if args.quick else 30
    batches = (128,) if args.quick else (128, 512)
    cases = [
        ("mlp 61-256-256-2 (german)", lambda: cs.models.build("mlp", num_classes=2, input_shape=(61,)), (61,)),
        ("mlp 103-256-256-2 (adult)", lambda: cs.models.build("mlp", num_classes=2, input_shape=(103,)), (103,)),
        ("mlp 784-256-256-10", lambda: cs.models.build("mlp", num_classes=10, input_shape=(1, 28, 28)), (1, 28, 28)),
        ("small-cnn avg 28x28", lambda: cs.models.build("small-cnn", num_classes=10, pool="avg"), (1, 28, 28)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} rounds of interleaved blocks")
    header = (f"{'model':28s} {'batch':>5s} {'fwd+bwd ms':>10s} {'bounds ms':>9s} {'ratio':>6s} {'(min)':>6s} "
              f"{'fwd ms':>7s} {'ibp ms':>7s} {'ratio':>6s} {'(min)':>6s} {'cert step/fwd+bwd':>17s}")
    print(header)
    print("-" * len(header))
    for name, make, shape in cases:
        model = make()
        for b in batches:
            t = bench_case(model, torch.rand(b, *shape), repeats)
            best = {k: 1e3 * min(v) for k, v in t.items()}
            grad, grad_min = ratios(t, "gradient_bounds", "fwd+bwd")
            ibp, ibp_min = ratios(t, "ibp", "forward")
            cert, _ = ratios(t, "cert_step", "fwd+bwd")
            print(f"{name:28s} {b:5d} {best['fwd+bwd']:10.3f} {best['gradient_bounds']:9.3f} {grad:5.2f}x "
                  f"{grad_min:5.2f}x {best['forward']:7.3f} {best['ibp']:7.3f} {ibp:5.2f}x {ibp_min:5.2f}x "
                  f"{cert:16.2f}x")
    print("targets: gradient_bounds <= 4x fwd+bwd; ibp <= 2.5x forward")


if __name__ == "__main__":
    main()
