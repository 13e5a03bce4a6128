"""Speed of the interval bounds relative to the passes they replace, measured side by side in one run.

    python bench/bounds.py            # full: more repeats and larger batches
    python bench/bounds.py --quick    # a few seconds, for a shared machine

Rows: gradient_bounds (eps 0.01, gamma 0.01, from x) vs one forward + backward (cross-entropy, gradients of the
parameters, as in a training step) of the same model and batch (target <= 4x); interval_forward over a given
box vs a forward pass (target <= 2.5x); both bounds evaluated without autograd, as in certification. Also shown:
a certified-explanation training step (forward, bounds and backward through both) vs a standard step (no target).
Every timing is the minimum over interleaved blocks of calls, so that machine load hits all methods alike.
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


def _time(fns: dict[str, Callable[[], object]], repeats: int, block: float = 0.02) -> dict[str, float]:
    """Seconds per call of each function: the minimum over `repeats` interleaved blocks of calls.

    Each block repeats a call until about `block` seconds pass (so microsecond calls are measured above timer
    and scheduler noise); blocks of all functions alternate, so load from other processes hits all alike, and
    the minimum estimates the unloaded time of each (the median is printed too when it differs a lot).
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
    return {name: min(ts) for name, ts in times.items()} | {f"{n} median": statistics.median(ts)
                                                              for n, ts in times.items()}


def bench_case(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds of each pass for one model and batch."""
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, min of {repeats} interleaved blocks")
    header = (f"{'model':28s} {'batch':>5s} {'fwd+bwd ms':>10s} {'bounds ms':>9s} {'ratio':>6s} {'fwd ms':>7s} "
              f"{'ibp ms':>7s} {'ratio':>6s} {'cert step/fwd+bwd':>17s}")
    print(header)
    print("-" * len(header))
    for name, make, shape in cases:
        model = make()
        for b in batches:
            t = bench_case(model, torch.rand(b, *shape), repeats)
            print(f"{name:28s} {b:5d} {1e3 * t['fwd+bwd']:10.3f} {1e3 * t['gradient_bounds']:9.3f} "
                  f"{t['gradient_bounds'] / t['fwd+bwd']:5.2f}x {1e3 * t['forward']:7.3f} {1e3 * t['ibp']:7.3f} "
                  f"{t['ibp'] / t['forward']:5.2f}x {t['cert_step'] / t['fwd+bwd']:16.2f}x")
    print("targets: gradient_bounds <= 4x fwd+bwd; ibp <= 2.5x forward")


if __name__ == "__main__":
    main()
