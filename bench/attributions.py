"""clearsight.attributions side by side with Captum: time, ratio to the floor, agreement, peak memory.

    python bench/attributions.py            # full run (quiet machine, 2 threads): a few minutes
    python bench/attributions.py --quick    # smoke run: small batches, few steps, resnet18 at width 16

Models (random init, seeded, eval mode): small-cnn on mnist-mini test images, resnet18 on 32x32 uniform inputs.
Targets: the predicted class.

Floor. A multi-sample method must run B * n (n copies or steps) input-gradient passes; its floor is
B * n * t*, where t* is the best per-image time of one forward+backward (gradient w.r.t. the input only, with
and without the parameters requiring grad, whichever is faster) over a range of batch sizes, measured in this
same run on the images (for smoothgrad: on noisy copies of them at that best batch size, since a pass over
noisy images is slower on CPU than over clean ones, mostly in max pooling; the clean-image floor is printed
beside it). Single-pass methods: the floor is one such pass of the batch itself. Ours runs with max_batch = the
best batch size found; Captum with its defaults (all n copies in one batch) and, for reference, chunked too.

Agreement (max abs difference of the attributions):
- gradient / input_x_gradient / integrated_gradients / grad_cam are deterministic: compared directly (Captum
  Saliency(abs=False), InputXGradient, IntegratedGradients method riemann_middle / riemann_trapezoid, and
  LayerGradCam(relu_attributions=True) upsampled with LayerAttribution.interpolate(bilinear)).
- smoothgrad / vargrad draw random noise, and the two libraries draw it differently, so independent runs can
  only agree statistically. To compare the computation itself with identical noise, the exact noisy copies
  Captum's NoiseTunnel feeds the model are recorded with a forward pre-hook (Captum lays them out sample-major,
  like clearsight); clearsight then runs with sigma=0 and a `base` that adds the recorded noise to each chunk
  of copies before taking the gradient. This checks our chunked reduction (mean / variance over copies,
  samples straddling chunks) on Captum's own noise; our noise generator (randn * sigma) is tested separately
  in tests/test_attributions.py. The timing rows use real noise with sigma=0.15 for both libraries.

Peak memory (Linux). Each configuration runs in a fresh subprocess. After setup and a warm-up call on one image
the child resets its resident-set high-water mark (writing 5 to /proc/self/clear_refs) and reads its resident
set size; after the attribution call it reads the high-water mark again (VmHWM in /proc/self/status). The
difference is the peak growth of RAM during the call: everything it touched (activations, gradients, noise,
allocator slack), not just tensors. (getrusage's ru_maxrss cannot be used: on Linux a child inherits the
parent's high-water mark across fork and exec.)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)

import clearsight as cs
import clearsight.attributions as A
from clearsight.modes import frozen_parameters

THREADS = 2

# Captum warns each time it turns on requires_grad of the inputs it was given
warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


def setup(model_name: str, batch: int, *, width: int = 64,
          seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    if model_name == "small-cnn":
        model = cs.models.build("small-cnn", num_classes=10).eval()
        x = cs.data.load("mnist-mini", split="test").x[:batch].clone()
    else:
        model = cs.models.build("resnet18", num_classes=10, width=width).eval()
        x = torch.rand(batch, 3, 32, 32)
    return model, x, A.predicted(model, x)


def best_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best seconds per call of each function, the calls interleaved (one of each per round) so that load drift
    on a shared machine hits every function alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, kernels)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    return best_times({"fn": fn}, repeats)["fn"]


def per_image_pass(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, size: int, repeats: int) -> float:
    """Best seconds per image of one input-gradient forward+backward at batch `size`."""
    reps = -(-size // x.shape[0])
    xb, tb = x.repeat(reps, *[1] * (x.dim() - 1))[:size], t.repeat(reps)[:size]

    def one_pass() -> None:
        xi = xb.detach().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, tb[:, None]).sum(), xi)

    times = [best_time(one_pass, repeats)]
    with frozen_parameters(model):
        times.append(best_time(one_pass, repeats))
    return min(times) / size


def recorded_noise(model: torch.nn.Module, x: torch.Tensor, run: Callable[[], Any]) -> tuple[Any, torch.Tensor]:
    """Run a Captum NoiseTunnel call and return (its result, the noise it added, [B * n, ...] sample-major)."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        result = run()
    finally:
        handle.remove()
    rows = torch.cat(seen)
    n = rows.shape[0] // x.shape[0]
    return result, rows - x.repeat_interleave(n, dim=0)


