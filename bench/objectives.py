"""Training-step time of every objective relative to a `standard` step, side by side in one run, and peak memory.

    python bench/objectives.py                 # small-cnn (mnist-mini) and the tabular mlp (german-credit)
    python bench/objectives.py --quick         # smoke run: few rounds
    python bench/objectives.py --only pgd-at   # some objectives only (standard is always timed)

A step is what `clearsight.fit` does per batch: the objective, backward, optimizer step (SGD, momentum), with the
model in train mode. All objectives are timed in the same rounds, their order rotated each round so load drift
hits all alike; each row is the median over rounds of one step's time, and its ratio to the median standard
step of the same model and batch (batch 128). Targets: double-backprop objectives (input-gradient, jacobian, ir,
activation-sensitivity) at most 3x a standard step; an attack-based objective with k attack steps (pgd-at,
trades, consistency-at, scaat) at most (k + 1) x 1.1 standard steps, plus 1 for scaat's saliency pass (the
target column).

Column "attack/floor": for attack-based objectives, the time of the `clearsight.attacks.pgd` call inside the step
(mode switches, layout swap and probe, input checks, k steps) divided by the time of k bare forward+backward
passes with respect to the input at the same batch in the same round (the passes it must make): what the
attack's machinery costs beyond its passes.

`--targets`: `clearsight.targets.teacher_maps` (the work of `clearsight targets`: n=50 clipped noisy copies plus
the clean image per image, sparsified) over the first --targets-images mnist-mini training images in batches of
256, against its floor, the 51 input-gradient passes per image it must make, timed as plain eval-mode passes at
the batch size that maps use (256 rows), in the same rounds.

Peak memory: each objective runs in a fresh subprocess: one warm-up step, then glibc's free memory is returned to
the system (malloc_trim) and the resident set size is read as the baseline; a thread samples it every 0.2 ms
during three more steps. The column is the largest sample minus the baseline, in MiB: the memory a step needs
beyond the model, optimizer state and data.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import clearsight as cs
from clearsight.errors import ConfigError
from clearsight.modes import eval_mode, frozen_parameters

# attack steps timed (pgd-at: 7 as in Madry et al.'s CIFAR setting; trades: METHODS.md's 10) and the extra
# passes an objective is allowed beyond its k attack steps and one training step (scaat: its saliency pass)
STEPS = {"pgd-at": 7, "trades": 10, "consistency-at": 7, "scaat": 7}
EXTRA_PASSES = {"scaat": 1.0}
SETUPS = {"small-cnn": ("mnist-mini", {}), "mlp": ("german-credit", {"widths": [256, 256]})}
BATCH = 128
PAGE = os.sysconf("SC_PAGE_SIZE")


def setup(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    dataset, options = SETUPS[model_name]
    data = cs.data.load(dataset, "train")
    torch.manual_seed(0)
    model = cs.models.build(model_name, num_classes=data.num_classes, input_shape=data.input_shape, **options)
    batch = data.batch(torch.arange(BATCH))
    x, y = batch.pop("x"), batch.pop("y")
    batch["target_map"] = torch.randn_like(x)  # ir's extra (a real teacher's maps cost the same to read)
    return model, x, y, batch


def objective_for(name: str, dataset: str) -> Callable[..., Any]:
    options = {"steps": STEPS[name]} if name in STEPS else {}
    return cs.objectives.build(name, dataset=dataset, **options)


def make_step(model: torch.nn.Module, objective: Callable[..., Any], x: torch.Tensor, y: torch.Tensor,
              batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        model.train()
        out = objective(model, x, y, progress=1.0, epoch=0, **batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step


def input_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> Callable[[], None]:
    """k forward+backward passes with respect to the input, eval mode, frozen weights: an attack's floor."""

    def run() -> None:
        with eval_mode(model), frozen_parameters(model):
            for _ in range(k):
                xi = x.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)

    return run


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attack_time_inside(step: Callable[[], None]) -> tuple[float, float]:
    """(step time, time spent inside clearsight.attacks.pgd during that step)."""
    from clearsight.objectives import adversarial

    spent = 0.0
    original = adversarial.pgd

    def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal spent
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent += time.perf_counter() - t0

    adversarial.pgd = wrapped  # type: ignore[assignment]
    try:
        total = timed(step)
    finally:
        adversarial.pgd = original  # type: ignore[assignment]
    return total, spent


