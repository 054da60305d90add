"""One rank of a distributed PPO run, launched by tests/distributed/test_distributed.py with
`accelerate launch`. Writes what the test checks into OUT/rank{r}.json.

argv[1]: JSON with model, output_dir, out, per_device, gas, max_steps, resume (optional),
         top_k, seed.
"""

import hashlib
import json
import math
import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class WordCount:
    __name__ = "word_count"

    def __call__(self, completions, **kwargs):
        return [float(len(c[0]["content"].split())) for c in completions]


def main() -> None:
    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions
    from mmft.rl_trainer import distributed

    opts = json.loads(sys.argv[1])
    args = PPOConfig(output_dir=opts["output_dir"], per_device_train_batch_size=opts["per_device"],
                     gradient_accumulation_steps=opts["gas"], num_mini_batches=1, num_ppo_epochs=1,
                     max_steps=opts["max_steps"], max_new_tokens=5, eval_steps=0, save_steps=1, seed=opts["seed"],
                     top_k=opts.get("top_k", 0), max_grad_norm=0.0, learning_rate=1e-3)
    data = load_synthetic_captions("train", 32)
    if opts.get("text_only_rank") is not None and distributed()[0] == opts["text_only_rank"]:
        # This rank's rows carry no image: the others' do (the ZeRO-3 hang case).
        data = data.map(lambda r: {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Describe."}]}]})
        data = data.remove_columns("image")
    trainer = PPOTrainer(opts["model"], args=args, reward_funcs=[WordCount()], train_dataset=data)
    rank, world = distributed()
    drawn = trainer.prompt_indices(trainer.iteration if not opts.get("resume") else
                                   int(opts["resume"].rsplit("-", 1)[1]), args.local_rollout_batch_size)
    history = trainer.train(resume_from_checkpoint=opts.get("resume"))
    state = trainer._trainable_state()
    digest = hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()
    torch.save(state, os.path.join(opts["out"], f"state{rank}.pt"))
    record = {"rank": rank, "world": world, "drawn": drawn, "digest": digest,
              "losses_finite": all(math.isfinite(h["loss/policy"]) and math.isfinite(h["loss/value"])
                                   for h in history),
              "iterations": trainer.iteration, "zero_stage": trainer.zero_stage}
    with open(os.path.join(opts["out"], f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
