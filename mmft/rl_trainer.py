"""What PPO and SCST share: model roles, the prompt stream, rollout, scoring, evaluation,
logging and checkpoints. The algorithms themselves live in `mmft.ppo.trainer` and
`mmft.scst.trainer`, as numbered steps over `mmft.ppo.core`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from mmft.checkpointing import (
    TRAINABLE_STATE,
    TRAINER_STATE,
    checkpoint_folder,
    load_rng_state,
    resolve_checkpoint,
    rotate_checkpoints,
    save_interval,
    save_rng_state,
)
from mmft.config import every_n_steps
from mmft.data.collator import PromptBatch, VLMCollator
from mmft.distributed import all_gather_objects, all_reduce_sum, barrier, distributed  # noqa: F401 (re-exported)
from mmft.models.arch import (
    critic_layer_count,
    freeze_vision_tower,
    lora_target_modules,
    multimodal_token_ids,
    top_layers_lora_config,
)
from mmft.models.loading import load_processor, load_vlm
from mmft.models.roles import POLICY, REF, VALUE, ActorCritic
from mmft.ppo import core
from mmft.ppo.config import RLConfig
from mmft.rewards import RewardComposer
from mmft.rollout import Rollout, decode_responses, generate, stop_token_ids, training_inputs

logger = logging.getLogger("mmft")

def default_lora_config(target: str = "language", r: int = 16, alpha: int = 32, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_modules(target),
                      bias="none")


class RLTrainer:
    """Base of PPOTrainer and SCSTTrainer (TRL-shaped constructor)."""

    with_critic = False
    algorithm = "rl"

    def __init__(
        self,
        model,
        processing_class=None,
        args: RLConfig | None = None,
        reward_funcs=None,
        train_dataset=None,
        eval_dataset=None,
        peft_config=None,
        sft_adapter: str | None = None,
        eval_metrics: tuple[str, ...] = ("CIDEr", "Bleu_4"),
    ):
        if args is None:
            raise ValueError("args (a PPOConfig or SCSTConfig) is required.")
        if train_dataset is None:
            raise ValueError("train_dataset is required.")
        if not reward_funcs:
            raise ValueError("reward_funcs is required: one or more reward callables (TRL's contract).")
        self.args = args
        set_seed(args.seed)
        self.is_main = distributed()[0] == 0
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.micro_batches_per_mini_batch,  # DeepSpeed's config follows it
            log_with=None if args.report_to in (None, "none", ["none"], []) else args.report_to,
            project_dir=args.output_dir,
        )
        self.model_name_or_path = model if isinstance(model, (str, os.PathLike)) else model.name_or_path
        self._refuse_under_zero3(None if isinstance(model, (str, os.PathLike)) else model)
        if isinstance(model, (str, os.PathLike)):
            model = load_vlm(model, dtype=_dtype(args), load_in_4bit=getattr(args, "load_in_4bit", False))
        self.processor = processing_class or load_processor(self.model_name_or_path)
        self.processor.tokenizer.padding_side = "left"
        self.tokenizer = self.processor.tokenizer
        self.model_type = model.config.model_type
        self.stop_ids = stop_token_ids(model.generation_config, self.tokenizer)
        self.suppress_ids = multimodal_token_ids(model.config, self.processor)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]

        self._check_columns(train_dataset, "train_dataset")
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.collator = VLMCollator(self.processor, args.max_prompt_length, args.skip_long_prompts)
        if isinstance(reward_funcs, RewardComposer):
            self.rewards = reward_funcs
        else:
            funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
            self.rewards = RewardComposer(funcs, weights=args.reward_weights)
        self.eval_metrics = eval_metrics

        self.model = self._build_roles(model, peft_config, sft_adapter)
        if getattr(args, "mount_reward_models", False):
            # Learned rewards trained on this base score through it as frozen adapters, added
            # before the optimizer and accelerate.prepare see the parameters.
            if self._zero_stage() == 3:
                raise ValueError("mount_reward_models=True is not supported under DeepSpeed ZeRO-3; set it False "
                                 "(each LearnedReward then loads its own model).")
            from mmft.reward_modeling.mount import mount_learned_rewards

            adapters = mount_learned_rewards(self.model, self.rewards)
            logger.info("mount_reward_models: %s", f"learned rewards mounted as adapters {adapters}" if adapters
                        else "no reward_models.LearnedReward among the rewards, nothing mounted")
        # One learning rate for every trainable part. (A faster value head was tried: its first
        # Adam steps move V by more than cliprange_value, the clipped branch of the value loss
        # then has zero gradient, and the critic stops learning within the iteration.)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, eps=args.adam_epsilon,
                                           betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
        from transformers import get_scheduler

        self.num_optimizer_steps = args.max_steps * args.num_ppo_epochs * args.num_mini_batches
        self.lr_scheduler = get_scheduler(
            args.lr_scheduler_type, self.optimizer,
            num_warmup_steps=args.get_warmup_steps(self.num_optimizer_steps),
            num_training_steps=self.num_optimizer_steps,
        )
        self.zero_stage = self._configure_deepspeed()
        if self.zero_stage == 3:
            self.model.enable_dummy_vision(self._blank_image_inputs())
        # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper
        # would step it once per process).
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if distributed()[1] > 1 and self.accelerator.distributed_type == DistributedType.NO:
            # Ranks launched (torchrun on CPU) but accelerate saw one process and did not
            # wrap the model: without DDP each rank would train its own copy.
            self.model = torch.nn.parallel.DistributedDataParallel(self.model)
        self._check_ranks_agree()
        self.kl_ctl = (core.AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
                       if args.kl_target is not None else core.FixedKLController(args.kl_coef))
        self.iteration = 0
        self.log_history: list[dict] = []
        self.skipped_prompts: list[int] = []
        if self.is_main:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if self.accelerator.log_with:
            self.accelerator.init_trackers(self.algorithm, config=_flat_config(args))

    # ------------------------------------------------------------------ setup
    def _configure_deepspeed(self) -> int:
        """Fill the DeepSpeed config values accelerate cannot infer without a dataloader,
        and refuse options ZeRO cannot honour. Returns the ZeRO stage (0: no DeepSpeed)."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return 0
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = self.args.per_device_train_batch_size
        ds["gradient_accumulation_steps"] = self.args.micro_batches_per_mini_batch
        # From torch.distributed: accelerate may count one process per rank here (CPU quirk).
        ds["train_batch_size"] = (self.args.per_device_train_batch_size * self.args.micro_batches_per_mini_batch
                                  * distributed()[1])
        ds["gradient_clipping"] = self.args.max_grad_norm if self.args.max_grad_norm else 0.0
        return self._zero_stage()

    def _zero_stage(self) -> int:
        plugin = self.accelerator.state.deepspeed_plugin
        return 0 if plugin is None else int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))

    def _refuse_under_zero3(self, model) -> None:
        """Options ZeRO-3 cannot honour: an error naming both, before the model loads (a
        4-bit load of a real checkpoint takes minutes). `model`: a model passed in, else None."""
        if self._zero_stage() != 3:
            return
        quantized = getattr(self.args, "load_in_4bit", False) or bool(getattr(model, "is_quantized", False))
        if quantized:
            raise ValueError("load_in_4bit (QLoRA) cannot be combined with DeepSpeed ZeRO-3, which shards the "
                             "4-bit weights it cannot partition (a model passed in already quantised neither): use "
                             "zero2.yaml, or drop load_in_4bit.")
        if getattr(self.args, "critic", "shared") == "separate" and self.args.gradient_checkpointing:
            raise ValueError("critic='separate' with gradient_checkpointing under ZeRO-3 is not supported: the "
                             "separate backbone's reentrant checkpointing hangs when ranks skip it. Use the shared "
                             "critic or ZeRO-2.")

    def _blank_image_inputs(self) -> dict[str, torch.Tensor]:
        """The processor's image tensors for one blank image (see ActorCritic.dummy_image_inputs)."""
        from PIL import Image

        from mmft.models.arch import SEQUENCE_KEYS

        row = {"prompt": "x", "image": Image.new("RGB", (64, 64))}
        enc = self.collator.encode_row(row, -1)
        return {k: v for k, v in enc.items() if k not in SEQUENCE_KEYS}

    def _check_ranks_agree(self) -> None:
        """Ranks that disagree on the data or the model would hang at the first collective
        with mismatched shapes: compare them now and fail with both values instead."""
        if distributed()[1] == 1:
            return
        n_params = sum(p.numel() for p in self.unwrapped.parameters())
        if self.zero_stage == 3:
            n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.unwrapped.parameters())
        mine = {"dataset_length": len(self.train_dataset), "model_parameters": n_params,
                "model_type": self.model_type}
        views = all_gather_objects(mine)
        for key in mine:
            values = [v[key] for v in views]
            if len(set(values)) > 1:
                raise ValueError(f"Ranks disagree on {key}: {values} (rank order). Every rank must load the same "
                                 "dataset and model; check per-rank paths, caches and data sharding.")

    def _check_columns(self, dataset, name: str) -> None:
        columns = set(dataset.column_names)
        if "prompt" not in columns:
            raise ValueError(f"{name} has no 'prompt' column (columns: {sorted(columns)}).")

    def _build_roles(self, model, peft_config, sft_adapter) -> ActorCritic:
        from peft import PeftModel, get_peft_model
        from trl.trainer.utils import disable_dropout_in_model

        freeze_vision_tower(model)
        for p in model.parameters():
            p.requires_grad_(False)
        peft_config = peft_config or default_lora_config()
        if sft_adapter is not None:
            # Start from an SFT adapter: a trainable copy is the policy, a frozen copy the reference.
            peft_model = PeftModel.from_pretrained(model, sft_adapter, adapter_name=POLICY, is_trainable=True)
            peft_model.load_adapter(sft_adapter, adapter_name=REF, is_trainable=False)
        else:
            peft_model = get_peft_model(model, peft_config, adapter_name=POLICY)
        critic_model, critic_layers = None, None
        critic = getattr(self.args, "critic", "shared")
        if self.with_critic and critic != "policy":  # "policy": the value head alone, on the policy's states
            if critic == "separate":
                path = self.args.critic_model_name_or_path or self.model_name_or_path
                critic_base = load_vlm(path, dtype=_dtype(self.args))
                for p in critic_base.parameters():
                    p.requires_grad_(False)
                critic_model = get_peft_model(critic_base, peft_config, adapter_name=VALUE)
            else:
                critic_layers = critic_layer_count(self.args.critic_layers, peft_model)
                peft_model.add_adapter(VALUE, top_layers_lora_config(peft_config, peft_model, critic_layers)
                                       if critic_layers else peft_config)
        if self.args.disable_dropout:
            disable_dropout_in_model(peft_model)
            if critic_model is not None:
                disable_dropout_in_model(critic_model)
        roles = ActorCritic(peft_model, critic_model, with_critic=self.with_critic, value_on_policy=critic == "policy",
                            critic_layers=critic_layers)
        roles.activate(POLICY)
        if self.args.gradient_checkpointing:
            roles.gradient_checkpointing_enable(self.args.gradient_checkpointing_kwargs)
        return roles

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ data
    def prompt_indices(self, iteration: int, per_rank: int) -> list[int]:
        """Dataset rows this rank uses at `iteration`: a stream of seeded permutations,
        one per epoch, cut into global batches and then into per-rank slices. It is a
        pure function of the iteration, so resuming only needs the iteration number."""
        rank, world = distributed()
        n = len(self.train_dataset)
        start = (iteration * world + rank) * per_rank
        out = []
        for pos in range(start, start + per_rank):
            epoch, offset = divmod(pos, n)
            g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=g)[offset]))
        return out

    def fetch_rows(self, dataset, indices: list[int]) -> list[dict]:
        rows = []
        for i in indices:
            try:
                rows.append(dataset[i])
            except Exception as err:  # an unreadable image surfaces when the row is decoded
                raise ValueError(f"Sample {i}: could not read this row ({type(err).__name__}: {err}). "
                                 "Check the image file or drop the sample.") from err
        return rows

    def collate(self, rows: list[dict], indices: list[int]) -> tuple[PromptBatch, list[dict]]:
        batch = self.collator(rows, indices)
        if batch.skipped:
            self.skipped_prompts += batch.skipped
            logger.warning("Skipped %d prompt(s) over max_prompt_length: dataset indices %s (total skipped %d).",
                           len(batch.skipped), batch.skipped, len(self.skipped_prompts))
            keep = set(batch.indices)
            rows = [r for r, i in zip(rows, indices) if i in keep]
        return batch, rows

    # ------------------------------------------------------------------ rollout and scoring
    def rollout(self, prompts: PromptBatch, greedy: bool = False) -> Rollout:
        from trl.models.utils import unwrap_model_for_generation

        args = self.args
        with unwrap_model_for_generation(self.model, self.accelerator,
                                         gather_deepspeed3_params=args.gather_for_generation) as unwrapped:
            unwrapped.activate(POLICY)
            return generate(
                unwrapped.policy, prompts, max_new_tokens=args.max_new_tokens, stop_ids=self.stop_ids,
                suppress_ids=self.suppress_ids,
                pad_id=self.pad_id, do_sample=not greedy, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p,
            )

    def score(self, rollout: Rollout, rows: list[dict]) -> tuple[torch.Tensor, dict[str, float], list[str]]:
        """Step 5: decode, call every reward with TRL's contract, weight, check.

        Returns scores [B], the mean of each reward component (`rewards/<name>`) and the texts."""
        texts = decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)
        prompts = [r["prompt"] for r in rows]
        conversational = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        completion_ids = [ids[: int(m.sum())].tolist() for ids, m in zip(rollout.response_ids, rollout.response_mask)]
        composed = self.rewards.compute(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                        **columns)
        scores = torch.as_tensor(composed.total, dtype=torch.float32)
        if self.args.missing_eos_penalty is not None:
            scores = scores - self.args.missing_eos_penalty * (~rollout.stopped).float()
        return scores, composed.metrics(), texts

    def old_pass(self, rollout: Rollout, roles: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict | None]:
        """Steps 2-4: old log-probs, reference log-probs and values, in the training layout.

        Returns (data, first). When each rank's rollout is one micro-batch (`fuse_old_pass`,
        gradient_accumulation_steps 1), the first update's forward runs here, with gradients
        and still at the old weights: its detached log-probs and values are the old ones
        (the ratio is exactly 1, as the spec's separate pass gives), and `first` carries it
        to `optimize`, which finishes that update once the advantages exist. Otherwise
        `first` is None and one no-grad pass computes every role."""
        if not (self.args.fuse_old_pass and self.args.gradient_accumulation_steps == 1):
            return self.forward_no_grad(rollout, roles), None
        data = self.forward_no_grad(rollout, tuple(r for r in roles if r == REF))
        first = self._train_forward(rollout, list(range(len(rollout.prompts))), self._train_roles(), data.get("trunk"))
        data["logprobs"] = first["logprobs"].detach().cpu()
        if "values" in first:
            data["values"] = first["values"].detach().cpu()
        return data, first

    def forward_no_grad(self, rollout: Rollout, roles: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Steps 2-4 as one no-grad pass: old log-probs, reference log-probs and values, in
        the training layout and in micro-batches of the training size."""
        from trl.trainer.utils import selective_log_softmax

        if not roles:
            return {}
        out: dict[str, list] = {}
        mb = self.args.per_device_train_batch_size
        device = self.accelerator.device
        with torch.no_grad():
            for start in range(0, len(rollout.prompts), mb):
                rows = list(range(start, min(start + mb, len(rollout.prompts))))
                ids, mask = rollout.response_ids[rows], rollout.response_mask[rows]
                inputs = _to(training_inputs(rollout.prompts.select(rows), ids, mask, self.model_type), device)
                res = self.model(inputs, rollout.prompts.prompt_length, ids.shape[1], self.args.temperature, roles)
                ids = ids.to(device)
                if "logits" in res:
                    out.setdefault("logprobs", []).append(selective_log_softmax(res["logits"], ids).cpu())
                if "ref_logits" in res:
                    out.setdefault("ref_logprobs", []).append(selective_log_softmax(res["ref_logits"], ids).cpu())
                if "values" in res:
                    out.setdefault("values", []).append(res["values"].cpu())
                if "trunk" in res:  # critic_layers: the critic's input, for the updates
                    out.setdefault("trunk", []).append(res["trunk"].cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    # ------------------------------------------------------------------ optimisation
    def _train_roles(self) -> tuple[str, ...]:
        return (POLICY, VALUE) if self.with_critic else (POLICY,)

    def optimize(self, rollout: Rollout, data: dict[str, torch.Tensor], first: dict | None = None) -> dict[str, float]:
        """Step 8: `num_ppo_epochs` passes; each shuffles into `num_mini_batches`, each of
        `micro_batches_per_mini_batch` micro-batches, then exactly one optimizer step.
        `first`: the first update's forward from `old_pass` (the whole rollout, in order)."""
        args = self.args
        device = self.accelerator.device
        B = len(rollout.prompts)
        stats: dict[str, list[float]] = {}
        roles = self._train_roles()
        gen = torch.Generator().manual_seed(args.seed + 7919 * self.iteration)
        for epoch in range(args.num_ppo_epochs):
            order = torch.randperm(B, generator=gen)  # drawn either way: the seed stream stays the same
            if epoch == 0 and first is not None:
                order = torch.arange(B)  # one mini-batch: its order does not matter; `first` is in rollout order
            for mini in order.split(args.local_mini_batch_size):
                # Token count of the whole mini-batch over all ranks: each micro-batch loss is
                # its token sum over this count (times the ranks, whose gradients are averaged),
                # so the step equals one token mean over the global mini-batch whatever the
                # micro-batching (a mean of micro-batch means would weight short responses more).
                world = distributed()[1]
                num_tokens = all_reduce_sum(rollout.response_mask[mini].sum().reshape(1))[0].clamp(min=1.0)
                num_tokens = (num_tokens / world).to(device)
                micro_batches = mini.split(args.per_device_train_batch_size)
                for j, micro in enumerate(micro_batches):
                    last = j == len(micro_batches) - 1
                    record = self._micro_step(rollout, data, micro.tolist(), num_tokens, roles, last, first)
                    first = None
                    for k, v in record.items():
                        stats.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def _train_forward(self, rollout: Rollout, rows: list[int], roles: tuple[str, ...],
                       trunk: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training forward of `rows` (with gradients): the model's outputs plus `logprobs`.
        `trunk`: the reference pass's input to the critic's layers over the rollout (critic_layers)."""
        from trl.trainer.utils import selective_log_softmax

        device = self.accelerator.device
        P, R = rollout.prompts.prompt_length, rollout.response_ids.shape[1]
        inputs = _to(training_inputs(rollout.prompts.select(rows), rollout.response_ids[rows],
                                     rollout.response_mask[rows], self.model_type), device)
        out = self.model(inputs, P, R, self.args.temperature, roles,
                         trunk=trunk[rows].to(device) if trunk is not None else None)
        out["logprobs"] = selective_log_softmax(out["logits"], rollout.response_ids[rows].to(device))
        return out

    def _micro_step(self, rollout: Rollout, data: dict[str, torch.Tensor], rows: list[int],
                    num_tokens: torch.Tensor, roles: tuple[str, ...], last: bool,
                    first: dict | None = None) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (`first`: its forward already ran, see
        `old_pass`); after the last one of a mini-batch, the optimizer step. Accumulation
        is explicit: accelerate's accumulation state is shared by every Accelerator of a
        process, so two trainers in one process would disturb it."""
        from trl.trainer.utils import entropy_from_logits

        args, device = self.args, self.accelerator.device
        mask = rollout.response_mask[rows].to(device)
        self.accelerator.gradient_state._set_sync_gradients(last)  # DeepSpeed's boundary follows it
        no_sync = (self.model.no_sync() if not last and isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
                   else contextlib.nullcontext())
        with no_sync:
            out = first if first is not None else self._train_forward(rollout, rows, roles, data.get("trunk"))
            logp = out["logprobs"]
            pg_loss, pg_stats = core.policy_loss(logp, data["logprobs"][rows].to(device),
                                                 data["advantages"][rows].to(device), mask, args.cliprange,
                                                 num_tokens)
            loss = pg_loss
            # Without the bonus the entropy is only logged: no graph over [B, R, vocab].
            with torch.set_grad_enabled(bool(args.ent_coef) and torch.is_grad_enabled()):
                entropy = entropy_from_logits(out["logits"])
            if args.ent_coef:
                loss = loss - args.ent_coef * core.token_mean(entropy, mask, num_tokens)
            record = {"loss/policy": pg_stats["loss"], "policy/clipfrac": pg_stats["clipfrac"],
                      "policy/approxkl": pg_stats["approxkl"], "policy/entropy": core.masked_mean(entropy.detach(), mask)}
            if self.with_critic:
                vf_loss, vf_stats = core.value_loss(out["values"], data["values"][rows].to(device),
                                                    data["returns"][rows].to(device), mask, args.cliprange_value,
                                                    num_tokens)
                loss = loss + args.vf_coef * vf_loss
                record.update({"loss/value": vf_stats["loss"], "val/clipfrac": vf_stats["clipfrac"]})
            # Undo the division by accumulation steps that accelerate (or DeepSpeed) applies:
            # num_tokens already makes the micro-batch losses sum to the mini-batch mean.
            scale = args.micro_batches_per_mini_batch if self.zero_stage else self.accelerator.gradient_accumulation_steps
            self.accelerator.backward(loss * scale)
        if last:
            if args.max_grad_norm and args.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in record.items()}

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict]:
        """`resume_from_checkpoint`: a checkpoint folder, or True for the latest in output_dir."""
        args = self.args
        if resume_from_checkpoint:
            self.load_checkpoint(resume_from_checkpoint)
        self.model.train()
        bar = tqdm(total=args.max_steps, initial=self.iteration, desc=self.algorithm.upper(),
                   disable=not self.is_main)
        eval_every = every_n_steps(args.eval_steps, args.max_steps) if self.eval_dataset is not None else 0
        save_every = save_interval(args, args.max_steps)
        while self.iteration < args.max_steps:
            t0 = time.time()
            metrics = self.step()
            self.iteration += 1
            metrics["time/iteration_s"] = time.time() - t0
            metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
            metrics["objective/beta"] = self.kl_ctl.value
            if eval_every and self.iteration % eval_every == 0:
                metrics.update(self.evaluate())
            self.log(metrics)
            if save_every and self.iteration % save_every == 0:
                self.save_checkpoint()
                rotate_checkpoints(args.output_dir, args.save_total_limit)
            bar.update(1)
            bar.set_postfix(score=f"{metrics.get('objective/scores', float('nan')):.3f}",
                            kl=f"{metrics.get('objective/kl', float('nan')):.3f}")
        bar.close()
        # Not accelerator.end_training(): it also destroys the process group, and the
        # caller may still evaluate or save (collectives under ZeRO-3).
        for tracker in self.accelerator.trackers:
            tracker.finish()
        return self.log_history

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def log(self, metrics: dict[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        entry = {"iteration": self.iteration, **metrics}
        self.log_history.append(entry)
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=self.iteration)
        every = every_n_steps(self.args.logging_steps, self.args.max_steps)
        if self.is_main and every and self.iteration % every == 0:
            keys = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/policy", "loss/value",
                    "policy/clipfrac", "val/explained_variance", "eval/CIDEr")
            shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
            logger.info("iteration %d: %s", self.iteration, shown)
            with open(Path(self.args.output_dir) / "log_history.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    def log_samples(self, texts: list[str], scores: torch.Tensor, rows: list[dict]) -> None:
        if not self.is_main:
            return
        for text, score, row in list(zip(texts, scores.tolist(), rows))[: self.args.num_sample_captions]:
            ref = row.get("references", [""])[0] if isinstance(row.get("references"), list) else ""
            logger.info("  sample: %r  score=%.3f  (reference: %r)", text, score, ref)

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over ranks (the only cross-rank reduction of logging)."""
        if distributed()[1] == 1 or not values:
            return values
        keys = sorted(values)
        t = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64)) / distributed()[1]
        return dict(zip(keys, t.tolist()))

    # ------------------------------------------------------------------ evaluation
    def generate_captions(self, dataset, max_samples: int | None = None, greedy: bool = True) -> tuple[list, list]:
        """Greedy responses for a dataset, split over ranks and gathered: (indices, texts)."""
        rank, world = distributed()
        n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
        mine = list(range(rank, n, world))
        out_idx, out_txt = [], []
        bs = self.args.per_device_eval_batch_size
        self.model.eval()
        for start in range(0, len(mine), bs):
            idx = mine[start: start + bs]
            batch, _ = self.collate(self.fetch_rows(dataset, idx), idx)
            ro = self.rollout(batch, greedy=greedy)
            out_idx += batch.indices
            out_txt += decode_responses(self.tokenizer, ro.response_ids, ro.response_mask)
        self.model.train()
        pairs = sorted(p for part in all_gather_objects(list(zip(out_idx, out_txt))) for p in part)
        return [i for i, _ in pairs], [t for _, t in pairs]

    def evaluate(self, dataset=None) -> dict[str, float]:
        """Greedy captions on the eval set, scored with pycocoevalcap (CIDEr-D, BLEU-4)."""
        from mmft.evaluation.metrics import caption_metrics

        dataset = dataset if dataset is not None else self.eval_dataset
        indices, texts = self.generate_captions(dataset, self.args.eval_max_samples)
        refs = [dataset[i]["references"] for i in indices]
        metrics = caption_metrics(texts, refs, metrics=self.eval_metrics)
        return {f"eval/{k}": v for k, v in metrics.items()}

    # ------------------------------------------------------------------ checkpoints
    def _gathered(self, params):
        """Context in which ZeRO-3-partitioned `params` are whole on every rank (collective)."""
        import contextlib

        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
        return contextlib.nullcontext()

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters (adapters, value head), whole even under ZeRO-3. Collective."""
        model = self.unwrapped
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with self._gathered(p for _, p in named):
            return {n: p.detach().cpu().clone() for n, p in named}

    def save_checkpoint(self, directory: str | None = None) -> str:
        """Adapters, value head, optimizer, scheduler, RNG states, KL controller and data
        position. Written to a temporary folder and renamed, so an interrupted save never
        leaves a half checkpoint where the last complete one was."""
        directory = directory or os.path.join(self.args.output_dir, f"checkpoint-{self.iteration}")
        with checkpoint_folder(directory) as tmp:
            save_rng_state(tmp)
            if self.zero_stage:
                # ZeRO shards optimizer state (and parameters at stage 3) over ranks: DeepSpeed
                # writes every rank's shard; the frozen base is not written.
                self.model.save_checkpoint(tmp, tag="deepspeed", exclude_frozen_parameters=True)
            trainable = self._trainable_state()
            if self.is_main:
                torch.save(trainable, os.path.join(tmp, TRAINABLE_STATE))
                if not self.zero_stage:
                    torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                torch.save(self.lr_scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
                state = {"iteration": self.iteration, "kl_ctl": self.kl_ctl.state_dict(),
                         "skipped_prompts": self.skipped_prompts, "log_history": self.log_history,
                         "reward_stats": self.rewards.state_dict(),
                         "algorithm": self.algorithm}
                Path(tmp, TRAINER_STATE).write_text(json.dumps(state, indent=1))
            self.save_adapters(tmp)
        return directory

    def load_checkpoint(self, directory: str) -> None:
        directory = resolve_checkpoint(directory, self.args.output_dir)
        state = json.loads(Path(directory, TRAINER_STATE).read_text())
        if self.zero_stage:
            self.model.load_checkpoint(directory, tag="deepspeed", load_module_strict=False)
        else:
            missing, unexpected = self.unwrapped.load_state_dict(
                torch.load(os.path.join(directory, TRAINABLE_STATE)), strict=False)
            if unexpected:
                raise ValueError(f"Checkpoint {directory} holds parameters this model lacks: {unexpected[:5]} ...")
            self.optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), weights_only=False))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(directory, "scheduler.pt")))
        load_rng_state(directory)
        self.iteration = state["iteration"]
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.skipped_prompts = state["skipped_prompts"]
        self.rewards.load_state_dict(state["reward_stats"])
        self.log_history = state["log_history"]

    def save_adapters(self, directory: str) -> None:
        """The policy adapter at the folder's root (loads with `PeftModel.from_pretrained`),
        the critic beside it in `critic/` (value adapter + value head; the head alone with
        critic="policy"). Collective under
        ZeRO-3 (the adapters are gathered); only the main process writes."""
        model = self.unwrapped
        with self._gathered(p for p in model.parameters() if p.requires_grad):
            if self.is_main:
                self._write_adapters(model, directory)

    def _write_adapters(self, model: ActorCritic, directory: str) -> None:
        tmp = Path(directory) / "_adapters"
        model.policy.save_pretrained(tmp, selected_adapters=[POLICY])
        for f in (tmp / POLICY).iterdir():
            shutil.move(str(f), Path(directory) / f.name)
        if self.with_critic:
            critic_dir = Path(directory) / "critic"
            critic_dir.mkdir(exist_ok=True)
            if not model.value_on_policy:  # critic="policy" has no adapter of its own
                source = model.critic_backbone if model.critic_backbone is not None else model.policy
                source.save_pretrained(tmp, selected_adapters=[VALUE])
                for f in (tmp / VALUE).iterdir():
                    shutil.move(str(f), critic_dir / f.name)
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()},
                      critic_dir / "value_head.safetensors")
        shutil.rmtree(tmp, ignore_errors=True)

    def save_model(self, output_dir: str | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.is_main:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            self.processor.save_pretrained(output_dir)
        barrier()
        self.save_adapters(output_dir)
        barrier()


def _to(inputs: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def _dtype(args) -> str | None:
    if getattr(args, "bf16", False):
        return "bfloat16"
    if getattr(args, "fp16", False):
        return "float16"
    return None


def _flat_config(args) -> dict:
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v)):
            out[k] = v
    return out