def bench_model(model_name: str, names: list[str], rounds: int) -> list[dict[str, Any]]:
    model, x, y, batch = setup(model_name)
    dataset = SETUPS[model_name][0]
    steps = {n: make_step(copy.deepcopy(model), objective_for(n, dataset), x, y, batch) for n in names}
    for n in list(steps):  # an objective this model cannot take (bounds refuse max pooling) is left out, said why
        try:
            steps[n]()
        except ConfigError as err:
            print(f"{model_name:<10} {n:<22} n/a: {err}", flush=True)
            del steps[n]
    names = [n for n in names if n in steps]
    floors = {n: input_passes(copy.deepcopy(model), x, y, STEPS[n]) for n in names if n in STEPS}
    times: dict[str, list[float]] = {n: [] for n in names}
    attack: dict[str, list[float]] = {n: [] for n in floors}
    floor: dict[str, list[float]] = {n: [] for n in floors}
    for fn in [*steps.values(), *floors.values()]:  # warm-up
        fn()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            if n in floors:
                total, spent = attack_time_inside(steps[n])
                times[n].append(total)
                attack[n].append(spent)
                floor[n].append(timed(floors[n]))
            else:
                times[n].append(timed(steps[n]))
    base = statistics.median(times["standard"])
    rows = []
    for n in names:
        t = statistics.median(times[n])
        k = STEPS.get(n)
        double = cs.objectives.OBJECTIVES.meta(n)["needs_double_backprop"]
        budget = (k + 1) * 1.1 + EXTRA_PASSES.get(n, 0.0) if k is not None else 3.0 if double else None
        row = {"model": model_name, "objective": n, "ms": 1e3 * t, "ratio": t / base, "budget": budget,
               "attack_steps": k}
        if n in floors:
            row["attack/floor"] = statistics.median(a / f for a, f in zip(attack[n], floor[n], strict=True))
        rows.append(row)
    return rows


def peak_memory(model_name: str, name: str) -> float:
    """MiB the peak RSS grows by over three steps of `name`, measured in a fresh subprocess."""
    out = subprocess.run([sys.executable, __file__, "--memory", model_name, name], capture_output=True, text=True,
                         check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mib"])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def memory_child(model_name: str, name: str) -> None:
    model, x, y, batch = setup(model_name)
    step = make_step(model, objective_for(name, SETUPS[model_name][0]), x, y, batch)
    step()  # warm-up: optimizer state and lazily made buffers exist from here on
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline, peak, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    print(json.dumps({"mib": max(peak[0] - baseline, 0) / 2**20}))


def bench_targets(images: int, rounds: int) -> dict[str, float]:
    from clearsight import targets

    model, _, _, _ = setup("small-cnn")
    model.eval()
    data = cs.data.load("mnist-mini", "train")
    x, y = data.x[:images], data.y[:images]

    def maps() -> None:
        g = torch.Generator().manual_seed(0)
        for i in range(0, images, 256):
            targets.teacher_maps(model, x[i : i + 256], y[i : i + 256], generator=g)

    rows = data.x[:256]

    def floor() -> None:  # 51 passes per image, 256 rows per pass
        passes = input_passes(model, rows, data.y[:256], 1)
        for _ in range(-(-images * 51 // 256)):
            passes()

    maps()
    floor()
    t_maps, t_floor = [], []
    for _ in range(rounds):
        t_maps.append(timed(maps))
        t_floor.append(timed(floor))
    return {"images": images, "maps_s": statistics.median(t_maps), "floor_s": statistics.median(t_floor),
            "ratio": statistics.median(a / b for a, b in zip(t_maps, t_floor, strict=True))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="objectives to time (standard is always included)")
    parser.add_argument("--models", nargs="*", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--memory", nargs=2, metavar=("MODEL", "OBJECTIVE"), help=argparse.SUPPRESS)
    parser.add_argument("--targets", action="store_true", help="time the target maps against their floor instead")
    parser.add_argument("--targets-images", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory:
        memory_child(*args.memory)
        return 0
    rounds = 3 if args.quick else args.rounds
    if args.targets:
        r = bench_targets(256 if args.quick else args.targets_images, 2 if args.quick else 5)
        print(f"targets over {r['images']} images: {r['maps_s']:.1f} s, floor {r['floor_s']:.1f} s, "
              f"ratio {r['ratio']:.3f} (median of paired rounds)")
        return 0
    names = ["standard", *[n for n in (args.only or cs.objectives.OBJECTIVES.names()) if n != "standard"]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {rounds} rounds")
    print(f"{'model':<10} {'objective':<22} {'ms/step':>9} {'x standard':>11} {'target':>8} {'attack/floor':>13} "
          f"{'peak MiB':>9}")
    for model_name in args.models:
        for row in bench_model(model_name, names, rounds):
            budget = f"<= {row['budget']:.1f}" if row["budget"] is not None else ""
            floor = f"{row['attack/floor']:.2f}" if "attack/floor" in row else ""
            mib = peak_memory(model_name, row["objective"])
            print(f"{row['model']:<10} {row['objective']:<22} {row['ms']:9.1f} {row['ratio']:11.2f} {budget:>8} "
                  f"{floor:>13} {mib:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
