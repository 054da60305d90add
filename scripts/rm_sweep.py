"""Reward-model settings side by side: one process per run, held-out accuracy after every epoch.

    python scripts/rm_sweep.py --prefs EXPORT --backbone MODEL --out DIR --json OUT \\
        --run bs16:batch=16,epochs=3,lr=7e-4 --run bs64:batch=64,epochs=6,lr=1e-3

EXPORT is a preference dataset (`mmft label export`; the preference demo writes one to
`<json stem>_work/prefs`), MODEL the reward model's backbone. Every run trains with
`RewardModelTrainer` on the same split (`--eval_fraction` held out by pair and image, as
the demo does) and evaluates after each epoch. A run's keys: batch, epochs, lr, r (LoRA
rank; alpha 2r), sched (a transformers scheduler name), heads, pooling, group (1: batches of
whole images, `group_by_image`), dropout (LoRA dropout; above 0 the trainer keeps dropout
on in training), wd (AdamW weight decay), seed (the training seed: head initialisation, batch
order, dropout; default `--seed`, which also draws the split, so runs differing only in seed
share their held-out pairs), frac (train on this fraction of the training split's images,
a seeded subset: a learning curve) and extra (1: add every pair of `--train_extra`, another
export, to the training split; the held-out pairs stay those of `--prefs`: more labels, the
same test). The rest are the demo's reward-model settings (likelihood term, 64 response
tokens).

`--ensemble NAME=RUN+RUN+...` scores the held-out pairs with the mean reward of runs (an
ensemble of K adapters): every evaluation writes a run's held-out rewards, pair by pair, to
its `held_out_rewards.json`, so a run stopped at the deadline counts with its last one.
On the embedded task, `--oracle_pairs PAIRS.jsonl` (the pairs file the export was labelled
from) also breaks every run's and ensemble's held-out accuracy down by the demo oracle's
score gap between the two captions: where the errors are.

On a GPU all runs start at once (`--parallel`, default: all of them; with several GPUs
they take the GPUs in turn): a small backbone leaves the GPU mostly idle in one process,
so several share it well (with NVIDIA's MPS daemon, `nvidia-cuda-mps-control -d`, their
kernels overlap). On a CPU they run one at a time. `--deadline S` stops the runs still
going after S seconds; their per-epoch figures so far are kept. Prints a table; `--json`
writes every run's settings, per-epoch held-out and training accuracy, final metrics,
steps per second and status, and the ensembles' accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = {"batch": int, "epochs": float, "lr": float, "r": int, "sched": str, "heads": int, "pooling": str,
            "group": int, "dropout": float, "wd": float, "seed": int, "frac": float, "extra": int}
# The preference demo's reward-model settings are the defaults, so a sweep starts from what it runs.
DEMO_SCRIPT = runpy.run_path(str(ROOT / "scripts" / "preference_demo.py"), run_name="preference_demo")
DEMO = DEMO_SCRIPT["DemoSettings"]()
DEFAULTS = {"batch": DEMO.rm_batch_size, "epochs": DEMO.rm_epochs, "lr": DEMO.rm_learning_rate, "r": DEMO.rm_lora_r,
            "sched": "linear", "heads": 1, "pooling": DEMO.rm_pooling, "group": int(DEMO.rm_group_by_image),
            "dropout": 0.0, "wd": 0.0, "seed": None, "frac": 1.0, "extra": 0}


def parse_run(text: str) -> tuple[str, dict]:
    """'NAME:key=value,...' -> (NAME, settings with the defaults filled in)."""
    name, _, spec = text.partition(":")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"--run {text!r}: start with a name of letters, digits, '-' or '_', then ':'")
    settings = dict(DEFAULTS)
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in RUN_KEYS:
            raise SystemExit(f"--run {text!r}: {item!r} is not key=value with a key among {', '.join(RUN_KEYS)}")
        try:
            settings[key] = RUN_KEYS[key](value)
        except ValueError:
            raise SystemExit(f"--run {text!r}: {key} must be {RUN_KEYS[key].__name__}, got {value!r}") from None
    if not 0 < settings["frac"] <= 1:
        raise SystemExit(f"--run {text!r}: frac must be in (0, 1], got {settings['frac']}")
    return name, settings


def parse_ensemble(text: str, names: set[str]) -> tuple[str, list[str]]:
    """'NAME=RUN+RUN+...' -> (NAME, members), every member a --run name."""
    name, eq, spec = text.partition("=")
    members = [m for m in spec.split("+") if m]
    if not eq or not name or len(members) < 2:
        raise SystemExit(f"--ensemble {text!r}: write NAME=RUN+RUN+... with at least two runs")
    unknown = [m for m in members if m not in names]
    if unknown:
        raise SystemExit(f"--ensemble {text!r}: {', '.join(unknown)} is not a --run name")
    return name, members


def ensemble_accuracy(out: Path, members: list[str]) -> dict:
    """Held-out pair accuracy (ties count 1/2) of the members' mean reward, with each member's
    own, from their held_out_rewards.json (each member's last evaluation, at `steps`); a member
    never evaluated is named instead."""
    rewards = [read_rewards(out / m) for m in members]
    missing = [m for m, r in zip(members, rewards) if r is None]
    if missing:
        return {"members": members, "status": f"not computed: {', '.join(missing)} not evaluated"}
    import torch

    from mmft.reward_modeling.core import pair_accuracy

    chosen = torch.tensor([r["chosen"] for r in rewards])  # [members, pairs]
    rejected = torch.tensor([r["rejected"] for r in rewards])
    return {"members": members, "status": "done", "pairs": chosen.shape[1], "steps": [r["step"] for r in rewards],
            "accuracy": pair_accuracy(chosen.mean(0), rejected.mean(0)).mean().item(),
            "member_accuracy": [pair_accuracy(c, r).mean().item() for c, r in zip(chosen, rejected)],
            "rewards": {"chosen": chosen.mean(0).tolist(), "rejected": rejected.mean(0).tolist(),
                        "pair_id": rewards[0].get("pair_id")}}


def load_scenes(pairs_path: str) -> dict[str, dict]:
    """pair id -> its captions and the embedded task's scene, from a pairs file read and
    checked by `mmft.label.pairs.load_pairs` (what `mmft label serve` reads)."""
    from mmft.label.pairs import PairsFileError, load_pairs

    try:
        pairs = load_pairs(pairs_path)
    except PairsFileError as err:
        raise SystemExit(f"--oracle_pairs: {err}") from None
    scenes = {}
    for pair in pairs:
        missing = [k for k in ("objects", "num_objects", "relation") if k not in pair.metadata]
        if missing:
            raise SystemExit(f"--oracle_pairs {pairs_path}, line {pair.line}: no {', '.join(missing)}; the oracle "
                             "needs the embedded task's scenes (scripts/make_pairs.py on the synthetic set writes "
                             "them)")
        scenes[pair.pair_id] = {**pair.metadata, "caption_a": pair.caption_a, "caption_b": pair.caption_b}
    return scenes


def accuracy_by_gap(rewards: dict | None, scenes: dict[str, dict], pairs_path: str) -> dict:
    """Held-out accuracy by the demo oracle's score gap between the captions
    (preference_demo.accuracy_by_oracle_margin) of rewards {"chosen", "rejected", "pair_id"}."""
    if rewards is None:
        return {"status": "not computed: no held-out rewards"}
    if not rewards.get("pair_id"):
        return {"status": "not computed: the held-out rewards carry no pair ids"}
    unknown = [pid for pid in rewards["pair_id"] if pid not in scenes]
    if unknown:  # a status, not an error: the runs' other figures are still written
        return {"status": f"not computed: {len(unknown)} held-out pair ids are not in {pairs_path} "
                          f"(first: {unknown[0]!r}); give the pairs file of --prefs"}
    from reward_models import AttributeReward

    oracle = AttributeReward(scoring=DEMO.oracle_scoring)
    return DEMO_SCRIPT["accuracy_by_oracle_margin"](rewards["pair_id"], rewards["chosen"], rewards["rejected"],
                                                    scenes, oracle)


def with_extra(train, held_out, extra_path: str):
    """`train` plus every pair of the export at `extra_path`, which must share no image with
    `held_out` (its accuracy would then count images the model trained on)."""
    from datasets import concatenate_datasets

    from mmft.reward_modeling.data import _row_image_keys, load_preferences

    def images(dataset) -> set:  # every identifiable image of every row
        return {k for row in _row_image_keys(dataset) or [] for k in row} - {None}

    extra = load_preferences(extra_path)
    shared = images(extra) & images(held_out)
    if shared:
        raise SystemExit(f"--train_extra {extra_path}: {len(shared)} of its images are among --prefs' held-out "
                         "pairs; give an export of other images")
    return concatenate_datasets([train, extra])


def keep_held_out_rewards(trainer, held_out, path: Path) -> None:
    """After every evaluation, write the held-out pairs' rewards (mean over heads, in held-out
    order) and their pair ids to `path`, replacing the last: what --ensemble averages over
    runs and --oracle_pairs breaks down, kept for a run the deadline stops after an
    evaluation."""
    predict = trainer.predict

    def predict_and_keep(dataset, image_from=None):
        pred = predict(dataset, image_from)
        if dataset is held_out and image_from is None:
            tmp = path.with_suffix(".tmp")  # a kill mid-write leaves the last complete file
            ids = list(dataset["pair_id"]) if "pair_id" in dataset.column_names else None
            tmp.write_text(json.dumps({"step": trainer.step, "chosen": pred["chosen"].mean(-1).tolist(),
                                       "rejected": pred["rejected"].mean(-1).tolist(), "pair_id": ids}))
            tmp.replace(path)
        return pred

    trainer.predict = predict_and_keep


def train_one(prefs: str, backbone: str, out: Path, settings: dict, eval_fraction: float, seed: int,
              workers: int, train_extra: str | None = None) -> None:
    """One run (in its own process): train, evaluate every epoch, write result.json."""
    import torch

    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer
    from mmft.reward_modeling.data import held_out_split, load_preferences
    from mmft.rl_trainer import default_lora_config

    train, held_out = held_out_split(load_preferences(prefs), eval_fraction, seed)
    if settings["frac"] < 1:  # a seeded subset of whole images, drawn as the split draws its held-out part
        train = held_out_split(train, settings["frac"], seed)[1]
    if settings["extra"]:
        train = with_extra(train, held_out, train_extra)
    seed = seed if settings["seed"] is None else settings["seed"]
    steps_per_epoch = math.ceil(len(train) / settings["batch"])
    args = RewardModelConfig(
        output_dir=str(out), num_train_epochs=settings["epochs"], learning_rate=settings["lr"],
        lr_scheduler_type=settings["sched"], per_device_train_batch_size=settings["batch"],
        per_device_eval_batch_size=64, num_heads=settings["heads"], pooling=settings["pooling"],
        group_by_image=bool(settings["group"]), weight_decay=settings["wd"],
        disable_dropout=settings["dropout"] == 0,  # the backbone's own dropout rates are its config's
        logging_steps=max(1, steps_per_epoch // 10), eval_steps=steps_per_epoch, seed=seed,
        max_completion_length=64, likelihood_term=DEMO.rm_likelihood, eval_shuffled_images=False,
        dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0, report_to="none",
        use_cpu=not torch.cuda.is_available())
    trainer = RewardModelTrainer(backbone, args=args, train_dataset=train, eval_dataset=held_out,
                                 peft_config=default_lora_config("language", settings["r"], 2 * settings["r"],
                                                                 settings["dropout"]))
    keep_held_out_rewards(trainer, held_out, out / "held_out_rewards.json")
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    # What the model trained with, read back from it: the dropout layers left on and the decay.
    dropouts = [m.p for m in trainer.unwrapped.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    result = {"final": trainer.info.metrics, "seconds": seconds, "steps": trainer.step,
              "steps_per_s": trainer.step / seconds, "train_pairs": len(train), "held_out_pairs": len(held_out),
              "dropout_rates": sorted(set(dropouts)), "dropout_layers": len(dropouts),
              "weight_decay": trainer.optimizer.param_groups[0]["weight_decay"], "seed": seed}
    (out / "result.json").write_text(json.dumps(result, indent=1))


def read_rewards(folder: Path) -> dict | None:
    """A run's last held-out rewards (keep_held_out_rewards), None if it never evaluated."""
    path = folder / "held_out_rewards.json"
    return json.loads(path.read_text()) if path.exists() else None


