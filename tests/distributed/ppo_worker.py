"""One rank of a distributed PPO or SCST run, launched by tests/distributed/test_distributed.py
with `accelerate launch`. Writes what the test checks into OUT/rank{r}.json.

argv[1]: JSON with model, output_dir, out, per_device, gas, max_steps, seed and optionally
         resume, top_k, algorithm ("ppo" or "scst"), critic, critic_layers, gradient_checkpointing,
         text_only_rank (that rank's rows have no image) and short_rank (that rank loads
         one row fewer: the ranks disagree on the dataset length).
"""

import hashlib
import json
import math
import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TextScore:
    """A deterministic score of the completion's text (character codes summed, mod 97).

    Rewards must differ between the tiny model's samples: its 5-token completions often
    share their word and character counts, and with GAE lam = 1 and the zero-initialised
    value head a batch of equal rewards gives the policy no gradient at all, as it should.
    The tests compare runs with each other, so the score need not mean anything."""

    __name__ = "text_score"

    def __call__(self, completions, **kwargs):
        return [float(sum(map(ord, c[0]["content"])) % 97) for c in completions]


def main() -> None:
    from mmft import PPOConfig, PPOTrainer, SCSTConfig, SCSTTrainer
    from mmft.data.synthetic import load_synthetic_captions
    from mmft.rl_trainer import distributed

    opts = json.loads(sys.argv[1])
    config_class, trainer_class = {"ppo": (PPOConfig, PPOTrainer),
                                   "scst": (SCSTConfig, SCSTTrainer)}[opts.get("algorithm", "ppo")]
    args = config_class(output_dir=opts["output_dir"], per_device_train_batch_size=opts["per_device"],
                        gradient_accumulation_steps=opts["gas"], num_mini_batches=1, num_ppo_epochs=1,
                        max_steps=opts["max_steps"], max_new_tokens=5, eval_steps=0, save_steps=1,
                        seed=opts["seed"], top_k=opts.get("top_k", 0), max_grad_norm=0.0, learning_rate=1e-3,
                        gradient_checkpointing=opts.get("gradient_checkpointing", False),
                        gather_for_generation=opts.get("gather", True),
                        **{k: opts[k] for k in ("critic", "critic_layers") if k in opts})
    # The launcher's RANK: torch.distributed is not initialised before the trainer exists, so
    # distributed() would say rank 0 on every process here.
    launch_rank = int(os.environ.get("RANK", "0"))
    data = load_synthetic_captions("train", 31 if opts.get("short_rank") == launch_rank else 32)
    if opts.get("text_only_rank") == launch_rank:
        # This rank's rows carry no image: the others' do (the ZeRO-3 hang case).
        data = data.map(lambda r: {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Describe."}]}]})
        data = data.remove_columns("image")
    trainer = trainer_class(opts["model"], args=args, reward_funcs=[TextScore()], train_dataset=data)
    rank, world = distributed()
    drawn = trainer.prompt_indices(trainer.iteration if not opts.get("resume") else
                                   int(opts["resume"].rsplit("-", 1)[1]), args.local_rollout_batch_size)
    history = trainer.train(resume_from_checkpoint=opts.get("resume"))
    state = trainer._trainable_state()
    digest = hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()
    torch.save(state, os.path.join(opts["out"], f"state{rank}.pt"))
    record = {"rank": rank, "world": world, "drawn": drawn, "digest": digest,
              "images": "image" in trainer.train_dataset.column_names,
              "losses_finite": bool(history) and all(math.isfinite(h[k]) for h in history for k in h
                                                     if k.startswith("loss/")),
              "loss_keys": sorted({k for h in history for k in h if k.startswith("loss/")}),
              "gradient_checkpointing": trainer.unwrapped.is_gradient_checkpointing,
              "iterations": trainer.iteration, "zero_stage": trainer.zero_stage}
    with open(os.path.join(opts["out"], f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
