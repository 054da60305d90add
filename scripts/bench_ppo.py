"""mmft PPO against TRL's GRPOTrainer on the same VLM, data, batch and budget (issue 3).

    python scripts/bench_ppo.py --json bench_ppo.json            # ~20 min on 2 CPU cores
    python scripts/bench_ppo.py --json /tmp/b.json --quick       # tiny random VLM, ~30 s (smoke test)

Three tables:

1. Throughput and peak memory, like for like. mmft PPO (LoRA policy + LoRA critic +
   value head on one frozen base, reference = adapter disabled) and TRL GRPO (LoRA,
   reference = adapter disabled) on the demo base model (small LLaVA, `mmft.demo`),
   synthetic captions, CIDEr-D reward. Same completions per iteration (mmft: B prompts x 1
   sample; GRPO: B/k prompts x k samples), same micro-batch and accumulation, same
   completion length, temperature, LoRA, learning rate, KL on for both (mmft k1 with
   kl_coef, GRPO k3 with beta), one optimisation epoch and one optimizer step per
   iteration (mmft num_ppo_epochs=1, num_mini_batches=1; GRPO num_iterations=1,
   steps_per_generation=gradient_accumulation_steps), gradient checkpointing off and
   float32 for both. samples/s = completions per iteration / median iteration wall time
   (the first iteration dropped as warm-up). Two measurements (--speed-method):
   "interleaved" builds the trainers in one child process and alternates their
   iterations (mmft, mmft with the other critics, GRPO, mmft, ...), so changing load from
   other jobs hits all alike: this gives `speed_ratio` (mmft PPO with `--critic` and
   `--critic-layers`, by default PPOConfig's: the shared critic on the top half of the
   layers) and `speed_ratio_by_critic` ("shared_half": the critic's own LoRA adapter on
   the top half of the decoder layers, run from the reference pass's hidden states;
   "shared_all": that adapter over the whole model, with its own forward; "policy": the
   value head on the policy adapter); "separate" runs each system in its own child process,
   alternating A B B A ..., for its peak RSS (getrusage ru_maxrss in the child):
   `memory_ratio` (and `speed_ratio_separate`); medians over repeats.
   Targets (issue 3): speed_ratio = mmft / GRPO samples/s >= 0.9; memory_ratio = peak
   RSS mmft / GRPO <= 1.2.

2. Held-out CIDEr-D (pycocoevalcap, greedy captions, synthetic test split) after the
   same sample budget for mmft PPO, mmft SCST (greedy baseline) and TRL GRPO, each
   rewarded by reward_models.CiderD with the training corpus' document frequencies.
   Every system is evaluated by the same greedy-decoding code (mmft.rollout.generate).
   Target: PPO >= GRPO. One seed is one draw: the seed spread (about +-0.05 here) is as
   large as the gap between the systems, so compare means over `--seed N` runs.

3. PPO iteration vs LoRA SFT step peak memory (target <= 1.3x) and the naive
   separate-copies figure: measured by scripts/bench_memory.py (run with
   `--models demo` for the demo base); this script runs that measurement too unless
   --skip-memory, so its JSON holds `ppo_over_sft` and `naive_over_sft`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # noqa: E402
    finite,
    machine_description,
    median,
    peak_rss_mib,
    run_child,
    table,
    write_child_result,
)

SCRIPT = Path(__file__).resolve()

# Default (full) and --quick settings. `batch` = completions per iteration.
FULL = dict(
    micro_batch=32, grad_accum=1, num_generations=4, max_new_tokens=32, temperature=1.0, learning_rate=1e-3,
    kl_coef=0.02, lora_r=16, lora_alpha=32, lora_targets="language+projector", seed=0, train_scenes=2000,
    critic="shared", critic_layers="half", speed_iterations=2, repeats=2,  # + 1 warm-up iteration per run
    # 40 x 32 = 1,280 samples: the budget of BENCHMARKS.md's seed tables (the earlier default,
    # 6 iterations = 192 samples, was a tenth of what the demo trains on).
    quality_iterations=40, quality_epochs=1, quality_seeds=5, eval_scenes=200, eval_batch=50,
)
QUICK = dict(
    micro_batch=4, grad_accum=1, num_generations=2, max_new_tokens=6, temperature=1.0, learning_rate=1e-3,
    kl_coef=0.02, lora_r=8, lora_alpha=16, lora_targets="language", seed=0, train_scenes=32,
    critic="shared", critic_layers="half", speed_iterations=2, repeats=1,
    quality_iterations=1, quality_epochs=1, quality_seeds=1, eval_scenes=8, eval_batch=8,
)


# ---------------------------------------------------------------------------------- children
def _load_data(s: dict):
    from mmft.data.synthetic import load_synthetic_captions

    return load_synthetic_captions("train", s["train_scenes"])


def _reward(train):
    from reward_models import CiderD

    return CiderD(train["references"])


def _lora(s: dict):
    from mmft.rl_trainer import default_lora_config

    # The demo's preset: the demo base reads the image through its projector (see
    # recipes/caption_ppo.py DEMO_DEFAULTS); the same LoRA for every system.
    return default_lora_config(s["lora_targets"], s["lora_r"], s["lora_alpha"])


def mmft_config(kind: str, s: dict, out: str, iterations: int, epochs: int):
    from mmft import PPOConfig, SCSTConfig

    common = dict(
        output_dir=out, per_device_train_batch_size=s["micro_batch"], gradient_accumulation_steps=s["grad_accum"],
        num_mini_batches=1, num_ppo_epochs=epochs, max_steps=iterations, max_new_tokens=s["max_new_tokens"],
        temperature=s["temperature"], learning_rate=s["learning_rate"], eval_steps=0, save_steps=0,
        logging_steps=1, seed=s["seed"], num_sample_captions=0, gradient_checkpointing=False, bf16=False,
        use_cpu=s.get("device", "cpu") == "cpu",
    )
    if kind == "mmft_ppo":
        return PPOConfig(kl_coef=s["kl_coef"], critic=s.get("critic", "shared"), vf_coef=s.get("vf_coef", 0.1),
                         critic_layers=s.get("critic_layers", "half"), **common)
    return SCSTConfig(baseline="greedy", num_generations=1, kl_coef=0.0, **common)


def grpo_config(s: dict, out: str, iterations: int, epochs: int):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out, per_device_train_batch_size=s["micro_batch"], gradient_accumulation_steps=s["grad_accum"],
        steps_per_generation=s["grad_accum"], num_generations=s["num_generations"], num_iterations=epochs,
        # max_steps counts optimizer steps: one generation feeds `num_iterations` of them.
        max_steps=iterations * epochs, max_completion_length=s["max_new_tokens"], temperature=s["temperature"],
        learning_rate=s["learning_rate"], beta=s["kl_coef"], adam_epsilon=1e-5, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=s.get("device", "cpu") == "cpu", bf16=False,
        gradient_checkpointing=False,
        disable_dropout=True, seed=s["seed"], dataloader_num_workers=0,
    )


def build_trainer(kind: str, model_path: str, s: dict, train, reward, out: str, iterations: int, epochs: int):
    from mmft.models.loading import load_processor

    processor = load_processor(model_path)
    if kind in ("mmft_ppo", "mmft_scst"):
        from mmft import PPOTrainer, SCSTTrainer

        cls = PPOTrainer if kind == "mmft_ppo" else SCSTTrainer
        return cls(model_path, processing_class=processor, args=mmft_config(kind, s, out, iterations, epochs),
                   reward_funcs=[reward], train_dataset=train, peft_config=_lora(s))
    from trl import GRPOTrainer

    return GRPOTrainer(model=model_path, reward_funcs=[reward], args=grpo_config(s, out, iterations, epochs),
                       train_dataset=train, processing_class=processor, peft_config=_lora(s))


def _clock() -> float:
    """Wall-clock seconds, after the GPU's queued work (if any) has finished."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def train_timed(kind: str, trainer) -> list[float]:
    """Run training; return the wall-clock time at the end of every iteration
    (mmft: after each iteration's log; GRPO: at each optimizer step's end)."""
    ends = [_clock()]
    if kind.startswith("mmft"):
        original = trainer.log

        def log(metrics):
            original(metrics)
            ends.append(_clock())

        trainer.log = log
        trainer.train()
    else:
        from transformers import TrainerCallback

        class StepClock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(_clock())

        trainer.add_callback(StepClock())
        trainer.train()
    return ends


