"""DPO on human (or oracle) caption preferences with TRL's DPOTrainer and LoRA.

The offline alternative to reward model + PPO: the preference pairs train the policy
directly (Rafailov et al. 2023). Input: the folder `mmft label export` writes (image,
prompt, chosen, rejected in TRL's conversational vision format; TRL's
DataCollatorForVisionPreference puts the image into the user turn), or any Hugging Face
vision preference dataset. The reference model is the base with the LoRA adapter
disabled, so one copy of the weights serves both (TRL does this for peft models).

    accelerate launch --num_processes 1 --cpu recipes/caption_dpo.py \
        --config recipes/configs/dpo.yaml --dataset prefs/ --output_dir outputs/dpo
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/caption_dpo.py \
        --config recipes/configs/dpo.yaml --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dataset prefs/ --bf16 true

Tested on: 2 CPU cores, no GPU: the first command on the tiny zoo LLaVA with a 60-pair
dataset in the export format (3 steps); tests/reward_modeling runs it for 2 steps.
The adapter is saved to OUTPUT_DIR (load it with PeftModel.from_pretrained, or pass it to
recipes/caption_ppo.py --sft_adapter); held-out reward accuracy (DPO's implicit reward
prefers the chosen caption) is in OUTPUT_DIR/eval_results.json. Values resolve as
defaults < YAML `--config` < command line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Policy base VLM (Hub id or folder); default: the cached demo base model."})
    dataset: str = field(default="", metadata={"help": "Preference data: a `mmft label export` folder or an HF "
                                                       "dataset id (columns image, prompt, chosen, rejected)."})
    train_split: str = field(default="train", metadata={"help": "Split of `dataset` to train on."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of pairs held out (by pair_id); 0: none."})
    num_train_samples: int | None = field(default=None, metadata={"help": "Cap on training pairs."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_targets: str = field(default="language", metadata={"help": "'language', 'language+projector' or 'all'."})


def parse_args(argv: list[str]):
    """(ScriptArguments, trl.DPOConfig): defaults < YAML --config < command line."""
    from trl import DPOConfig

    from mmft.config import cpu_deepspeed_defaults, parse_dataclasses, pop_yaml_config

    config, argv = pop_yaml_config(argv)
    config = {"output_dir": "outputs/caption_dpo", "report_to": "none", **config}
    return parse_dataclasses((ScriptArguments, DPOConfig), argv, cpu_deepspeed_defaults(config))


def main(argv: list[str] | None = None) -> dict:
    from trl import DPOTrainer

    from mmft.demo import build_demo_base
    from mmft.models.arch import freeze_vision_tower
    from mmft.models.loading import load_processor, load_vlm
    from mmft.reward_modeling.data import held_out_split, load_preferences
    from mmft.reward_modeling.trainer import check_preference_dataset
    from mmft.rl_trainer import default_lora_config

    script_args, args = parse_args(sys.argv[1:] if argv is None else argv)
    if not script_args.dataset:
        raise SystemExit("--dataset is required: a `mmft label export` folder or a Hugging Face dataset id.")

    # Model and processor; LoRA on the language model, the vision tower frozen.
    model_path = script_args.model_name_or_path or str(build_demo_base())
    processor = load_processor(model_path)
    model = load_vlm(model_path, dtype="bfloat16" if args.bf16 else None)
    freeze_vision_tower(model)
    peft_config = default_lora_config(script_args.lora_targets, script_args.lora_r, script_args.lora_alpha)

    # Data: the export as is (TRL's vision preference format); held-out pairs by pair_id.
    train = load_preferences(script_args.dataset, script_args.train_split)
    check_preference_dataset(train, script_args.dataset)
    held_out = None
    if script_args.eval_fraction:
        train, held_out = held_out_split(train, script_args.eval_fraction, args.seed)
    if script_args.num_train_samples:
        train = train.select(range(min(script_args.num_train_samples, len(train))))

    # Train, evaluate, save.
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                         processing_class=processor, peft_config=peft_config)
    trainer.train()
    results = {"num_train_pairs": len(train), "train": trainer.state.log_history}
    if held_out is not None:
        results["eval"] = trainer.evaluate()
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(args.output_dir)
        with open(f"{args.output_dir}/eval_results.json", "w") as f:
            json.dump(results, f, indent=2)
        if held_out is not None:
            acc = results["eval"].get("eval_rewards/accuracies")
            print(f"\nDPO on {len(held_out)} held-out pairs: implicit-reward accuracy {acc}")
    return results


if __name__ == "__main__":
    main()
