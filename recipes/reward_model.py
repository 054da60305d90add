"""Train an image-aware reward model on preference pairs (Bradley-Terry, LoRA, K heads).

Input: a preference dataset with `image` (or `images`), `prompt`, `chosen`, `rejected`
and an optional `margin` column: the folder `mmft label export` writes, or any Hugging
Face vision preference dataset in TRL's format. Output: OUTPUT_DIR holding the LoRA
adapter, the head(s), reward_config.json and the processor, which
`reward_models.LearnedReward(OUTPUT_DIR)` loads as a reward for PPO, SCST or TRL's
GRPOTrainer; held-out pair accuracy and mean margin go to OUTPUT_DIR/eval_results.json.

    accelerate launch --num_processes 1 --cpu recipes/reward_model.py \
        --config recipes/configs/reward_model.yaml --dataset prefs/ --output_dir outputs/rm
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/reward_model.py \
        --config recipes/configs/reward_model.yaml --dataset prefs/ --output_dir outputs/rm_ddp
    accelerate launch --config_file recipes/accelerate_configs/cpu_zero3.yaml recipes/reward_model.py \
        --config recipes/configs/reward_model.yaml --dataset prefs/ --output_dir outputs/rm_zero3
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/reward_model.py ...

`--save_steps N` writes OUTPUT_DIR/checkpoint-N every N steps (each loads as a reward model
too; `--save_total_limit K` keeps the newest K); `--resume_from_checkpoint true` (or a
checkpoint folder) continues an interrupted run with the batches it had next.

(On CPU, `accelerate launch --cpu` starts one process whatever num_processes says; the
second command is how two CPU processes get a gloo DDP group.)

Tested on: 2 CPU cores, no GPU: the first three commands (1 process; 2-process DDP over
gloo; 2 ZeRO-3 ranks, in tests/distributed, and cpu_zero2.yaml by hand) on the tiny zoo
LLaVA with export-format datasets of 16-60 pairs; the same trainer on the demo base with
oracle-labelled exports in scripts/preference_demo.py; every architecture of the tiny zoo
in tests/reward_modeling. Values resolve as defaults < YAML `--config` < command line; the
resolved config is written to OUTPUT_DIR/resolved_config.yaml.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

import yaml


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base VLM (Hub id or folder); default: the cached demo base model."})
    dataset: str = field(default="", metadata={"help": "Preference data: a `mmft label export` folder or an HF "
                                                       "dataset id (columns image, prompt, chosen, rejected)."})
    train_split: str = field(default="train", metadata={"help": "Split of `dataset` to train on."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out preference data; default: hold out eval_fraction of `dataset`."})
    eval_split: str = field(default="train", metadata={"help": "Split of `eval_dataset`."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of pairs held out when no eval_dataset "
                                                                "(split by pair_id)."})
    num_train_samples: int | None = field(default=None, metadata={"help": "Cap on training pairs."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the backbone adapter."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_targets: str = field(default="language", metadata={"help": "'language', 'language+projector' or 'all' "
                                                                    "(the vision tower stays frozen unless 'all')."})


def parse_args(argv: list[str]):
    """(ScriptArguments, RewardModelConfig): defaults < YAML --config < command line."""
    from mmft.config import cpu_deepspeed_defaults, parse_dataclasses, pop_yaml_config
    from mmft.reward_modeling import RewardModelConfig

    config, argv = pop_yaml_config(argv)
    config = {"output_dir": "outputs/reward_model", **config}
    return parse_dataclasses((ScriptArguments, RewardModelConfig), argv, cpu_deepspeed_defaults(config))


def main(argv: list[str] | None = None) -> dict:
    from mmft.demo import build_demo_base
    from mmft.reward_modeling import RewardModelTrainer
    from mmft.reward_modeling.data import held_out_split, load_preferences
    from mmft.rl_trainer import default_lora_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    script_args, args = parse_args(sys.argv[1:] if argv is None else argv)
    if not script_args.dataset:
        raise SystemExit("--dataset is required: a `mmft label export` folder or a Hugging Face dataset id.")

    # Model: the base is frozen; LoRA on the backbone, K heads on top (built by the trainer).
    model_path = script_args.model_name_or_path or str(build_demo_base())
    peft_config = default_lora_config(script_args.lora_targets, script_args.lora_r, script_args.lora_alpha)

    # Data: held-out pairs from a second dataset or a pair_id-grouped split.
    train = load_preferences(script_args.dataset, script_args.train_split)
    if script_args.eval_dataset:
        held_out = load_preferences(script_args.eval_dataset, script_args.eval_split)
    else:
        train, held_out = held_out_split(train, script_args.eval_fraction, args.seed)
    if script_args.num_train_samples:
        train = train.select(range(min(script_args.num_train_samples, len(train))))

    # Train, evaluate (held-out pair accuracy and margin), save.
    trainer = RewardModelTrainer(model_path, args=args, train_dataset=train, eval_dataset=held_out,
                                 peft_config=peft_config)
    before = trainer.evaluate()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)  # a checkpoint-N folder, or true: the latest
    after = trainer.info.metrics
    trainer.save_model(args.output_dir)
    results = {"before": before, "after": after, "num_train_pairs": len(train), "num_eval_pairs": len(held_out)}
    if trainer.accelerator.is_main_process:
        write_resolved_config(script_args, args, model_path)
        with open(f"{args.output_dir}/eval_results.json", "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nReward model on {len(held_out)} held-out pairs: accuracy {before['eval/accuracy']:.3f} -> "
              f"{after['eval/accuracy']:.3f}, margin {before['eval/margin']:+.3f} -> {after['eval/margin']:+.3f}")
        print(f"Saved to {args.output_dir}: reward_models.LearnedReward({args.output_dir!r})")
    return results


def write_resolved_config(script_args: ScriptArguments, args, model_path: str) -> None:
    plain = {k: v for k, v in args.to_dict().items()
             if isinstance(v, (int, float, str, bool, type(None)))}
    resolved = {"model": {"model_name_or_path": model_path, "lora_r": script_args.lora_r,
                          "lora_alpha": script_args.lora_alpha, "lora_targets": script_args.lora_targets},
                "data": {k: getattr(script_args, k) for k in ("dataset", "train_split", "eval_dataset", "eval_split",
                                                              "eval_fraction", "num_train_samples")},
                "training": plain}
    with open(f"{args.output_dir}/resolved_config.yaml", "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)


if __name__ == "__main__":
    main()