def policy_for_generation(kind: str, trainer):
    """The trained policy as a generate()-able module (policy adapter active)."""
    if kind.startswith("mmft"):
        from mmft.models.roles import POLICY

        roles = trainer.unwrapped
        roles.activate(POLICY)
        return roles.policy
    return trainer.accelerator.unwrap_model(trainer.model)


def greedy_eval(model, processor, dataset, batch_size: int) -> dict[str, float]:
    """Greedy captions with mmft's collator and generate (identical for every system),
    scored with pycocoevalcap over the split (CIDEr-D, BLEU-4)."""
    import torch

    from mmft.data.collator import VLMCollator
    from mmft.evaluation.metrics import caption_metrics
    from mmft.rollout import decode_responses, generate, stop_token_ids

    tok = processor.tokenizer
    tok.padding_side = "left"
    stops = stop_token_ids(model.generation_config, tok)
    collator = VLMCollator(processor)
    was_training = model.training
    model.eval()
    texts = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            batch = collator([dataset[i] for i in idx], idx)
            ro = generate(model, batch, max_new_tokens=32, stop_ids=stops, pad_id=tok.pad_token_id, do_sample=False)
            texts += decode_responses(tok, ro.response_ids, ro.response_mask)
    model.train(was_training)
    metrics = caption_metrics(texts, dataset["references"], metrics=("CIDEr", "Bleu_4"))
    return {**metrics, "examples": texts[:3]}


