"""Supervised fine-tuning of any VLM on image-caption data with TRL's SFTTrainer (LoRA or full).

The usual warm start before PPO/SCST: its adapter goes to `recipes/caption_ppo.py
--sft_adapter OUTPUT_DIR`, where it is the policy's starting point and, frozen, the
reference.

    accelerate launch recipes/caption_sft.py --config recipes/configs/caption_sft.yaml
    accelerate launch recipes/caption_sft.py --model_name_or_path outputs/tiny-llava --max_steps 5
    accelerate launch --config_file recipes/accelerate_configs/cpu_zero3.yaml recipes/caption_sft.py \
        --config recipes/configs/caption_sft.yaml --model_name_or_path outputs/tiny-llava

Tested on: 2 CPU cores with the tiny zoo: one process (tests/recipes), 2 ranks under
cpu_zero3.yaml (tests/distributed) and cpu_zero2.yaml (by hand). Every reference caption of an
image becomes one (prompt, completion) pair; the loss is on the completion only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="", metadata={"help": "Base VLM (Hub id or folder)."})
    dataset: str = field(default="synthetic", metadata={"help": "Data spec (see mmft.data.loaders.load_data)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    num_train_samples: int | None = field(default=None, metadata={"help": "Cap on training images."})
    use_lora: bool = field(default=True, metadata={"help": "LoRA adapter (True) or full fine-tuning (False)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_targets: str = field(default="language", metadata={"help": "'language', 'language+projector' or 'all'."})


def parse_args(argv: list[str]):
    """(ScriptArguments, trl.SFTConfig): defaults < YAML --config < command line."""
    from trl import SFTConfig

    from mmft.config import cpu_deepspeed_defaults, parse_dataclasses, pop_yaml_config

    config, argv = pop_yaml_config(argv)
    return parse_dataclasses((ScriptArguments, SFTConfig), argv, cpu_deepspeed_defaults(config))


def to_prompt_completion(dataset):
    """Canonical caption rows -> TRL prompt/completion rows, one per reference caption."""
    missing = [c for c in ("image", "prompt", "references") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The caption dataset has no {missing} column(s) (columns: {dataset.column_names}).")

    def explode(batch):
        out = {"image": [], "prompt": [], "completion": []}
        for image, prompt, refs in zip(batch["image"], batch["prompt"], batch["references"]):
            for ref in refs:
                out["image"].append(image)
                out["prompt"].append(prompt)
                out["completion"].append([{"role": "assistant", "content": [{"type": "text", "text": ref}]}])
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names)


def main(argv: list[str] | None = None):
    from trl import SFTTrainer

    from mmft.data.loaders import load_data
    from mmft.models.loading import load_processor, load_vlm
    from mmft.rl_trainer import default_lora_config

    script_args, args = parse_args(sys.argv[1:] if argv is None else argv)
    if not script_args.model_name_or_path:
        raise SystemExit("--model_name_or_path is required (a VLM folder or Hub id).")
    processor = load_processor(script_args.model_name_or_path)
    model = load_vlm(script_args.model_name_or_path, dtype="bfloat16" if args.bf16 else None)
    train = to_prompt_completion(load_data(script_args.dataset, script_args.train_split,
                                           num_samples=script_args.num_train_samples))
    peft_config = (default_lora_config(script_args.lora_targets, script_args.lora_r, script_args.lora_alpha)
                   if script_args.use_lora else None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         peft_config=peft_config)
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