def injected_gradient(noise: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A smoothgrad `base` adding the recorded noise rows, in order, to the copies it receives (sigma=0)."""
    position = 0

    def base(model: torch.nn.Module, rows: torch.Tensor, target: torch.Tensor, *,
             create_graph: bool = False) -> torch.Tensor:
        nonlocal position
        add = noise[position:position + rows.shape[0]]
        position += rows.shape[0]
        return A.gradient(model, rows + add, target, create_graph=create_graph)

    return base


def compare(model_name: str, batch: int, n: int, sizes: list[int], repeats: int, chunked_captum: bool,
            width: int = 64) -> list[dict]:
    model, x, t = setup(model_name, batch, width=width)
    per_image = {s: per_image_pass(model, x, t, s, repeats) for s in sizes}
    best = min(per_image, key=lambda s: per_image[s])
    curve = ", ".join(f"{s}: {per_image[s] * 1e3:.3f} ms" for s in sizes)
    label = f"{model_name} (width {width})" if width != 64 else model_name
    print(f"\n{label}: {batch} images {tuple(x.shape[1:])}; one input-gradient pass per image by batch size: "
          f"{curve} -> best {best}", flush=True)
    single_floor = per_image_pass(model, x, t, batch, repeats) * batch
    multi_floor = batch * n * per_image[best]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sal = Saliency(model)
    rows: list[dict] = []

    def row(method: str, ours_fn: Callable[[], torch.Tensor], captum_fn: Callable[[], torch.Tensor] | None,
            floor: float, diff: float | None = None, captum_chunked: Callable[[], Any] | None = None) -> None:
        fns = {"ours": ours_fn, "captum": captum_fn, "chunked": captum_chunked}
        times = best_times({k: f for k, f in fns.items() if f is not None}, repeats)
        ours_s, captum_s = times["ours"], times.get("captum", float("nan"))
        chunked_s = times.get("chunked", float("nan"))
        if diff is None and captum_fn is not None:
            diff = float((ours_fn() - captum_fn()).detach().abs().max())
        rows.append({"model": model_name, "method": method, "ours": ours_s, "floor": floor, "captum": captum_s,
                     "captum_chunked": chunked_s, "diff": diff})
        print(f"  {method:<24} ours {ours_s:8.3f} s  captum {captum_s:8.3f} s", flush=True)

    row("gradient", lambda: A.gradient(model, x, t), lambda: sal.attribute(x, target=t, abs=False), single_floor)
    row("input_x_gradient", lambda: A.input_x_gradient(model, x, t),
        lambda: InputXGradient(model).attribute(x, target=t), single_floor)
    ig = IntegratedGradients(model)
    row(f"integrated_gradients {n}", lambda: A.integrated_gradients(model, x, t, steps=n, max_batch=best),
        lambda: ig.attribute(x, target=t, n_steps=n, method="riemann_middle"), multi_floor,
        captum_chunked=(lambda: ig.attribute(x, target=t, n_steps=n, method="riemann_middle",
                                             internal_batch_size=best)) if chunked_captum else None)
    # Captum's riemann_trapezoid weights are 1/n (halved at the ends) on n points spanning [0, 1]: they sum to
    # (n-1)/n, not 1 (ours: 1/(n-1), the composite trapezoid rule, which keeps completeness). Same points, so
    # ours * (n-1)/n must equal Captum's exactly; the unscaled difference is printed too.
    ours_trap = A.integrated_gradients(model, x, t, steps=n, method="trapezoid", max_batch=best)
    captum_trap = ig.attribute(x, target=t, n_steps=n, method="riemann_trapezoid")
    rows.append({"model": model_name, "method": f"  (trapezoid {n}, x(n-1)/n)",
                 "diff": float((ours_trap * (n - 1) / n - captum_trap).abs().max())})
    rows.append({"model": model_name, "method": f"  (trapezoid {n}, as is)",
                 "diff": float((ours_trap - captum_trap).abs().max())})

    nt = NoiseTunnel(sal)
    for kind, ours in (("smoothgrad", A.smoothgrad), ("vargrad", A.vargrad)):
        torch.manual_seed(1)
        captum_result, noise = recorded_noise(
            model, x, lambda kind=kind: nt.attribute(x, nt_type=kind, nt_samples=n, stdevs=0.15, target=t,
                                                     abs=False))
        same_noise = ours(model, x, t, n=n, sigma=0.0, base=injected_gradient(noise), max_batch=best)
        diff = float((same_noise - captum_result).abs().max())
        if kind == "vargrad":  # agreement only: timing is the same mechanism as smoothgrad
            rows.append({"model": model_name, "method": f"  (vargrad {n}: agreement only)", "diff": diff})
            continue
        # the floor of smoothgrad is measured on noisy copies: on CPU a pass over noisy images costs more than
        # over clean ones (max pooling's cost depends on the data), and noisy copies are what it must pass
        noisy = x + 0.15 * torch.randn(x.shape, generator=gen())
        noisy_floor = batch * n * per_image_pass(model, noisy, t, best, repeats)
        rows.append({"model": model_name, "method": f"  (clean-image floor {multi_floor:.3f} s)", "diff": float("nan")})
        row(f"smoothgrad {n}", lambda: A.smoothgrad(model, x, t, n=n, sigma=0.15, max_batch=best, generator=gen()),
            lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=0.15, target=t, abs=False),
            noisy_floor, diff=diff,
            captum_chunked=(lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=0.15, target=t,
                                                 abs=False, nt_samples_batch_size=max(1, best // batch)))
            if chunked_captum else None)

    cam = LayerGradCam(model, model.features)
    size = tuple(x.shape[-2:])
    row("grad_cam", lambda: A.grad_cam(model, x, t),
        lambda: LayerAttribution.interpolate(cam.attribute(x, target=t, relu_attributions=True), size,
                                             interpolate_mode="bilinear"), single_floor)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<10} {'method':<26} {'ours s':>8} {'floor s':>8} {'ours/fl':>8} {'captum s':>9} "
          f"{'cap/fl':>7} {'cap/ours':>8} {'cap-chunk/fl':>12} {'max|diff|':>10}")
    for r in rows:
        if "ours" not in r:
            diff = "" if math.isnan(r["diff"]) else f"{r['diff']:.2e}"
            print(f"{r['model']:<10} {r['method']:<26} {'':>8} {'':>8} {'':>8} {'':>9} {'':>7} {'':>8} {'':>12} "
                  f"{diff:>10}")
            continue
        print(f"{r['model']:<10} {r['method']:<26} {r['ours']:>8.3f} {r['floor']:>8.3f} "
              f"{r['ours'] / r['floor']:>8.2f} {r['captum']:>9.3f} {r['captum'] / r['floor']:>7.2f} "
              f"{r['captum'] / r['ours']:>8.2f} {r['captum_chunked'] / r['floor']:>12.2f} {r['diff']:>10.2e}")


def memory_child(config: dict) -> None:
    """Runs in a fresh process: prints {"baseline_mb", "peak_mb"} as JSON."""
    torch.set_num_threads(THREADS)
    model, x, t = setup("small-cnn", config["batch"])
    A.gradient(model, x[:1], t[:1])  # warm-up: kernels and allocator of the pass itself
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _status_kib("VmRSS")
    rows = config["batch"] * config["n"]
    max_batch = config["max_batch"] or rows  # None: every copy in one pass
    if config["lib"] == "ours" and config["method"] == "smoothgrad":
        A.smoothgrad(model, x, t, n=config["n"], max_batch=max_batch)
    elif config["lib"] == "ours":
        A.integrated_gradients(model, x, t, steps=config["n"], max_batch=max_batch)
    elif config["method"] == "smoothgrad":
        NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=config["n"], stdevs=0.15,
                                                target=t, abs=False)
    else:
        IntegratedGradients(model).attribute(x, target=t, n_steps=config["n"], method="riemann_middle")
    after = _status_kib("VmHWM")
    print(json.dumps({"baseline_mb": before / 1024, "peak_mb": after / 1024}))


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (peak memory is measured on Linux only)")


def memory(batch: int, max_batch: int) -> None:
    print(f"\npeak memory, small-cnn, {batch} images, fresh process per row (growth of peak RSS during the call)")
    print(f"{'method':<26} {'library':<8} {'max_batch':>10} {'rows':>7} {'peak growth MB':>15} {'baseline MB':>12}")
    for method, n in (("smoothgrad", 50), ("integrated_gradients", 200)):
        for lib, mb in (("ours", max_batch), ("ours", None), ("captum", None)):
            config = {"method": method, "n": n, "batch": batch, "max_batch": mb, "lib": lib}
            out = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(config)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = str(mb) if mb else "none (all)"
            print(f"{method + ' ' + str(n):<26} {lib:<8} {label:>10} {batch * n:>7} "
                  f"{r['peak_mb'] - r['baseline_mb']:>15.0f} {r['baseline_mb']:>12.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-batch", type=int, default=None, help="images in the memory runs")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; clearsight {cs.__version__}")
    if args.quick:
        rows = compare("small-cnn", 16, 8, [64, 128], repeats=1, chunked_captum=False)
        rows += compare("resnet18", 4, 4, [16], repeats=1, chunked_captum=False, width=16)
    else:
        rows = compare("small-cnn", 64, 50, [32, 64, 128, 256, 512], repeats=3, chunked_captum=True)
        rows += compare("resnet18", 8, 50, [16, 32, 64, 128], repeats=2, chunked_captum=True)
    print_table(rows)
    print("ours/fl: ours over the floor (target <= 1.1); cap/ours: how many times faster ours is than Captum "
          "(target >= 1.7 for integrated_gradients and smoothgrad); cap-chunk/fl: Captum given our chunk size.")
    if not args.no_memory:
        memory(args.memory_batch or (2 if args.quick else 32), 256)


if __name__ == "__main__":
    main()
