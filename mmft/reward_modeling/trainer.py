"""Bradley-Terry training of an image-aware reward model (VLM backbone + LoRA + K heads).

TRL's RewardTrainer has no image path (trl #4021), and Qwen-VL checkpoints have no
sequence-classification head, so mmft trains `RewardModel`: the `XModel` inside the
VLM with a LoRA adapter, the vision tower frozen, and K scalar heads on the last hidden
state at the last valid token (the EOS after the response).

Each optimizer step:
  1. encode B pairs as U <= 2B sequences: with `group_by_image` (which batches the pairs of
     one image and prompt together), and in evaluation, a caption that several of them
     compare is one sequence;
  2. score them: rewards [U, K], then each pair's chosen and rejected rows [B, K];
  3. loss = BT(r_c, r_r, margin; per-head bootstrap weights) + c * mean((r_c + r_r)^2);
  4. backward through accelerate (gradient accumulation, DDP/DeepSpeed), clip, step.
Held-out pair accuracy and mean reward margin are computed every `eval_steps` and at
the end, gathered over ranks, and the accuracy with the held-out images shuffled among
the pairs (does the model read the image?).

Every `save_steps` a checkpoint (adapter, heads, optimizer, scheduler, RNG states, the
position in the epoch's seeded pair order) goes to OUTPUT_DIR/checkpoint-STEP; `train(
resume_from_checkpoint=...)` continues from one as if never interrupted (the same batches,
losses and weights), and the folder also loads as a reward model (`LearnedReward`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
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
from mmft.data.errors import DataError
from mmft.distributed import distributed
from mmft.models.arch import freeze_vision_tower, text_hidden_size
from mmft.models.loading import load_processor, load_vlm
from mmft.reward_modeling import core
from mmft.reward_modeling.config import RewardModelConfig
from mmft.reward_modeling.data import EpochSampler, GroupedSampler, pair_keys, unidentified_image_rows
from mmft.reward_modeling.model import (
    SHARED_PROMPT_MODEL_TYPES,
    RewardEncoder,
    RewardModel,
    RewardModelInfo,
    base_fingerprint,
    save_reward_model,
)

logger = logging.getLogger("mmft")

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def check_preference_dataset(dataset, name: str) -> None:
    """Columns a preference dataset needs: prompt, chosen, rejected, and image or images."""
    columns = set(dataset.column_names)
    missing = [c for c in PREFERENCE_COLUMNS if c not in columns]
    if missing or not ({"image", "images"} & columns):
        raise DataError(
            f"{name} is not an image preference dataset: it needs columns 'prompt', 'chosen', 'rejected' and "
            f"'image' (or 'images'); it has {sorted(columns)}. mmft label export writes this format."
        )
    if len(dataset) == 0:
        raise DataError(f"{name} holds no pairs (an empty export?): label some pairs A or B first.")


def shuffled_images(dataset, seed: int) -> list[int] | None:
    """For each row, another row whose image(s) it borrows (same number of images; no row
    keeps its own), or None when there are too few rows with images to shuffle.

    The held-out accuracy with shuffled images tells whether a reward model reads the
    image: a model judging captions by what the image shows falls towards 0.5, one that
    learned text-only preferences keeps its accuracy."""
    if "images" in dataset.column_names:
        counts = [len(x) if x else 0 for x in dataset.select_columns("images")["images"]]
    elif "image" in dataset.column_names:
        counts = [1] * len(dataset)
    else:
        return None
    g = torch.Generator().manual_seed(seed)
    image_from = list(range(len(dataset)))
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(counts):
        if n:
            groups.setdefault(n, []).append(i)
    shuffled = False
    for rows in groups.values():
        if len(rows) < 2:
            continue
        order = [rows[j] for j in torch.randperm(len(rows), generator=g).tolist()]
        for a, b in zip(order, order[1:] + order[:1]):  # a cycle: nobody keeps their own
            image_from[a] = b
        shuffled = True
    return image_from if shuffled else None


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RewardModelTrainer:
    """Trains `RewardModel` on a preference dataset; TRL-shaped constructor.

    Args:
        model: base VLM path/id or a loaded `PreTrainedModel` (frozen; LoRA is added).
        processing_class: its processor (loaded from `model` when None).
        args: `RewardModelConfig`.
        train_dataset: rows with `image`/`images`, `prompt`, `chosen`, `rejected`, optional
            `margin` (mmft.label's export, or any TRL-format vision preference dataset).
        eval_dataset: held-out pairs for accuracy and margin.
        peft_config: LoRA of the backbone (default: rank 16 on the language model).
    """

    def __init__(self, model, processing_class=None, args: RewardModelConfig | None = None, train_dataset=None,
                 eval_dataset=None, peft_config=None):
        from peft import get_peft_model
        from transformers import get_scheduler
        from trl.trainer.utils import disable_dropout_in_model

        from mmft.rl_trainer import default_lora_config
        from mmft.rollout import stop_token_ids

        if args is None:
            raise ValueError("args (a RewardModelConfig) is required.")
        if train_dataset is None:
            raise ValueError("train_dataset is required: a preference dataset (mmft label export).")
        check_preference_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            check_preference_dataset(eval_dataset, "eval_dataset")
        self.args = args
        set_seed(args.seed)
        mixed = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed,
            log_with=None if args.report_to in (None, "none", ["none"], []) else args.report_to,
            project_dir=args.output_dir,
        )
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if self.accelerator.num_processes != world:
            # DeepSpeed ranks without CUDA: accelerate found no backend, so it counts one process
            # on every rank (no data sharding, every rank "main"; DeepSpeed's batch check fails).
            raise ValueError(f"accelerate sees {self.accelerator.num_processes} process(es) but torch.distributed "
                             f"has {world} ranks: on CPU ranks (DeepSpeed over gloo) set ddp_backend='gloo' in "
                             "RewardModelConfig (recipes/reward_model.py does).")
        self.model_name_or_path = str(model) if isinstance(model, (str, os.PathLike)) else model.name_or_path
        if isinstance(model, (str, os.PathLike)):
            model = load_vlm(model)
        self.processor = processing_class or load_processor(self.model_name_or_path)
        self.processor.tokenizer.padding_side = "left"
        tok = self.processor.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else stop_token_ids(model.generation_config, tok)[0]

        # Frozen base (vision tower included), LoRA on the language model, K heads.
        for p in model.parameters():
            p.requires_grad_(False)
        freeze_vision_tower(model)
        with _gathered([model.get_input_embeddings().weight]):  # partitioned at load under ZeRO-3
            self.fingerprint = base_fingerprint(model)
        backbone = get_peft_model(model, peft_config or default_lora_config())
        if args.disable_dropout:
            disable_dropout_in_model(backbone)
        reward_model = RewardModel(backbone, args.num_heads, seed=args.seed, likelihood=args.likelihood_term,
                                   likelihood_init=args.likelihood_init, pooling=args.pooling)
        self.info = RewardModelInfo(
            base_model_name_or_path=self.model_name_or_path, model_type=model.config.model_type,
            hidden_size=text_hidden_size(model.config), num_heads=args.num_heads, eos_token_id=int(eos),
            max_completion_length=args.max_completion_length, uncertainty_penalty=args.uncertainty_penalty,
            base_fingerprint=self.fingerprint, likelihood=args.likelihood_term, pooling=args.pooling,
        )
        self.encoder = RewardEncoder(self.processor, self.info.model_type, eos, args.max_completion_length,
                                     args.max_prompt_length,
                                     share_prompts=args.share_prompts and self.info.model_type in SHARED_PROMPT_MODEL_TYPES)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset

        # With group_by_image, which rows share an image and prompt (random batches rarely do).
        self.train_keys = pair_keys(train_dataset) if args.group_by_image else None
        if args.group_by_image and self.train_keys is None:
            bad = unidentified_image_rows(train_dataset)
            raise DataError(f"group_by_image needs images the trainer can identify (a file path or bytes per row, "
                            f"as mmft label export writes): train_dataset row {bad[0]} has none ({len(bad)} of "
                            f"{len(train_dataset)} rows); set group_by_image=False for this dataset.")
        # Each epoch's order is a function of (seed, epoch), so a resumed run draws the same batches.
        self.train_sampler = (GroupedSampler(self.train_keys, args.seed) if args.group_by_image
                              else EpochSampler(len(train_dataset), args.seed))
        loader = DataLoader(_Indices(len(train_dataset)), batch_size=args.per_device_train_batch_size,
                            sampler=self.train_sampler,
                            collate_fn=lambda idx: self.collate(train_dataset, idx, keys=self.train_keys),
                            **self.loader_workers())
        # The loader sharded over ranks gives the batches per epoch on this rank.
        steps_per_epoch = max(1, len(self.accelerator.prepare_data_loader(loader))
                              // args.gradient_accumulation_steps)
        self.total_steps = (args.max_steps if args.max_steps > 0
                            else max(1, math.ceil(args.num_train_epochs * steps_per_epoch)))
        trainable = [p for p in reward_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay,
                                      betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        # Stepped by hand once per optimizer step (accelerate's wrapper steps it per process).
        self.lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                          num_warmup_steps=args.get_warmup_steps(self.total_steps),
                                          num_training_steps=self.total_steps)
        self.model, self.optimizer, self.train_loader = self.accelerator.prepare(reward_model, optimizer, loader)
        self.boot = (core.bootstrap_weights(len(train_dataset), args.num_heads, args.seed)
                     if args.bootstrap else torch.ones(len(train_dataset), args.num_heads))
        self.step = 0
        # Where training stands in its data (saved in checkpoints): the epoch, this rank's
        # micro-batches of it so far, and the training metrics not yet logged.
        self.epoch, self.batches_in_epoch = 0, 0
        self.running: dict[str, list[float]] = {}
        self.log_history: list[dict] = []
        if self.accelerator.is_main_process:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if self.accelerator.log_with:
            self.accelerator.init_trackers("reward_model")

    # ------------------------------------------------------------------ data
    def collate(self, dataset, indices: list[int], image_from: list[int] | None = None, keys: list | None = None
                ) -> dict:
        """A preference batch of `dataset[indices]`; with `image_from`, row i gets the
        image(s) of row image_from[i] (the shuffled-image diagnostic). `keys`: the dataset's
        `pair_keys`, so that each distinct caption of an image and prompt is scored once."""
        rows = []
        for i in indices:
            try:
                rows.append(dataset[int(i)])
                if image_from is not None:
                    other = dataset[int(image_from[int(i)])]
                    rows[-1].update({k: other[k] for k in ("image", "images") if k in other})
            except Exception as err:  # an unreadable image surfaces when the row is decoded
                raise DataError(f"Sample {i}: could not read this row ({type(err).__name__}: {err}).") from err
        indices = [int(i) for i in indices]
        if keys is not None:
            # Row i asks about the image of row image_from[i] with its own prompt.
            keys = [(keys[i if image_from is None else int(image_from[i])][0], keys[i][1]) for i in indices]
        return self.encoder.pairs(rows, indices, keys)

    def loader_workers(self) -> dict:
        """DataLoader arguments for `args.dataloader_num_workers` collating processes.

        Decoding the images and running the processor costs about 1 ms a pair on one core,
        which on a GPU is more than the model's step on a small backbone. The batches'
        indices are drawn in this process (the seeded sampler), so workers change where a
        batch is collated, not which pairs it holds. Workers are forked (the collate
        function closes over this trainer, which need not pickle)."""
        args = self.args
        if args.dataloader_num_workers <= 0:
            return {}
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError("dataloader_num_workers > 0 needs the 'fork' start method, which this platform lacks: "
                             "set dataloader_num_workers=0.")
        return {"num_workers": args.dataloader_num_workers, "multiprocessing_context": "fork",
                "persistent_workers": args.dataloader_persistent_workers,
                "prefetch_factor": args.dataloader_prefetch_factor}

    @property
    def unwrapped(self) -> RewardModel:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | os.PathLike | bool | None = None) -> list[dict]:
        """`resume_from_checkpoint`: a checkpoint folder, or True for the latest complete one in
        output_dir; training continues from it with the batches the interrupted run had next."""
        args = self.args
        checkpoint = resolve_checkpoint(resume_from_checkpoint, args.output_dir)
        if checkpoint:
            self.load_checkpoint(checkpoint)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="Reward model",
                   disable=not self.accelerator.is_main_process)
        running = self.running
        save_steps = save_interval(args, self.total_steps)
        log_every = every_n_steps(args.logging_steps, self.total_steps)
        eval_every = every_n_steps(args.eval_steps, self.total_steps) if self.eval_dataset is not None else 0
        while self.step < self.total_steps:
            self.train_loader.set_epoch(self.epoch)
            if self.batches_in_epoch:  # resumed mid-epoch: the rows every rank's batches so far held
                self.train_sampler.skip_rows(self.batches_in_epoch * args.per_device_train_batch_size
                                             * self.accelerator.num_processes)
            for batch in self.train_loader:
                self.batches_in_epoch += 1
                with self.accelerator.accumulate(self.model):
                    # 1-2. The batch's distinct captions in one forward: rewards [U, K], then [B, K] each.
                    rewards = self.model(batch["inputs"], batch["last_index"], batch["response_start"])
                    chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]
                    # 3. Bradley-Terry (+ centring); each head weighs pairs by its bootstrap counts.
                    weights = self.boot[batch["index"].cpu()].to(rewards.device)
                    loss = core.bradley_terry_loss(chosen, rejected, batch["margin"], weights)
                    if args.center_rewards_coefficient:
                        loss = loss + args.center_rewards_coefficient * core.center_penalty(chosen, rejected)
                    # 4. Backward, clip and step on the last micro-batch of the accumulation.
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        if args.max_grad_norm and args.max_grad_norm > 0:
                            self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                mean_c, mean_r = chosen.detach().mean(-1), rejected.detach().mean(-1)
                running.setdefault("train/loss", []).append(loss.item())
                running.setdefault("train/accuracy", []).append(core.pair_accuracy(mean_c, mean_r).mean().item())
                running.setdefault("train/margin", []).append((mean_c - mean_r).mean().item())
                if not self.accelerator.sync_gradients:
                    continue
                self.step += 1
                bar.update(1)
                log_now = log_every and self.step % log_every == 0 or self.step == self.total_steps
                # Evaluation keeps its own schedule: eval_steps need not be a multiple of logging_steps.
                eval_now = eval_every and self.step % eval_every == 0
                if log_now or eval_now:
                    metrics = {}
                    if log_now:
                        metrics = self.reduce_mean({k: sum(v) / len(v) for k, v in running.items()})
                        metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
                        running = {}
                        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/accuracy']:.2f}")
                    if eval_now:
                        metrics.update(self.evaluate())
                    self.log(metrics)
                if save_steps and self.step % save_steps == 0:
                    self.running = running
                    self.save_checkpoint()
                    rotate_checkpoints(args.output_dir, args.save_total_limit)
                if self.step >= self.total_steps:
                    break
            else:
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        self.running = running
        bar.close()
        if self.eval_dataset is not None:
            final = self.evaluate()
            self.info.metrics = final
            self.log(final)
        # Not accelerator.end_training(): it destroys the process group, and save_model and
        # evaluate still need it under DDP.
        for tracker in self.accelerator.trackers:
            tracker.finish()
        return self.log_history

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Training metrics averaged over ranks (the only cross-rank reduction of logging)."""
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))

    def log(self, metrics: dict[str, float]) -> None:
        entry = {"step": self.step, **{k: float(v) for k, v in metrics.items()}}
        self.log_history.append(entry)
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=self.step)
        if self.accelerator.is_main_process:
            logger.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            with open(Path(self.args.output_dir) / "log_history.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, dataset, image_from: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Rewards of every pair of `dataset`, gathered over ranks, in dataset order:
        `chosen` [N, K], `rejected` [N, K], `index` [N]. `image_from`: see `collate`."""
        keys = pair_keys(dataset)  # held-out rows come in export order, an image's pairs together
        loader = DataLoader(_Indices(len(dataset)), batch_size=self.args.per_device_eval_batch_size,
                            collate_fn=lambda idx: self.collate(dataset, idx, image_from, keys), **self.loader_workers())
        loader = self.accelerator.prepare_data_loader(loader)
        was_training = self.model.training
        self.model.eval()
        out: dict[str, list] = {"chosen": [], "rejected": [], "index": []}
        for batch in loader:
            rewards = self.model(batch["inputs"], batch["last_index"], batch["response_start"])
            chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]
            # Gather at the metric boundary only: every rank scored its shard.
            c, r, i = self.accelerator.gather_for_metrics((chosen, rejected, batch["index"]))
            out["chosen"].append(c.float().cpu())
            out["rejected"].append(r.float().cpu())
            out["index"].append(i.cpu())
        if was_training:
            self.model.train()
        res = {k: torch.cat(v) for k, v in out.items()}
        order = torch.argsort(res["index"])
        return {k: v[order] for k, v in res.items()}

    def evaluate(self, dataset=None) -> dict[str, float]:
        """Held-out pair accuracy (ensemble mean; ties count 1/2), mean margin r_c - r_r,
        BT loss, ensemble std, and each head's accuracy when K > 1."""
        dataset = dataset if dataset is not None else self.eval_dataset
        pred = self.predict(dataset)
        c, r = pred["chosen"], pred["rejected"]
        _, mean_c, std_c = core.ensemble_reward(c)
        _, mean_r, std_r = core.ensemble_reward(r)
        metrics = {
            "eval/accuracy": core.pair_accuracy(mean_c, mean_r).mean().item(),
            "eval/margin": (mean_c - mean_r).mean().item(),
            "eval/loss": core.bradley_terry_loss(c, r).item(),
            "eval/reward_chosen": mean_c.mean().item(),
            "eval/reward_rejected": mean_r.mean().item(),
            "eval/num_pairs": float(len(c)),
        }
        if c.shape[1] > 1:
            metrics["eval/std"] = torch.cat([std_c, std_r]).mean().item()
            for k in range(c.shape[1]):
                metrics[f"eval/accuracy_head{k}"] = core.pair_accuracy(c[:, k], r[:, k]).mean().item()
        image_from = shuffled_images(dataset, self.args.seed) if self.args.eval_shuffled_images else None
        if image_from is not None:
            shuffled = self.predict(dataset, image_from)
            metrics["eval/accuracy_shuffled_images"] = core.pair_accuracy(
                shuffled["chosen"].mean(-1), shuffled["rejected"].mean(-1)).mean().item()
        return metrics

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None) -> str:
        """The reward-model folder `LearnedReward(path)` loads (see mmft.reward_modeling.model)."""
        output_dir = output_dir or self.args.output_dir
        self.accelerator.wait_for_everyone()
        model = self.unwrapped
        # Under ZeRO-3 every rank holds a shard of the adapter and head: gather (collective).
        with _gathered([p for p in model.parameters() if p.requires_grad]):
            if self.accelerator.is_main_process:
                save_reward_model(model, self.processor, self.info, output_dir)
                with open(Path(output_dir) / "log_history.json", "w") as f:
                    json.dump(self.log_history, f, indent=1)
        self.accelerator.wait_for_everyone()
        return str(output_dir)

    # ------------------------------------------------------------------ checkpoints
    @property
    def deepspeed(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def save_checkpoint(self, directory: str | None = None) -> str:
        """OUTPUT_DIR/checkpoint-STEP: the reward-model folder (`LearnedReward` loads it), the
        optimizer and scheduler, every rank's RNG states, and the position in the data.
        Collective (every rank calls it); written under a temporary name and renamed."""
        directory = directory or os.path.join(self.args.output_dir, f"checkpoint-{self.step}")
        with checkpoint_folder(directory) as tmp:
            save_rng_state(tmp)
            # This rank's training metrics since the last log (each rank logs its own mean).
            Path(tmp, f"running_{distributed()[0]}.json").write_text(json.dumps(self.running))
            if self.deepspeed:  # every rank writes its optimizer (and ZeRO-3 parameter) shards
                self.model.save_checkpoint(tmp, tag="deepspeed", exclude_frozen_parameters=True)
            self.save_model(tmp)
            if self.accelerator.is_main_process:
                if not self.deepspeed:
                    trainable = {n: p.detach().cpu() for n, p in self.unwrapped.named_parameters() if p.requires_grad}
                    torch.save(trainable, os.path.join(tmp, TRAINABLE_STATE))
                    torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                torch.save(self.lr_scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
                state = {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                         "log_history": self.log_history,
                         "num_train_pairs": len(self.train_dataset),
                         "per_device_train_batch_size": self.args.per_device_train_batch_size,
                         "num_processes": self.accelerator.num_processes,
                         "group_by_image": bool(self.args.group_by_image), "seed": self.args.seed}
                Path(tmp, TRAINER_STATE).write_text(json.dumps(state, indent=1))
        return directory

    def load_checkpoint(self, directory: str) -> None:
        """Restores what `save_checkpoint` wrote; the data must be batched as it was (the same
        number of training pairs, batch size, processes, grouping and seed), or the position
        in it would point at other pairs."""
        state = json.loads(Path(directory, TRAINER_STATE).read_text())
        now = {"num_train_pairs": len(self.train_dataset),
               "per_device_train_batch_size": self.args.per_device_train_batch_size,
               "num_processes": self.accelerator.num_processes,
               "group_by_image": bool(self.args.group_by_image), "seed": self.args.seed}
        differ = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"Cannot resume from {directory}: its data was batched differently "
                             + ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in differ.items())
                             + ". Resume with the same training pairs, batch size, number of processes, "
                               "group_by_image and seed, or start a new run in another output_dir.")
        if self.deepspeed:
            self.model.load_checkpoint(directory, tag="deepspeed", load_module_strict=False)
        else:
            saved = torch.load(os.path.join(directory, TRAINABLE_STATE))
            trainable = {n for n, p in self.unwrapped.named_parameters() if p.requires_grad}
            if set(saved) != trainable:
                raise ValueError(f"Checkpoint {directory} was trained with other adapters or heads than this model "
                                 f"has: only there {sorted(set(saved) - trainable)[:3]}, only here "
                                 f"{sorted(trainable - set(saved))[:3]} (LoRA targets, rank, num_heads, pooling "
                                 "and likelihood_term must match).")
            self.unwrapped.load_state_dict(saved, strict=False)
            self.optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), weights_only=False))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(directory, "scheduler.pt")))
        load_rng_state(directory)
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        if self.batches_in_epoch >= len(self.train_loader):  # saved on an epoch's last batch
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        self.running = json.loads(Path(directory, f"running_{distributed()[0]}.json").read_text())
        self.log_history = state["log_history"]
        logger.info("Resumed the reward model from %s at step %d (epoch %d, batch %d of it)", directory, self.step,
                    self.epoch, self.batches_in_epoch)


def _gathered(params: list[torch.nn.Parameter]):
    """Context in which ZeRO-3-partitioned `params` are whole on every rank (a collective);
    nothing to do for parameters DeepSpeed does not partition."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
