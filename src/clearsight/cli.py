"""The `clearsight` command line. User mistakes end with a one-line error and a non-zero exit, no traceback."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from clearsight import __version__, io
from clearsight.errors import ClearsightError, ConfigError
from clearsight.options import Count, NonNegative, NormOrder, Seed, coerce, describe


def _typed(hint: Any, parse: Callable[[str], Any] = float) -> Callable[[str], Any]:
    """An argparse type for a numeric flag: the text parsed by `parse`, then checked against the option type `hint`
    (`clearsight.options`: finite, in range), so `--delta nan` or `--n 0` stops at the command line."""
    def convert(text: str) -> Any:
        try:
            return coerce("value", parse(text), hint)
        except (ValueError, ConfigError):  # ConfigError is a ValueError too; argparse says which flag
            raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}") from None
    return convert


def _folder(text: str) -> Path:
    """An argparse type for --out: a non-empty path (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _registries() -> dict[str, Any]:
    from clearsight.attacks import ATTACKS
    from clearsight.attributions import ATTRIBUTIONS
    from clearsight.data import DATASETS
    from clearsight.metrics import METRICS
    from clearsight.models import MODELS
    from clearsight.objectives import OBJECTIVES
    return {"datasets": DATASETS, "models": MODELS, "objectives": OBJECTIVES, "attributions": ATTRIBUTIONS,
            "attacks": ATTACKS, "metrics": METRICS}


def _options_text(fn: Any, budgets: Sequence[str] = ()) -> str:
    skip = {"split", "root", "download", "model", "x", "y", "num_classes", "input_shape"}
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.name not in skip]

    def text(p: inspect.Parameter) -> str:
        if p.default is p.empty:  # a required option by its bare name (the repr would read "eps=_empty")
            return p.name
        if p.name in budgets and p.default is None:  # filled from the dataset's training budget
            return f"{p.name}=<dataset budget>"
        return f"{p.name}={_default_text(p.default)}"

    return ", ".join(text(p) for p in params)


def _default_text(value: Any) -> str:
    # a callable default (smoothgrad's base) by its name, not its repr with a memory address
    return getattr(value, "__name__", repr(value)) if callable(value) else repr(value)


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registries()[args.kind]
    width = max(len(n) for n in registry.names())
    for entry in registry:
        # standard_at is a contract for tests; budgets show as the options' defaults
        meta = {k: v for k, v in entry.meta.items() if k not in ("description", "aliases", "standard_at", "budgets")}
        # callables on an entry (a metric's curves) by name, not by a repr with a memory address
        extras = ", ".join(f"{k}={getattr(v, '__name__', v) if callable(v) else v}" for k, v in meta.items()
                           if v is not None)
        print(f"{entry.name:<{width}}  {entry.meta.get('description', '')}")
        if extras:
            print(f"{'':<{width}}    [{extras}]")
        if opts := _options_text(entry.fn, entry.meta.get("budgets", ())):
            print(f"{'':<{width}}    options: {opts}")
    return 0


