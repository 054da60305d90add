"""`mmft eval`: caption a test split with a VLM (+ LoRA adapter) and report the official metrics.

    mmft eval --model BASE [--adapter DIR] --data SPEC --split test --output OUT
              [--num-samples N] [--batch-size B] [--max-new-tokens T] [--num-beams K]
              [--clip-model PATH] [--reward-model PATH] [--run-dir RUN]
              [--compare-adapter DIR | --before]

Writes OUT/eval_results.json (flat, pycocoevalcap names), captions.jsonl, report.md,
gallery.html, eval_info.json, and with --run-dir the training curves OUT/curves.png.
With --before (the base model without the adapter) or --compare-adapter DIR (another
adapter, e.g. the SFT starting point) the comparison model is evaluated on the same
rows: its numbers go to eval_results_before.json and its captions beside the adapter's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


class EvalError(ValueError):
    """A bad `mmft eval` invocation; the message says what to change."""


def _check_args(args: argparse.Namespace) -> None:
    # Everything that can be checked without loading the model, so a typo fails in a second.
    if (args.before or args.compare_adapter) and not args.adapter:
        raise EvalError("--before and --compare-adapter compare against --adapter; pass --adapter DIR too.")
    for flag, path in (("--adapter", args.adapter), ("--compare-adapter", args.compare_adapter)):
        if path and not (Path(path) / "adapter_config.json").is_file():
            raise EvalError(f"{flag} {path}: no adapter_config.json there; point it at the folder a trainer "
                            "saved its LoRA adapter into (adapter_model.safetensors + adapter_config.json).")
    if args.run_dir:
        log = Path(args.run_dir)
        log = log / "log_history.jsonl" if log.is_dir() else log
        if not log.is_file():
            raise EvalError(f"--run-dir {args.run_dir}: no log_history.jsonl there (trainers write it into "
                            "their output directory).")
    if args.metrics and "SPICE" in args.metrics:
        from mmft.evaluation.metrics import spice_unavailable_reason

        if reason := spice_unavailable_reason():
            raise EvalError(f"--metrics SPICE: {reason}")
    for name in ("num_samples", "batch_size", "max_new_tokens", "num_beams"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")


def _reward_funcs(args: argparse.Namespace, dataset) -> list:
    """Learned reward model (--reward-model) and, on the embedded task, the attribute reward."""
    funcs = []
    if args.reward_model:
        try:
            from reward_models.learned import LearnedReward
        except ImportError as err:
            raise EvalError("--reward-model needs reward_models.learned.LearnedReward, which this install does not "
                            f"provide ({err}).") from err
        try:  # reads the reward model's config now; the weights load on first use
            funcs.append(LearnedReward(args.reward_model))
        except ValueError as err:
            raise EvalError(f"--reward-model {args.reward_model}: {err}") from err
    if "objects" in dataset.column_names:
        try:
            from reward_models import AttributeReward
        except ImportError:
            pass  # the attribute slices below cover the same ground
        else:
            funcs.append(AttributeReward())
    return funcs


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_eval(args: argparse.Namespace) -> dict[str, Path]:
    """The whole `mmft eval`; returns the written files by kind."""
    from mmft.data.loaders import load_data
    from mmft.evaluation.curves import plot_curves
    from mmft.evaluation.evaluate import evaluate_captions
    from mmft.evaluation.report import CURVES_FILE, write_outputs
    from mmft.models.loading import load_processor, load_vlm

    # 1. Inputs that need no model: arguments, curves (a bad log fails before minutes of captioning), data.
    _check_args(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    curves = None
    if args.run_dir:
        try:
            plot_curves(args.run_dir, out / CURVES_FILE)
        except ValueError as err:
            raise EvalError(f"--run-dir {args.run_dir}: {err}") from err
        curves = CURVES_FILE
    dataset = load_data(args.data, args.split, num_samples=args.num_samples, on_error=args.on_error)
    if len(dataset) == 0:
        raise EvalError(f"--data {args.data} --split {args.split} has no samples.")
    funcs = _reward_funcs(args, dataset)
    # 2. Model: the base, the adapter as "after", the comparison adapter as "before" on the same base.
    processor = load_processor(args.model)
    model = load_vlm(args.model, dtype=args.dtype).to(_device(args.device))
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, adapter_name="after")
        if args.compare_adapter:
            model.load_adapter(args.compare_adapter, adapter_name="before")
            model.set_adapter("after")
    # 3. Caption and score, after then before, with the same decoding and scorers.
    common = dict(metrics=args.metrics, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                  num_beams=args.num_beams, clip_model=args.clip_model, reward_funcs=funcs,
                  progress=not args.no_progress)
    result = evaluate_captions(model, processor, dataset, desc="after" if args.adapter else "captioning", **common)
    before = None
    if args.before:
        with model.disable_adapter():  # the very same base weights, LoRA bypassed
            before = evaluate_captions(model, processor, dataset, desc="before (base)", **common)
    elif args.compare_adapter:
        model.set_adapter("before")
        before = evaluate_captions(model, processor, dataset, desc="before", **common)
        model.set_adapter("after")
    # 4. Files.
    decoding = "greedy" if args.num_beams == 1 else f"beam search, {args.num_beams} beams"
    info = {"model": args.model, "adapter": args.adapter,
            "before": "base model (adapter disabled)" if args.before else args.compare_adapter,
            "data": args.data, "split": args.split, "num_samples": len(dataset),
            "decoding": f"{decoding}, max {args.max_new_tokens} new tokens", "clip_model": args.clip_model,
            "reward_model": args.reward_model, "run_dir": args.run_dir,
            "title": f"{Path(args.adapter or args.model).name} on {args.data} [{args.split}]"}
    paths = write_outputs(out, result, dataset, before=before, info=info, gallery_size=args.gallery_size,
                          curves_png=curves)
    if curves:
        paths["curves"] = out / CURVES_FILE
    _print_summary(result.metrics, before.metrics if before else None, result.notes, paths)
    return paths


def _print_summary(metrics: dict, before: dict | None, notes: list[str], paths: dict) -> None:
    from mmft.evaluation.report import headline_names

    def fmt(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"

    for name in headline_names(metrics):
        prefix = f"{fmt(before.get(name))} -> " if before else ""
        print(f"  {name:<16} {prefix}{fmt(metrics[name])}")
    for note in notes:
        print(f"  note: {note}")
    print("Wrote " + ", ".join(str(p) for p in paths.values()))


def _main(args: argparse.Namespace) -> int:
    from mmft.data.errors import DataError
    from mmft.models.loading import ModelLoadError

    try:
        run_eval(args)
    except (EvalError, DataError, ModelLoadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    """Register `eval` on the `mmft` console script."""
    from mmft.evaluation.metrics import ALL_METRICS  # light: no torch, no pycocoevalcap

    p = subparsers.add_parser("eval", help="Caption a test split and report pycocoevalcap metrics, slices, "
                                           "a gallery and training curves.",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Base VLM: Hub id or local folder.")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to evaluate on top of --model.")
    p.add_argument("--data", required=True, help="Data spec (mmft.data.loaders): synthetic, coco:ANN.json:IMAGES, "
                                                 "karpathy:..., flickr:..., hf:..., imagefolder:DIR.")
    p.add_argument("--split", default="test", help="Split to evaluate (train / validation / test).")
    p.add_argument("--output", required=True, help="Folder for eval_results.json, captions.jsonl, report.md, "
                                                   "gallery.html and curves.png.")
    p.add_argument("--num-samples", type=int, default=None, help="Evaluate only the first N samples.")
    p.add_argument("--batch-size", type=int, default=8, help="Images captioned per generate call.")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Caption length limit in tokens.")
    p.add_argument("--num-beams", type=int, default=1, help="1: greedy decoding; K > 1: beam search.")
    p.add_argument("--metrics", nargs="+", default=None, choices=ALL_METRICS, metavar="METRIC",
                   help=f"pycocoevalcap metrics to compute, of {', '.join(ALL_METRICS)} "
                        "(default: all; SPICE only when its models are installed).")
    p.add_argument("--clip-model", default=None, help="CLIP or SigLIP checkpoint for CLIPScore (Hessel et al. 2021).")
    p.add_argument("--reward-model", default=None, help="Learned reward model folder (reward_models.LearnedReward).")
    p.add_argument("--run-dir", default=None, help="Training run folder holding log_history.jsonl: draws curves.png.")
    compare = p.add_mutually_exclusive_group()
    compare.add_argument("--compare-adapter", default=None,
                         help="Also evaluate this adapter (e.g. the SFT start) as 'before'.")
    compare.add_argument("--before", action="store_true",
                         help="Also evaluate the base model without the adapter as 'before'.")
    p.add_argument("--gallery-size", type=int, default=50, help="Samples shown in gallery.html (images inlined).")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="Bad samples in the data: raise listing them, or skip them (logged).")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="Model weights dtype (default: float32).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    p.set_defaults(func=_main)
