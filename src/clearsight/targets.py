"""Target maps for Interpretation Regularization (Noack et al., arXiv 1912.03430): compute, store, attach.

A teacher run's target maps are computed once per dataset (`clearsight targets TEACHER_RUN --out FILE`) for the
train and test splits of the teacher's dataset and written atomically as one safetensors file: a tensor per
split plus the teacher's identity (run directory, sha256 of its config.yaml and model.safetensors), every
setting, and a fingerprint of each split's data (name, split, shape and the sha256 of its inputs and labels).

`attach(dataset, FILE)` returns the dataset with the maps as the per-sample extra `target_map`, which
`ArrayDataset.batch` carries to objectives, so the maps follow the validation split, shuffling and data-parallel
shards. It refuses a file whose data fingerprint differs from the dataset's (another dataset, split, order or
preprocessing) and a stale one (the teacher run still exists but its weights changed since).

The maps [code]: SmoothGrad of the teacher, 50 noisy copies (sigma 0.15, clipped to [0, 1]) plus the clean image,
signed gradients of the true-class logit, averaged; then each map is sparsified two-sided, keeping the entries
farther than t standard deviations (t = 1) from the map's mean.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clearsight import __version__, io
from clearsight.attributions import gradient, smoothgrad
from clearsight.attributions.chunks import DEFAULT_MAX_BATCH
from clearsight.data.base import ArrayDataset
from clearsight.errors import CheckpointError, ConfigError, DataError
from clearsight.modes import eval_mode
from clearsight.progress import reporter

FORMAT = "clearsight-targets/1"
ATTRIBUTIONS = ("smoothgrad", "gradient")
EXTRA = "target_map"


def sparsify(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per map [B, ...]: keep the entries with |m - mean(m)| > threshold * std(m), zero the rest; 0 keeps all.

    The standard deviation is the population one (numpy's default, which the authors' code uses).
    """
    if threshold == 0:
        return maps
    flat = maps.flatten(1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, correction=0, keepdim=True)
    return torch.where((flat - mean).abs() > threshold * std, flat, torch.zeros_like(flat)).view_as(maps)


def teacher_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: str = "smoothgrad",
                 n: int = 50, sigma: float = 0.15, threshold: float = 1.0, absolute: bool = False,
                 generator: torch.Generator | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Target maps [B, ...] of inputs x for labels y: see the module docstring.

    `attribution="smoothgrad"`: (n * smoothgrad(clip=True) + gradient) / (n + 1), the mean over the n noisy copies
    and the clean image; "gradient": the plain gradient (a control of the paper). `absolute` takes |.| before
    sparsifying (another control). The model is used in eval mode (flags restored).
    """
    if attribution not in ATTRIBUTIONS:
        raise ConfigError(f"unknown target attribution {attribution!r}; valid: {', '.join(ATTRIBUTIONS)}")
    if not threshold >= 0:
        raise ConfigError(f"the sparsification threshold must be >= 0 standard deviations, got {threshold}")
    with eval_mode(model):
        maps = gradient(model, x, y)
        if attribution == "smoothgrad":
            noisy = smoothgrad(model, x, y, n=n, sigma=sigma, clip=True, generator=generator, max_batch=max_batch)
            maps = (n * noisy + maps) / (n + 1)
    return sparsify(maps.abs() if absolute else maps, threshold)


def fingerprint(data: ArrayDataset) -> dict[str, Any]:
    """What identifies a split's samples and their order: name, split, shape and the sha256 of inputs and labels."""
    digest = hashlib.sha256()
    digest.update(data.x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(data.y.detach().cpu().contiguous().numpy().tobytes())
    return {"dataset": data.name, "split": data.split, "shape": list(data.x.shape), "sha256": digest.hexdigest()}


def teacher_identity(run_dir: Path) -> dict[str, str]:
    run_dir = Path(run_dir).resolve()
    return {"run": str(run_dir), "config_sha256": io.sha256_file(run_dir / "config.yaml"),
            "weights_sha256": io.sha256_file(run_dir / "model.safetensors")}


def compute(run_dir: str | Path, out: str | Path, *, attribution: str = "smoothgrad", n: int = 50,
            sigma: float = 0.15, threshold: float = 1.0, absolute: bool = False, seed: int = 0,
            batch_size: int = 256, device: str | torch.device = "cpu", progress: str = "auto") -> Path:
    """Compute the teacher run's target maps for the train and test splits of its dataset and write `out`.

    The noise is drawn from one generator seeded with `seed`, batch after batch in dataset order, so the file is
    reproducible. `out` must not exist (nothing is ever overwritten); it is written atomically.
    """
    from clearsight.runs import load_data, open_run  # runs imports models and data: keep this module light

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; give another --out or delete it first. Nothing was changed.")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the folder {out.parent} does not exist")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    run = open_run(run_dir, device=device)
    splits = {split: load_data(run.config, split) for split in ("train", "test")}
    generator = torch.Generator(device=torch.device(device)).manual_seed(int(seed))
    report = reporter(progress)
    bar = report.bar(sum(-(-len(d) // batch_size) for d in splits.values()), f"targets ({attribution})")
    maps = {}
    for split, data in splits.items():
        parts = []
        for i in range(0, len(data), batch_size):
            x, y = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
            parts.append(teacher_maps(run.model, x, y, attribution=attribution, n=n, sigma=sigma,
                                      threshold=threshold, absolute=absolute, generator=generator).cpu())
            bar.update(1)
        maps[split] = torch.cat(parts)
    bar.close()
    meta = {"format": FORMAT, "clearsight": __version__, "teacher": teacher_identity(run.path),
            "settings": {"attribution": attribution, "n": n, "sigma": sigma, "threshold": threshold,
                         "abs": absolute, "seed": seed},
            "data": {split: fingerprint(data) for split, data in splits.items()}}
    io.save_weights(out, maps, meta)
    return out


def load(path: str | Path, data: ArrayDataset) -> torch.Tensor:
    """The maps in `path` for the samples of `data` (checked against its fingerprint and the teacher's weights)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"target-map file {path} does not exist; compute it with `clearsight targets TEACHER_RUN "
                        f"--out {path}`")
    tensors, meta = io.load_tensors(path)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a clearsight target-map file (format {meta.get('format')!r}, expected "
                        f"{FORMAT!r})")
    recorded = meta["data"].get(data.split)
    if recorded is None or data.split not in tensors:
        raise DataError(f"{path} holds target maps for the splits {', '.join(sorted(tensors))}, not {data.split!r}")
    if recorded != fingerprint(data):
        raise DataError(f"{path} was computed for other data than this {data.name!r} {data.split!r} split "
                        f"(it holds {recorded['dataset']!r} {recorded['split']!r}, shape {recorded['shape']}, and "
                        "the inputs or their order differ); compute target maps for this dataset")
    teacher = meta["teacher"]
    weights = Path(teacher["run"]) / "model.safetensors"
    if weights.exists() and io.sha256_file(weights) != teacher["weights_sha256"]:
        raise CheckpointError(f"{path} is stale: the teacher {teacher['run']} has other weights than when the maps "
                              "were computed (it was retrained or resumed since); compute the target maps again")
    return tensors[data.split]


def attach(data: ArrayDataset, path: str | Path) -> ArrayDataset:
    """`data` with its target maps from `path` as the per-sample extra "target_map" (a new dataset)."""
    maps = load(path, data)
    return ArrayDataset(data.x, data.y, classes=data.classes, name=data.name, split=data.split,
                        feature_names=data.feature_names, sensitive=data.sensitive,
                        extras={**data.extras, EXTRA: maps})