def print_gap_table(rows: list[tuple[str, dict]]) -> None:
    """Held-out accuracy by oracle gap: a row per (run or ensemble, its breakdown), a column per
    gap bucket."""
    buckets = [name for _, name in DEMO_SCRIPT["GAP_BUCKETS"]]
    print(f"{'oracle gap':<12} " + " ".join(f"{b:>15}" for b in buckets))
    for name, by_gap in rows:
        if "status" in by_gap:
            print(f"{name:<12} {by_gap['status']}")
            continue
        cells = [f"{by_gap[b]['accuracy']:.3f} ({by_gap[b]['pairs']})" if b in by_gap else "-" for b in buckets]
        print(f"{name:<12} " + " ".join(f"{c:>15}" for c in cells))


def read_run(out: Path, name: str, settings: dict, status: str) -> dict:
    """A run's figures from its folder: per-epoch held-out accuracy from log_history.jsonl
    (kept when the run was stopped), and result.json when it finished."""
    history = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()] \
        if (out / "log_history.jsonl").exists() else []
    # The last epoch's evaluation and the final one fall on the same step: keep one per step.
    evals = sorted({h["step"]: h["eval/accuracy"] for h in history if "eval/accuracy" in h}.items())
    train = [(h["step"], h["train/accuracy"]) for h in history if "train/accuracy" in h]
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    return {"name": name, "settings": settings, "status": status, "held_out_accuracy_by_step": evals,
            "train_accuracy_by_step": train, **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefs", required=True, help="preference dataset folder (mmft label export)")
    p.add_argument("--backbone", required=True, help="the reward model's backbone (a VLM folder or hub id)")
    p.add_argument("--out", required=True, help="a folder per run goes here")
    p.add_argument("--run", action="append", default=[], help="NAME:key=value,... (repeat); keys: "
                   + ", ".join(f"{k} (default {v})" for k, v in DEFAULTS.items()))
    p.add_argument("--ensemble", action="append", default=[],
                   help="NAME=RUN+RUN+... (repeat): held-out accuracy of these runs' mean reward")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--oracle_pairs", help="the pairs.jsonl of --prefs (embedded task): also report held-out "
                   "accuracy by the demo oracle's score gap between the captions, per run and ensemble")
    p.add_argument("--train_extra", help="another export whose pairs the runs with extra=1 add to their training split")
    p.add_argument("--eval_fraction", type=float, default=DEMO.eval_fraction)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="collating processes per run (0: collate in the run)")
    p.add_argument("--parallel", type=int, help="runs at once (default: all on a GPU, 1 on a CPU)")
    p.add_argument("--deadline", type=float, help="stop runs still going after this many seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        name, settings = parse_run(args.child)
        train_one(args.prefs, args.backbone, Path(args.out) / name, settings, args.eval_fraction, args.seed,
                  args.workers, args.train_extra)
        return
    if not args.run:
        raise SystemExit("give at least one --run NAME:key=value,...")
    runs = [parse_run(text) for text in args.run]
    if len({name for name, _ in runs}) != len(runs):
        raise SystemExit("--run names must differ")
    ensembles = [parse_ensemble(text, {name for name, _ in runs}) for text in args.ensemble]
    for flag, path in (("--prefs", args.prefs), ("--train_extra", args.train_extra)):
        if path is not None and not Path(path).is_dir():
            raise SystemExit(f"{flag} {path}: no such folder (a `mmft label export` output)")
    scenes = load_scenes(args.oracle_pairs) if args.oracle_pairs else None
    if any(settings["extra"] for _, settings in runs) and args.train_extra is None:
        raise SystemExit("a run has extra=1: give the export to add with --train_extra")
    out = Path(args.out)
    for name, _ in runs:  # a run's log history is appended to: an old one would mix in
        if (out / name).exists() and any((out / name).iterdir()):
            raise SystemExit(f"{out / name} exists and is not empty: choose a new --out or remove it")
    import torch

    parallel = args.parallel or (len(runs) if torch.cuda.is_available() else 1)
    gpus = torch.cuda.device_count()
    pending, going, done, started = list(zip(args.run, runs)), {}, {}, 0
    start = time.time()
    while pending or going:
        while pending and len(going) < parallel:
            text, (name, settings) = pending.pop(0)
            (out / name).mkdir(parents=True, exist_ok=True)
            log = open(out / name / "log.txt", "w")
            cmd = [sys.executable, __file__, "--child", text, "--prefs", args.prefs, "--backbone", args.backbone,
                   "--out", str(out), "--eval_fraction", str(args.eval_fraction), "--seed", str(args.seed),
                   "--workers", str(args.workers)] + (["--train_extra", args.train_extra] if args.train_extra else [])
            env = dict(os.environ)
            if gpus > 1:  # runs take the GPUs in turn
                env["CUDA_VISIBLE_DEVICES"] = str(started % gpus)
            started += 1
            going[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log,
                           settings)
        time.sleep(1)
        late = args.deadline is not None and time.time() - start > args.deadline
        for name, (proc, log, settings) in list(going.items()):
            if proc.poll() is None and late:
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                log.close()
                status = "stopped at the deadline" if late and proc.returncode < 0 else \
                    "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}; see {out / name / 'log.txt'})"
                done[name] = read_run(out / name, name, settings, status)
                del going[name]
        if late:
            for _, (name, settings) in pending:
                done[name] = read_run(out / name, name, settings, "not started (deadline)")
            pending = []

    print(f"{'run':<12} {'settings':<44} {'held-out accuracy by epoch':<44} {'steps/s':>7}  status")
    for name, _ in runs:
        r = done[name]
        s = r["settings"]
        setting = f"batch {s['batch']}, {s['epochs']:g} ep, lr {s['lr']:g}, r {s['r']}, {s['sched']}"
        curve = " ".join(f"{a:.3f}" for _, a in r["held_out_accuracy_by_step"])
        speed = f"{r['steps_per_s']:.1f}" if "steps_per_s" in r else "-"
        print(f"{name:<12} {setting:<44} {curve:<44} {speed:>7}  {r['status']}")
    combined = {name: ensemble_accuracy(out, members) for name, members in ensembles}
    for name, e in combined.items():
        figure = f"{e['accuracy']:.3f} (members {' '.join(f'{a:.3f}' for a in e['member_accuracy'])})" \
            if e["status"] == "done" else e["status"]
        print(f"ensemble {name}: {'+'.join(e['members'])}: {figure}")
    if scenes is not None:
        table = []
        for name, _ in runs:
            by_gap = accuracy_by_gap(read_rewards(out / name), scenes, args.oracle_pairs)
            done[name]["held_out_accuracy_by_oracle_gap"] = by_gap
            table.append((name, by_gap))
        for name, e in combined.items():
            e["accuracy_by_oracle_gap"] = accuracy_by_gap(e.get("rewards"), scenes, args.oracle_pairs)
            table.append((f"ensemble {name}", e["accuracy_by_oracle_gap"]))
        print_gap_table(table)
    for e in combined.values():
        e.pop("rewards", None)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"runs": [done[name] for name, _ in runs], "ensembles": combined,
                                               "prefs": args.prefs,
                                               "backbone": args.backbone, "seed": args.seed,
                                               "device": "cuda" if torch.cuda.is_available() else "cpu"}, indent=1))


if __name__ == "__main__":
    main()