def _run_config(args: argparse.Namespace):
    from clearsight.config import build_config

    # a flag given on the command line wins over --config's file (--set, the most specific, over both)
    flags = {"data.name": args.dataset, "model.name": args.model, "objective.name": args.objective,
             "train.epochs": args.epochs, "train.device": args.device}
    return build_config(config_file=args.config, overrides=list(args.set or []),
                        values={k: v for k, v in flags.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    from clearsight import engine
    from clearsight.runs import load_data, train_run

    out = args.out
    if args.resume and not (out / "config.yaml").is_file() and not (out / engine.CHECKPOINT).exists():
        raise ConfigError(f"--resume: {out} holds no run to continue (no config.yaml, no checkpoint); drop --resume "
                          "to start a new run there, or give the folder of the run to continue")
    cfg = _run_config(args)
    test = load_data(cfg, "test")  # before training: a test split that cannot load costs nothing
    model, _ = train_run(cfg, out, resume=args.resume)
    rows = engine.evaluate_rows(model, test, suite="clean", device=cfg.train.device)
    # a resumed run with nothing left to train evaluates the same weights to the same row: keep one copy (and
    # still add it when a kill came between the last checkpoint and this append)
    io.append_jsonl(out / "results.jsonl", rows, skip_present=True)
    _print_rows(rows)
    print(f"run written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clearsight import evaluation
    from clearsight.modes import resolve_device
    from clearsight.runs import load_data, open_run

    suite = _suite_arg(args.suite)
    device = resolve_device(args.device or "auto")
    run = open_run(args.run_dir, device=device)
    target = _results_target(args.out, run.path)
    rows = evaluation.evaluate_rows(run.model, load_data(run.config, "test"), suite=suite, device=device,
                                    seed=args.seed)
    io.append_jsonl(target, rows)
    _print_rows(rows)
    print(f"results appended to {target}")
    return 0


def _suite_arg(value: str) -> str | dict[str, Any]:
    """A shipped suite's name, or the suite read from a YAML file."""
    from clearsight.metrics import SUITE_NAMES

    if value in SUITE_NAMES:
        return value
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--suite {value!r} is neither a suite ({', '.join(SUITE_NAMES)}) nor a YAML file")
    return io.read_yaml(path, what="suite file", error=ConfigError,
                        fix="Give a YAML mapping of rows (see clearsight.metrics.suites) saved as UTF-8")


def cmd_certify(args: argparse.Namespace) -> int:
    from clearsight import evaluation
    from clearsight.metrics import certified_suite
    from clearsight.modes import resolve_device
    from clearsight.runs import load_data, open_run

    suite = certified_suite(eps=args.eps, gamma=args.gamma, topk=args.topk, sensitive=args.sensitive,
                            delta=args.delta, p=args.p, of=args.of, relative=not args.absolute)
    device = resolve_device(args.device or "auto")
    run = open_run(args.run_dir, device=device)
    target = _results_target(args.out, run.path)
    rows = evaluation.evaluate_rows(run.model, load_data(run.config, "test"), suite=suite, device=device)
    io.append_jsonl(target, rows)
    _print_rows(rows)
    print(f"results appended to {target}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from clearsight import targets
    from clearsight.modes import resolve_device

    out = targets.compute(args.teacher, args.out, attribution=args.attribution, n=args.n, sigma=args.sigma,
                          threshold=args.threshold, absolute=args.abs, seed=args.seed, batch_size=args.batch_size,
                          device=resolve_device(args.device or "auto"))
    print(f"target maps of {args.teacher} written to {out}; train with --objective ir --set objective.targets={out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from clearsight import study
    from clearsight.study import runner

    if args.print_preset is not None:
        sys.stdout.write(study.preset_text(args.print_preset))
        return 0
    group = study.load(args.preset)
    lead = os.environ.get("RANK", "0") == "0"  # under torchrun the other ranks only help train
    with runner.group(args.device or "auto"):  # one torchrun process group for every study of the file
        for spec, out in study.folders(group, args.out):
            report = study.run(spec, out, shard_spec=args.shard, update=args.update, device=args.device or "auto",
                               progress=args.progress if lead else "none")
            if lead:
                _print_summary(out)
                print(f"report written to {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from clearsight.report import render

    top = Path(args.study_dir)
    # a folder of several studies (a preset such as tabular) re-renders each
    dirs = [top] if (top / "study.yaml").exists() else sorted(p.parent for p in top.glob("*/study.yaml")) or [top]
    for folder in dirs:
        report = render(folder)
        _print_summary(folder)
        print(f"report written to {report}")
    return 0


def _print_summary(study_dir: Path) -> None:
    from clearsight.report import summary_text

    print(summary_text(study_dir))


def _results_target(out: Path | None, run_dir: Path) -> Path:
    """The JSON-lines file results go to, checked before the (long) computation so a typo costs nothing."""
    target = out or run_dir / "results.jsonl"
    if target.is_dir():
        what = f"--out {target}" if out else f"{target} (where results go without --out)"
        raise ConfigError(f"{what} is a directory; give --out a file name such as {target / 'results.jsonl'}")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: the folder {target.parent} does not exist")
    if target.exists():
        # an existing file must hold rows we can append to
        io.read_jsonl(target, what="results file", fix="Move it away or give another file with --out")
    return target


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        arrow = "higher is better" if row["higher_is_better"] else "lower is better"
        print(f"{row['key']:<56} {row['value']:.4f}  ({row['dataset']} {row['split']}, n={row['n']}, {arrow})")
        for warning in row.get("warnings", ()):
            print(f"  warning: {warning}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clearsight",
        description="Train neural networks whose explanations can be trusted, and measure how far they can be.",
        epilog="Run `clearsight COMMAND --help` for the options of a command.")
    p.add_argument("--version", action="version", version=f"clearsight {__version__} (torch {torch.__version__})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list registered datasets, models, objectives, attributions, attacks or metrics",
                        description="List the registered entries of one kind, with metadata and options.")
    ls.add_argument("kind", choices=sorted(_registries()))
    ls.set_defaults(func=cmd_list)

    tr = sub.add_parser(
        "train", help="train a model and write a run directory",
        description="Train a model and write DIR/config.yaml, model.safetensors, checkpoint/, log.jsonl and "
                    "results.jsonl (clean test accuracy). Config sections: data, model, objective, train; "
                    "`clearsight list` shows each entry's options.",
        epilog="examples:\n  clearsight train --dataset mnist-mini --model small-cnn --objective standard "
               "--epochs 2 --out runs/first\n  clearsight train --dataset german-credit --model mlp "
               "--set data.root=DATA --set model.widths=[256,256] --set train.optimizer=adam "
               "--set train.lr=5e-4 --out runs/credit",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--dataset", help="dataset name (default mnist-mini)")
    tr.add_argument("--model", help="model name (default small-cnn)")
    tr.add_argument("--objective", help="objective name (default standard)")
    tr.add_argument("--epochs", type=_typed(Count, int), help="number of epochs (train.epochs)")
    tr.add_argument("--device", help="auto (default: CUDA if available, else CPU), cpu, cuda, cuda:N")
    tr.add_argument("--config", type=Path, help="YAML file with data/model/objective/train sections")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. train.lr=0.01 or objective.label_smoothing=0.1 "
                         "(repeatable; values are parsed as YAML)")
    tr.add_argument("--out", required=True, type=_folder,
                    help="run directory to write (must not hold a run unless --resume)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a trained run on its test split",
                        description="Evaluate RUN_DIR's model on the test split of its dataset and append the "
                                    "rows to RUN_DIR/results.jsonl (or --out FILE).")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--suite", default="quick", metavar="SUITE",
                    help="clean: accuracy; quick (default): + pgd-20 robust accuracy at two linf budgets, gradient "
                         "and smoothgrad maps scored for faithfulness, sparsity, stability and localisation, and "
                         "gradient-masking checks; full: pgd-40 and pgd+apgd at every budget and every "
                         "interpretability metric on gradient, smoothgrad and integrated-gradients maps; "
                         "certified: interval-bound certificates at the linf budgets; or a YAML file of rows "
                         "(see clearsight.metrics.suites)")
    ev.add_argument("--out", type=_folder, help="JSON-lines file to append the rows to (default RUN_DIR/results.jsonl)")
    ev.add_argument("--seed", type=_typed(Seed, int), default=0, help="seed of the attacks' random starts (default 0)")
    ev.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    ev.set_defaults(func=cmd_evaluate)

    ce = sub.add_parser(
        "certify", help="certify a trained run's explanations and predictions with interval bounds",
        description="Sound certificates for RUN_DIR's model on the test split, over the l-inf box of radius eps "
                    "(clipped to [0, 1]) and the relative parameter box gamma (Wicker et al., arXiv 2212.08507): "
                    "certified accuracy, the delta-certificate (a bound on how far the input gradient of the "
                    "true-class logit can move), and with --topk/--sensitive the fraction for which no sensitive "
                    "feature can enter the top-k attribution magnitudes. Rows are appended to "
                    "RUN_DIR/results.jsonl (or --out FILE). The model must be a plain stack of Linear, Conv2d, "
                    "ReLU, Flatten, AvgPool2d, Normalize and BatchNorm layers (small-cnn with pool=avg).",
        epilog="example:\n  clearsight certify runs/credit --eps 0.01 0.05 --topk 5 --sensitive sex,age",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ce.add_argument("run_dir", metavar="RUN_DIR")
    ce.add_argument("--eps", type=_typed(NonNegative), nargs="+", required=True, metavar="E",
                    help="l-inf input radius; several values give one set of rows each")
    ce.add_argument("--gamma", type=_typed(NonNegative), default=0.0, help="relative parameter radius (default 0)")
    ce.add_argument("--topk", type=_typed(Count, int), help="size of the top set for the sensitive-feature certificate")
    ce.add_argument("--sensitive", metavar="NAMES",
                    help="comma-separated sensitive attributes (e.g. sex,age) or feature names; needs --topk")
    ce.add_argument("--delta", type=_typed(NonNegative),
                    help="also report the fraction whose delta bound is <= DELTA (relative to ||g(x)|| unless "
                         "--absolute)")
    ce.add_argument("--absolute", action="store_true", help="delta bound in absolute units, not relative to ||g(x)||")
    ce.add_argument("--p", type=_typed(NormOrder), default=2.0,
                    help="norm of the delta bound (default 2; inf for l-inf)")
    ce.add_argument("--of", default="logit", choices=["logit", "ce"],
                    help="the gradient certified: of the true-class logit (default) or of the cross-entropy")
    ce.add_argument("--out", type=_folder, help="JSON-lines file to append the rows to (default RUN_DIR/results.jsonl)")
    ce.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    ce.set_defaults(func=cmd_certify)

    tg = sub.add_parser(
        "targets", help="compute a teacher run's target maps for Interpretation Regularization (ir)",
        description="Compute the target maps of TEACHER_RUN_DIR's model (Noack et al., arXiv 1912.03430) for the "
                    "train and test splits of its dataset and write them, with the teacher's identity and every "
                    "setting, to one safetensors file. Maps: SmoothGrad of the true-class logit over N noisy "
                    "copies (clipped to [0, 1]) plus the clean image, then per map the entries farther than "
                    "THRESHOLD standard deviations from its mean are kept and the rest zeroed.",
        epilog="example:\n  clearsight train --dataset mnist-mini --objective pgd-at --set objective.norm=l2 "
               "--out runs/teacher\n  clearsight targets runs/teacher --out runs/teacher/targets.safetensors\n"
               "  clearsight train --dataset mnist-mini --objective ir --set objective.targets="
               "runs/teacher/targets.safetensors --out runs/ir",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tg.add_argument("teacher", metavar="TEACHER_RUN_DIR")
    tg.add_argument("--out", required=True, type=_folder,
                    help="file to write (must not exist), e.g. targets.safetensors")
    tg.add_argument("--attribution", default="smoothgrad", choices=["smoothgrad", "gradient"],
                    help="smoothgrad (default, the paper's) or the plain gradient (a control)")
    tg.add_argument("--n", type=_typed(Count, int), default=50, help="noisy copies for smoothgrad (default 50)")
    tg.add_argument("--sigma", type=_typed(NonNegative), default=0.15,
                    help="noise std relative to the input range (default 0.15)")
    tg.add_argument("--threshold", type=_typed(NonNegative), default=1.0,
                    help="keep entries farther than this many standard deviations from the map's mean (default 1; "
                         "0 keeps every entry)")
    tg.add_argument("--abs", action="store_true", help="absolute gradients instead of signed ones (a control)")
    tg.add_argument("--seed", type=_typed(Seed, int), default=0, help="seed of the noise (default 0)")
    tg.add_argument("--batch-size", type=_typed(Count, int), default=256, help="images per batch (default 256)")
    tg.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    tg.set_defaults(func=cmd_targets)

    st = sub.add_parser(
        "study", help="train many methods on one dataset, evaluate them alike, write a report (the main job)",
        description="Train every method of a study (a preset or a YAML file) with every seed, evaluate each trained "
                    "model with the study's suites, and write DIR/report.html, results.csv and summary.json. Each "
                    "(method, seed) trains into DIR/cells/<method>-seed<s>/. Re-running continues where it "
                    "stopped (a killed run resumes from its last epoch) and skips what is complete; an edited "
                    "study needs --update and reruns only what the edit affects. With no arguments: the quick "
                    "preset (every method on the embedded mnist-mini data, under 4 minutes on 2 CPU cores) "
                    "into runs/quick.",
        epilog="examples:\n  clearsight study\n  clearsight study --print quick > my-study.yaml\n"
               "  clearsight study --preset my-study.yaml --out runs/mine\n"
               "  clearsight study --preset paper-mnist --shard 2/4   # the 2nd of 4 workers sharing runs/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--preset", default="quick", metavar="PRESET|FILE",
                    help="quick (default), paper-mnist, tabular, decoy, or a study YAML file")
    st.add_argument("--out", type=_folder, help="study directory (default runs/<study name>)")
    st.add_argument("--shard", metavar="K/N", help="run only every N-th cell, starting with the K-th (1 <= K <= N)")
    st.add_argument("--update", action="store_true",
                    help="the directory holds this study with other settings: rerun what changed (cells trained "
                         "with other settings are kept in DIR/stale/)")
    st.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    st.add_argument("--progress", default="auto", choices=["auto", "bar", "lines", "none"],
                    help="a bar on a terminal (auto, default), plain lines, or nothing")
    st.add_argument("--print", dest="print_preset", metavar="PRESET",
                    help="write PRESET's YAML to standard output (to edit and pass back with --preset FILE)")
    st.set_defaults(func=cmd_study)

    rp = sub.add_parser("report", help="re-render a study's report from its stored results (never retrains)",
                        description="Collect the complete cells of the study in STUDY_DIR into results.csv and "
                                    "summary.json and render report.html. Merges the work of --shard workers; "
                                    "missing cells are listed in the report.")
    rp.add_argument("study_dir", metavar="STUDY_DIR")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClearsightError as err:
        print(f"clearsight: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file that cannot be read or written (permissions, a full disk): no traceback
        print(f"clearsight: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clearsight: interrupted (a training run can continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