def child_speed(spec: dict) -> dict:
    """One system, warm-up + timed iterations; samples/s and this process's peak RSS."""
    import torch

    s, kind = spec["settings"], spec["system"]
    train = _load_data(s)
    reward = _reward(train)
    batch = s["micro_batch"] * s["grad_accum"]
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(kind, spec["model"], s, train, reward, out, s["speed_iterations"] + 1, 1)
        profiler = None
        if spec.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        ends = train_timed(kind, trainer)
        if profiler is not None:
            profiler.disable()
            _dump_profile(profiler, spec["profile"])
    steps = [b - a for a, b in zip(ends, ends[1:])]
    timed = steps[1:]  # the first iteration includes warm-up (allocator, lazy imports)
    return {
        "system": kind, "iterations": len(steps), "completions_per_iteration": batch,
        "iteration_s": steps, "samples_per_s": batch / median(timed), "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def child_interleaved(spec: dict) -> dict:
    """Both systems in this one process, iterations strictly alternating (mmft, GRPO, mmft,
    ...), so a change in load from other jobs hits both alike. GRPO's Trainer loop runs
    in a thread gated by a callback; only one system computes at a time. Times each
    iteration (mmft: `step()`; GRPO: on_step_begin to on_step_end, generation included)."""
    import threading

    import torch
    from transformers import TrainerCallback

    s = spec["settings"]
    n = s["speed_iterations"] + 1
    # mmft PPO with the configured critic ("mmft_ppo", the speed_ratio) and with each other one.
    mmft_settings = {"mmft_ppo": s}
    for variant in CRITIC_VARIANTS:
        if critic_key(variant) != critic_key(s):
            mmft_settings[f"mmft_ppo_critic_{critic_key(variant)}"] = {**s, **variant}
    batch = s["micro_batch"] * s["grad_accum"]
    go_grpo, go_main = threading.Event(), threading.Event()
    lengths = {k: [] for k in [*mmft_settings, "trl_grpo"]}
    times = {k: [] for k in [*mmft_settings, "trl_grpo"]}
    errors = []

    class Gate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            go_grpo.wait()
            go_grpo.clear()
            self.t0 = _clock()

        def on_step_end(self, args, state, control, **kwargs):
            times["trl_grpo"].append(_clock() - self.t0)
            go_main.set()

    with tempfile.TemporaryDirectory() as out_dir:
        # Separate dataset and reward objects, so no trainer can alter what another reads.
        mmfts = {}
        for key, settings in mmft_settings.items():
            train = _load_data(s)
            mmfts[key] = build_trainer("mmft_ppo", spec["model"], settings, train, _reward(train),
                                       f"{out_dir}/{key}", n, 1)
        train_g = _load_data(s)
        grpo = build_trainer("trl_grpo", spec["model"], s, train_g, _reward(train_g), f"{out_dir}/grpo", n, 1)
        grpo.add_callback(Gate())

        def run_grpo():
            try:
                grpo.train()
            except Exception as err:  # surface in the main thread
                errors.append(err)
                go_main.set()

        thread = threading.Thread(target=run_grpo, daemon=True)
        thread.start()
        for mmft in mmfts.values():
            mmft.model.train()
        for _ in range(n):
            for key, mmft in mmfts.items():
                t0 = _clock()
                metrics = mmft.step()
                mmft.iteration += 1
                lengths[key].append(metrics["response/length"])
                times[key].append(_clock() - t0)
            go_grpo.set()
            go_main.wait()
            go_main.clear()
            if errors:
                raise errors[0]
        thread.join()
        lengths["trl_grpo"] = [h["completions/mean_length"] for h in grpo.state.log_history
                               if "completions/mean_length" in h]
    out = {"completions_per_iteration": batch, "mean_response_length": lengths, "torch_threads": torch.get_num_threads(), "iteration_s": times}
    for k, v in times.items():
        out[k] = {"samples_per_s": batch / median(v[1:]), "iteration_s": v}
    return out


def _dump_profile(profiler, path: str) -> None:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(60)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(buf.getvalue())


def child_quality(spec: dict) -> dict:
    """The base model (if spec["base"]), then each of spec["systems"] trained for the same
    sample budget, each evaluated on the held-out split by `greedy_eval`, one after another."""
    import torch

    from mmft.data.synthetic import load_synthetic_captions
    from mmft.models.loading import load_processor, load_vlm

    s = spec["settings"]
    train = _load_data(s)
    test = load_synthetic_captions("test", s["eval_scenes"])
    reward = _reward(train)
    batch = s["micro_batch"] * s["grad_accum"]
    iters, epochs = s["quality_iterations"], s["quality_epochs"]
    results = {}
    processor = load_processor(spec["model"])
    if spec.get("base", True):
        base = load_vlm(spec["model"])
        t0 = time.time()
        results["base"] = {**greedy_eval(base, processor, test, s["eval_batch"]), "train_s": 0.0, "samples": 0,
                           "eval_s": time.time() - t0}
        del base
    for kind in spec["systems"]:
        torch.manual_seed(s["seed"])
        # SCST's REINFORCE update is one pass (SCSTConfig's default); PPO and GRPO reuse each batch `epochs` times.
        sys_epochs = 1 if kind == "mmft_scst" else epochs
        with tempfile.TemporaryDirectory() as out:
            trainer = build_trainer(kind, spec["model"], s, train, reward, out, iters, sys_epochs)
            t0 = time.time()
            trainer.train()
            train_s = time.time() - t0
            t0 = time.time()
            metrics = greedy_eval(policy_for_generation(kind, trainer), processor, test, s["eval_batch"])
        results[kind] = {**metrics, "train_s": train_s, "samples": iters * batch, "epochs": sys_epochs,
                         "eval_s": time.time() - t0}
        del trainer
    return results


def aggregate_quality(base: dict | None, by_seed: dict[int, dict]) -> tuple[dict, dict]:
    """Per-system means over seeds, and the paired PPO - GRPO difference.

    Args:
        base: the base model's metrics (seed-independent: greedy decoding), or None.
        by_seed: {seed: {system: metrics}} from `child_quality`.
    Returns:
        (quality, paired): quality[system] holds the seed means of CIDEr and Bleu_4, their
        standard error over seeds (`CIDEr_se`, 0 for one seed), `per_seed` {seed: CIDEr},
        and the first seed's samples, epochs, train_s and examples; paired (when PPO and GRPO
        both ran) holds the mean PPO - GRPO difference, its standard error and the seeds
        where PPO is ahead / level (to 1e-4) / behind.
    """
    import statistics

    def se(xs: list[float]) -> float:  # standard error of the mean over seeds (0 for one seed)
        return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0

    quality = {"base": base} if base is not None else {}
    seeds = sorted(by_seed)
    systems = [k for k in by_seed[seeds[0]] if k != "base"] if seeds else []
    for k in systems:
        cider = [by_seed[sd][k]["CIDEr"] for sd in seeds]
        bleu = [by_seed[sd][k]["Bleu_4"] for sd in seeds]
        first = by_seed[seeds[0]][k]
        quality[k] = {**{f: first[f] for f in ("samples", "epochs", "examples") if f in first},
                      "CIDEr": statistics.fmean(cider), "Bleu_4": statistics.fmean(bleu),
                      "CIDEr_se": se(cider),
                      "train_s": statistics.fmean(by_seed[sd][k]["train_s"] for sd in seeds),
                      "per_seed": {sd: c for sd, c in zip(seeds, cider)}}
    paired = {}
    if "mmft_ppo" in systems and "trl_grpo" in systems:
        diff = [by_seed[sd]["mmft_ppo"]["CIDEr"] - by_seed[sd]["trl_grpo"]["CIDEr"] for sd in seeds]
        paired = {"ppo_minus_grpo": statistics.fmean(diff),
                  "se": se(diff),
                  "ppo_ahead": sum(d > 1e-4 for d in diff), "level": sum(abs(d) <= 1e-4 for d in diff),
                  "ppo_behind": sum(d < -1e-4 for d in diff), "seeds": seeds}
    return quality, paired


# ---------------------------------------------------------------------------------- parent
def prepare_model(quick: bool, workdir: str) -> tuple[str, str]:
    if quick:
        from mmft.testing import make_tiny_vlm

        path = Path(workdir) / "tiny-llava"
        make_tiny_vlm("llava", path)
        return str(path), "tiny random llava (mmft.testing.make_tiny_vlm, quick mode)"
    from mmft.demo import build_demo_base

    return str(build_demo_base()), "mmft demo base (LLaVA architecture, 192-d x 4-layer LM, SFT on synthetic captions)"


CHILD_TASKS = {"speed": child_speed, "quality": child_quality, "interleaved": child_interleaved}


def run_speed(model: str, s: dict, log, profile_dir: str | None, in_process: dict | None = None) -> dict:
    order = []
    for r in range(s["repeats"]):
        order += ["mmft_ppo", "trl_grpo"] if r % 2 == 0 else ["trl_grpo", "mmft_ppo"]
    runs: dict[str, list[dict]] = {"mmft_ppo": [], "trl_grpo": []}
    for i, kind in enumerate(order):
        spec = {"task": "speed", "system": kind, "model": model, "settings": s}
        if profile_dir and len(runs[kind]) == 0:
            spec["profile"] = str(Path(profile_dir) / f"profile_{kind}.txt")
        res = run_child(SCRIPT, spec, in_process=in_process)
        runs[kind].append(res)
        log(f"  [{i + 1}/{len(order)}] {kind}: {res['samples_per_s']:.2f} samples/s, "
            f"peak RSS {res['peak_rss_mib']:.0f} MiB (iterations {', '.join(f'{t:.1f}s' for t in res['iteration_s'])})")
    summary = {k: {"samples_per_s": median([r["samples_per_s"] for r in v]),
                   "peak_rss_mib": median([r["peak_rss_mib"] for r in v]),
                   "samples_per_s_runs": [r["samples_per_s"] for r in v],
                   "peak_rss_mib_runs": [r["peak_rss_mib"] for r in v],
                   "iteration_s_runs": [r["iteration_s"] for r in v]} for k, v in runs.items()}
    return {"order": order, "systems": summary}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", required=False, help="Write the results here.")
    p.add_argument("--quick", action="store_true", help="Tiny random VLM and a few steps (smoke test).")
    p.add_argument("--model", help="VLM folder to benchmark (default: the demo base; --quick: a tiny llava).")
    p.add_argument("--repeats", type=int, help="Speed runs per system (alternating).")
    p.add_argument("--speed-iterations", type=int, help="Timed iterations per speed run (+1 warm-up).")
    p.add_argument("--quality-iterations", type=int, help="Iterations of the CIDEr-D comparison.")
    p.add_argument("--quality-epochs", type=int,
                   help="Optimisation passes per rollout in the CIDEr-D comparison (mmft PPO num_ppo_epochs, GRPO "
                        "num_iterations; SCST stays at one).")
    p.add_argument("--eval-scenes", type=int, help="Held-out test scenes for CIDEr-D.")
    p.add_argument("--quality-systems", nargs="+", choices=("mmft_ppo", "mmft_scst", "trl_grpo"),
                   default=["mmft_ppo", "mmft_scst", "trl_grpo"],
                   help="Systems of the CIDEr-D comparison (default: all three, plus the base model).")
    p.add_argument("--critic", choices=("shared", "policy"),
                   help="mmft PPO's critic (PPOConfig.critic): 'shared' (default: its own LoRA adapter on the one "
                        "base) or 'policy' (the value head on the policy adapter's hidden states).")
    p.add_argument("--critic-layers",
                   help="PPOConfig.critic_layers of the shared critic: 'half' (default), 'all' or N, the top "
                        "decoder layers its adapter covers.")
    p.add_argument("--micro-batch", type=int, help="per_device_train_batch_size of every system.")
    p.add_argument("--vf-coef", type=float, help="mmft PPO's vf_coef (default 0.1).")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="Where every system trains (default cpu; cuda: the first GPU, float32 like the CPU runs).")
    p.add_argument("--seed", type=int, help="Seed of every system (sampling, data order, LoRA init).")
    p.add_argument("--grad-accum", type=int,
                   help="gradient_accumulation_steps of every system (1: mmft fuses its old-log-prob pass into "
                        "the first update, PPOConfig.fuse_old_pass).")
    p.add_argument("--quality-seeds", type=int,
                   help="Seeds of the CIDEr-D comparison (--seed, --seed + 1, ...): the table gives each system's "
                        "mean and the paired PPO - GRPO difference (default 5; --quick 1).")
    p.add_argument("--quality-jobs", type=int, default=4,
                   help="Child processes of the CIDEr-D comparison run at once (one per system + the base).")
    p.add_argument("--speed-method", choices=("both", "separate", "interleaved"), default="both",
                   help="separate: one child process per system and run (A B B A), giving samples/s and peak RSS; "
                        "interleaved: both systems in one process, iterations alternating (samples/s only, "
                        "robust to changing load); both (default).")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="Skip the PPO-vs-SFT memory figure (bench_memory).")
    p.add_argument("--profile-dir", help="cProfile the first speed run of each system; write the top functions here.")
    p.add_argument("--in-process", action="store_true",
                   help="Run every measurement in this process (no isolation: memory figures are not comparable; "
                        "the default with --quick, for the smoke test). --isolated forces child processes.")
    p.add_argument("--isolated", action="store_true", help="Child processes even with --quick.")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:
        spec = json.loads(a.child)
        result = CHILD_TASKS[spec["task"]](spec)
        write_child_result(a.child_out, result)
        return result

    s = dict(QUICK if a.quick else FULL)
    for key in ("repeats", "speed_iterations", "quality_iterations", "quality_epochs", "quality_seeds", "eval_scenes",
                "critic", "critic_layers", "micro_batch", "grad_accum", "seed", "vf_coef", "device"):
        if getattr(a, key) is not None:
            s[key] = getattr(a, key)
    batch = s["micro_batch"] * s["grad_accum"]
    if batch % s["num_generations"]:
        raise SystemExit(f"completions per iteration ({batch}) must be a multiple of num_generations.")
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    in_process = CHILD_TASKS if (a.in_process or a.quick) and not a.isolated else None
    workdir = tempfile.mkdtemp(prefix="mmft-bench-ppo-")
    if a.model:
        model, model_desc = a.model, a.model
    else:
        model, model_desc = prepare_model(a.quick, workdir)
    results: dict = {
        "machine": machine_description(), "model": model_desc, "settings": s,
        "command": "python scripts/bench_ppo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "isolated": in_process is None,
        "method": ("Each measurement in its own child process; speed runs alternate mmft/GRPO (A B B A ...) so "
                   "contention from other jobs hits both alike; figures are medians over repeats. samples/s = "
                   "completions per iteration / median iteration wall time, first iteration dropped. Peak memory "
                   "= getrusage(RUSAGE_SELF).ru_maxrss of the child (whole process: Python, torch, data, model)."),
    }
    log(f"model: {model_desc}; {batch} completions/iteration "
        f"(mmft PPO: {batch} prompts x 1; GRPO: {batch // s['num_generations']} prompts x {s['num_generations']})")

    if not a.skip_speed and a.speed_method in ("interleaved", "both"):
        log(f"speed, interleaved in one process: {s['speed_iterations']} timed iterations per system")
        il = run_child(SCRIPT, {"task": "interleaved", "model": model, "settings": s}, in_process=in_process)
        results["speed_interleaved"] = il
        results["speed_ratio_interleaved"] = il["mmft_ppo"]["samples_per_s"] / il["trl_grpo"]["samples_per_s"]
        results["speed_ratio_by_critic"] = {
            critic_key(s): results["speed_ratio_interleaved"],
            **{k[len("mmft_ppo_critic_"):]: il[k]["samples_per_s"] / il["trl_grpo"]["samples_per_s"]
               for k in il if k.startswith("mmft_ppo_critic_")}}
        log(f"  mmft PPO {il['mmft_ppo']['samples_per_s']:.3f} samples/s, TRL GRPO "
            f"{il['trl_grpo']['samples_per_s']:.3f} samples/s; iterations (s): mmft "
            f"{', '.join(f'{t:.1f}' for t in il['mmft_ppo']['iteration_s'])}; GRPO "
            f"{', '.join(f'{t:.1f}' for t in il['trl_grpo']['iteration_s'])}")
    if not a.skip_speed and a.speed_method in ("separate", "both"):
        log(f"speed: {s['repeats']} run(s) per system, alternating, {s['speed_iterations']} timed iterations each")
        speed = run_speed(model, s, log, a.profile_dir, in_process)
        m, g = speed["systems"]["mmft_ppo"], speed["systems"]["trl_grpo"]
        results["speed"] = speed
        results["speed_ratio"] = m["samples_per_s"] / g["samples_per_s"]
        results["memory_ratio"] = m["peak_rss_mib"] / g["peak_rss_mib"]
        results["targets"] = {"speed_ratio>=0.9": results["speed_ratio"] >= 0.9,
                              "memory_ratio<=1.2": results["memory_ratio"] <= 1.2}

    if not a.skip_quality:
        seeds = [s["seed"] + i for i in range(s["quality_seeds"])]
        log(f"quality: base, {', '.join(a.quality_systems)}; {s['quality_iterations']} iterations x {batch} "
            f"completions each; seeds {', '.join(map(str, seeds))}; held-out CIDEr-D on {s['eval_scenes']} "
            "test scenes")
        parallel = in_process is None and a.quality_jobs > 1
        # One child for the base model (greedy, so seed-independent), then per seed one child
        # per system when they run side by side, or one child for all of them otherwise.
        groups = [[k] for k in a.quality_systems] if parallel else [list(a.quality_systems)]
        specs = [{"task": "quality", "model": model, "settings": s, "systems": [], "base": True}]
        specs += [{"task": "quality", "model": model, "settings": {**s, "seed": sd}, "systems": group, "base": False}
                  for sd in seeds for group in groups]
        if not parallel:
            parts = [run_child(SCRIPT, sp, in_process=in_process) for sp in specs]
        else:
            # `quality_jobs` children at a time: the CIDEr-D figures do not depend on timing.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(a.quality_jobs) as pool:
                parts = list(pool.map(lambda sp: run_child(SCRIPT, sp), specs))
        by_seed: dict[int, dict] = {sd: {} for sd in seeds}
        for sp, part in zip(specs, parts):
            part.pop("child_wall_s", None)
            if not sp["base"]:
                by_seed[sp["settings"]["seed"]].update(part)
        q, paired = aggregate_quality(parts[0]["base"], by_seed)
        results["quality"] = q
        if paired:
            results["quality_paired"] = paired
            results.setdefault("targets", {})["cider_ppo>=grpo"] = q["mmft_ppo"]["CIDEr"] >= q["trl_grpo"]["CIDEr"]
        for k, v in q.items():
            log(f"  {k}: CIDEr-D {v['CIDEr']:.4f}  BLEU-4 {v['Bleu_4']:.4f}  e.g. {v['examples'][0]!r}")

    if not a.skip_memory:
        log("memory: PPO iteration vs LoRA SFT step vs naive copies (scripts/bench_memory.py)")
        import bench_memory

        mem = bench_memory.measure_model("demo" if not a.quick else "tiny-llava", model,
                                         bench_memory.settings(a.quick), modes=("sft", "ppo", "naive"), log=log,
                                         in_process=bench_memory.CHILD_TASKS if in_process else None)
        results["memory"] = mem
        results.setdefault("targets", {})["ppo_over_sft<=1.3"] = mem["ppo_over_sft"] <= 1.3

    if "speed_ratio_interleaved" in results:
        results.setdefault("speed_ratio_separate", results.get("speed_ratio"))
        results["speed_ratio"] = results["speed_ratio_interleaved"]
        results.setdefault("targets", {})["speed_ratio>=0.9"] = results["speed_ratio"] >= 0.9
    results["total_s"] = time.time() - t_start
    results["all_finite"] = finite({k: results[k] for k in ("speed_ratio", "memory_ratio") if k in results})
    print()
    print(render(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
        log(f"wrote {a.json}")
    return results


# The critics timed side by side in the interleaved run (PPOConfig.critic and critic_layers).
CRITIC_VARIANTS = ({"critic": "shared", "critic_layers": "half"}, {"critic": "shared", "critic_layers": "all"},
                   {"critic": "policy", "critic_layers": "half"})


def critic_key(s: dict) -> str:
    """'shared_half' (the default), 'shared_all', 'shared_top2' (critic_layers=2) or 'policy'."""
    critic, layers = s.get("critic", "shared"), s.get("critic_layers", "half")
    if critic != "shared":
        return critic
    return f"shared_{layers}" if layers in ("half", "all") else f"shared_top{layers}"


def _ppo_name(s: dict) -> str:
    critic, layers = s.get("critic", "shared"), s.get("critic_layers", "half")
    if critic == "policy":
        what = "critic=policy: policy adapter + value head on it"
    elif layers == "all":
        what = "critic=shared, critic_layers=all: policy + critic adapters over the whole model + value head"
    else:
        what = (f"critic=shared, critic_layers={layers}: policy adapter + critic adapter on the top "
                f"{layers if layers != 'half' else 'half of the'} layers + value head")
    fused = ", old pass fused" if s["grad_accum"] == 1 else ""
    return f"mmft PPO ({what}, 1 base{fused})"


def render(r: dict) -> str:
    out = [f"mmft PPO vs TRL GRPO on {r['model']}"]
    if not r["isolated"]:
        out.append("WARNING: measured in one process (--in-process/--quick): memory figures are not comparable.")
    out += [f"machine: {r['machine']['cpu']}, "
           f"{r['machine']['cpu_cores_usable']} cores, torch {r['machine']['torch']}, trl {r['machine']['trl']}, "
           f"{r['machine']['date_utc']}", ""]
    s = r["settings"]
    batch = s["micro_batch"] * s["grad_accum"]
    if "speed_interleaved" in r:
        il = r["speed_interleaved"]
        systems = [("mmft_ppo", _ppo_name(s))]
        systems += [(f"mmft_ppo_critic_{critic_key(v)}", _ppo_name({**s, **v})) for v in CRITIC_VARIANTS
                    if f"mmft_ppo_critic_{critic_key(v)}" in il]
        rows = [[name, il[k]["samples_per_s"], " ".join(f"{t:.1f}" for t in il[k]["iteration_s"])]
                for k, name in systems + [("trl_grpo", "TRL GRPO")]]
        out.append(f"Throughput, like for like, interleaved in one process ({batch} completions/iteration, max "
                   f"{s['max_new_tokens']} new tokens, 1 epoch, KL on; first iteration of each dropped):")
        out.append(table(["system", "samples/s", "iteration wall times (s)"], rows, "{:.3f}"))
        out.append(f"speed_ratio (interleaved) = {r['speed_ratio_interleaved']:.3f} (target >= 0.9: "
                   f"{'met' if r['speed_ratio_interleaved'] >= 0.9 else 'MISSED'})"
                   + "".join(f"; {k}: {v:.3f}" for k, v in r.get("speed_ratio_by_critic", {}).items()))
        out.append("")
    if "speed" in r:
        sp = r["speed"]["systems"]
        rows = []
        for k, name in (("mmft_ppo", _ppo_name(s)), ("trl_grpo", "TRL GRPO")):
            v = sp[k]
            rows.append([name, v["samples_per_s"], " ".join(f"{x:.2f}" for x in v["samples_per_s_runs"]),
                         v["peak_rss_mib"]])
        out.append(f"Throughput, like for like ({batch} completions/iteration, max {s['max_new_tokens']} new tokens, "
                   f"1 epoch, KL on; medians of {s['repeats']} alternating runs):")
        out.append(table(["system", "samples/s", "runs", "peak RSS MiB"], rows, "{:.2f}"))
        sep = r.get("speed_ratio_separate", r["speed_ratio"])
        out.append(f"speed_ratio (separate runs) = {sep:.3f} (target >= 0.9: "
                   f"{'met' if sep >= 0.9 else 'MISSED'}); memory_ratio = "
                   f"{r['memory_ratio']:.3f} (target <= 1.2: {'met' if r['targets']['memory_ratio<=1.2'] else 'MISSED'})")
        out.append("")
    if "quality" in r:
        q = r["quality"]
        names = {"base": "base model (before RL)", "mmft_ppo": f"mmft PPO (critic={critic_key(s)})", "mmft_scst": "mmft SCST (greedy baseline)",
                 "trl_grpo": "TRL GRPO"}
        seeds = s.get("quality_seeds", 1)
        rows = [[names[k], v["CIDEr"], v.get("CIDEr_se", 0.0), v["Bleu_4"], v["samples"], v.get("epochs", ""),
                 v["train_s"], " ".join(f"{c:.3f}" for c in v.get("per_seed", {}).values())] for k, v in q.items()]
        out.append(f"Held-out CIDEr-D ({s['eval_scenes']} test scenes, greedy, pycocoevalcap), same sample budget "
                   f"({s['quality_iterations']} iterations x {batch} completions), reward CiderD (train-corpus df), "
                   f"mean over {seeds} seed(s) from --seed {s['seed']}:")
        out.append(table(["system", "CIDEr-D", "+- se", "BLEU-4", "samples", "epochs", "train s", "per seed"], rows,
                         "{:.4g}"))
        if "cider_ppo>=grpo" in r.get("targets", {}):
            pr = r["quality_paired"]
            out.append(f"PPO >= GRPO (means): {'met' if r['targets']['cider_ppo>=grpo'] else 'MISSED'}; paired "
                       f"PPO - GRPO {pr['ppo_minus_grpo']:+.4f} +- {pr['se']:.4f}, PPO ahead on {pr['ppo_ahead']}, "
                       f"level on {pr['level']}, behind on {pr['ppo_behind']} of {len(pr['seeds'])} seed(s)")
        out.append("")
    if "memory" in r:
        import bench_memory

        out.append(bench_memory.render_rows([r["memory"]]))
    return "\n".join(out)


if __name__ == "__main__":
    main()
