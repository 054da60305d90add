"""Human-preference loop end to end on the embedded task, with a scripted oracle as the human.

    python scripts/preference_demo.py --json outputs/preference_demo.json

1. Pairs: sample eight captions per training scene (20,000 scenes; the task's generator
   makes as many as asked for) from the demo base model and pair up every two distinct ones,
   up to 28 pairs (scripts/make_pairs.py; `--samples_per_image`, `--pairs_per_image`), images
   saved as PNG beside PAIRS.jsonl.
2. Labels: a real `mmft label serve` server runs in a subprocess on 127.0.0.1; the oracle
   labeler gets a token (`mmft label add-labeler`) and labels every pair through the JSON
   API, 500 a request (GET /api/pairs, POST /api/labels; the page takes one at a time
   with /api/next and /api/label), preferring the caption that names more of the
   scene's true attributes correctly (reward_models.AttributeReward, `--oracle_scoring`:
   by default net_correct, the true attributes named minus the wrong claims, so a wrong
   claim cancels a right one); equal scores are "tie".
3. Export: `mmft label export` writes the preference dataset (ties are not rows).
4. Reward model: Bradley-Terry on the export, LoRA + a scalar head with the likelihood
   term (RewardModelConfig.likelihood_term) on its backbone: the demo base's SFT recipe run
   for `--rm_backbone_steps` (3,000) over `--rm_backbone_scenes` (20,000) scenes (built
   once, cached like the demo base), a better captioner than the policy's base, as reward
   models start from a strong SFT model. On the demo base itself (`--rm_backbone_steps 0`)
   a reward model cannot judge attributes the base does not see (see docs/preference.md).
   Held-out accuracy (split by pair and image) is compared with `--min_rm_accuracy` (0.9);
   also recorded: the accuracy with the held-out images shuffled (near 0.5: the model
   judges by the image), by how far apart the oracle scored the two captions, and on
   pairs from `--num_unseen_scenes` (2,000) scenes after every id the pairs and the
   backbone's SFT used (`rm_accuracy_unseen_scenes`; the saved folder loaded as PPO loads
   it, `LearnedReward`; oracle labels, ties dropped and counted).
5. PPO: the demo base with LoRA policy and critic adapters, the learned reward
   (reward_models.LearnedReward on the saved folder) as the only reward; mounted on the
   policy's base (mount_reward_models) when the reward model shares it.
6. Oracle accuracy (mean AttributeReward with the oracle's scoring) of greedy captions on
   held-out test scenes, before and after PPO; `oracle_scores_before_after` has them under
   every scoring (recall_minus_error_share: the oracle until the eleventh session).
Also recorded: the base's caption loss on test scenes with matched and with shuffled
images (`base_caption_loss`): equal values mean the base ignores the image.

OUT (--json) holds rm_accuracy, oracle_before, oracle_after, the settings and the time of
every stage. Each finished stage leaves WORK_DIR/stages/NAME.json (its results and time), and
the reward model a checkpoint every `--rm_save_steps` steps: `--resume` continues a stopped
run in the same WORK_DIR with the same settings (the labels the server acknowledged stay
in its database, the reward model resumes from its latest checkpoint), so a run longer
than a sitting can be done in several. `--reward_model WORK_DIR/reward_model` runs the PPO stage alone on an earlier
run's reward model (its held-out figures read from the folder), e.g. at another
`--ppo_kl_coef` or `--seed`. Departure from a human study: the oracle sees the scene's ground-truth
attributes (pair metadata) instead of the image, so labels are noiseless.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY_LABELS = 10_000
# Pairs per request of the oracle labeler (GET /api/pairs, POST /api/labels): one commit per
# batch instead of one fsync per label (63 labels a second one by one here).
LABEL_BATCH = 500


@dataclass
class DemoSettings:
    # Training scenes to caption (ids 0..N-1: the split's 2,000 and generated ones beyond), and
    # captions sampled and distinct pairs of them labelled per scene. Labels are the reward
    # model's lever (docs/preference.md): the pairs of more captions a scene served as well as those of
    # more scenes (tenth session) and cost fewer sequences to train on (eight captions: fifteenth).
    # Every pair of eight captions for 20,000 scenes (nineteenth session): held-out 0.928, 79
    # minutes end to end here; four captions x 6 pairs for 10,000 scenes, the defaults until
    # then, gave 0.871, and eight for 14,000 gave 0.894 (BENCHMARKS.md).
    num_pair_images: int = 20000
    samples_per_image: int = 8
    pairs_per_image: int = 28
    pair_temperature: float = 1.0
    eval_fraction: float = 0.15  # pairs held out for the reward model's accuracy
    # The reward model's backbone: the demo base's recipe (mmft.demo.DemoBaseSpec) run for this
    # many SFT steps over this many scenes, a better captioner than the policy's base (steps 0:
    # the policy's own base, which PPO then shares with the reward model, mount_reward_models=True).
    rm_backbone_steps: int = 3000
    rm_backbone_scenes: int = 20000
    rm_likelihood: bool = True  # RewardModelConfig.likelihood_term
    rm_pooling: str = "last+mean+sum"  # RewardModelConfig.pooling: what the heads read
    # 6 epochs of 64 pairs at 1e-3 (held-out 0.882; 0.880 on an H200) beat 3 of 16 at 7e-4 (0.871): with
    # 16 pairs a step, a 4-epoch schedule at 1e-3 broke training down; 64 keep it stable, and a
    # step costs the same per pair on a CPU (docs/preference.md, tenth session). With eight
    # captions a scene, 4 epochs of 128 (whole scenes, 4.6 a step) reach 0.902 on the sixteenth
    # session's export and 0.928 here (nineteenth).
    rm_epochs: float = 4.0
    rm_learning_rate: float = 1e-3
    rm_batch_size: int = 128
    rm_lora_r: int = 32
    # Batches of whole scenes (RewardModelConfig.group_by_image) score a scene's 4 captions once for
    # its up to 6 pairs: 0.66 s a step instead of 1.53 s here (twelfth session, four captions);
    # RewardModelConfig.share_prompts then runs each scene's prompt once for its captions. With 13 scenes a batch instead of 64
    # the reward model learns less per step early (held-out 0.807 against 0.842 after epoch 1), but
    # not by the sixth epoch: 0.871-0.872 against 0.873-0.876 for three seeds of random batches
    # (docs/preference.md, twelfth and thirteenth sessions). On: half the reward model's time.
    rm_group_by_image: bool = True
    # The learned reward can be over-optimised: at KL coefficient 0.02 the greedy captions turn
    # into lists ("... and a little green triangle and a little green triangle and") within 60
    # iterations. At 0.1 they stay sentences while the oracle score still rises through 100
    # iterations, but with the 0.882 reward model of the earlier oracle (recall minus error
    # share) 42 of 100 became "one", which that formula scored above a detailed caption with two
    # wrong attributes; at 0.3 none did (docs/preference.md, tenth session; the oracle is
    # net_correct since; short_captions_before_after in OUT).
    ppo_steps: int = 100
    ppo_batch_size: int = 16  # x ppo_grad_accum samples per iteration
    ppo_grad_accum: int = 2
    ppo_epochs: int = 2
    ppo_learning_rate: float = 1e-3
    ppo_kl_coef: float = 0.1
    num_eval_scenes: int = 100  # held-out test scenes for the oracle accuracy
    # How the oracle scores a caption (reward_models.AttributeReward.SCORINGS). net_correct counts
    # the true attributes named minus the wrong claims. The earlier recall_minus_error_share rated
    # "one" above a detailed caption with two wrong attributes, and PPO found that: 42 of 100
    # greedy captions became "one" (docs/preference.md, tenth session).
    oracle_scoring: str = "net_correct"
    # Scenes that neither the reward model's pairs nor its backbone's SFT saw (the ids after
    # both): their pairs, labelled by the oracle, give rm_accuracy_unseen_scenes (0: skip).
    num_unseen_scenes: int = 2000
    seed: int = 0
    # Reward-model checkpoints (the newest kept) for --resume: 250 steps are about 30 s here (3-4
    # minutes on the shared machine of earlier sessions).
    # Under 1: that share of the training's steps (RewardModelConfig.save_steps).
    rm_save_steps: float = 250.0


class Stages:
    """The stages a run has finished, in WORK/stages/NAME.json: `run` returns a finished
    stage's recorded result (and time) instead of running it again."""

    def __init__(self, work: Path, timings: dict[str, float]):
        self.dir = work / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings = timings

    def run(self, name: str, stage):
        path = self.dir / f"{name}.json"
        if path.exists():
            record = json.loads(path.read_text())
            logging.info("stage %s: finished in an earlier run (%s), %.0f s", name, path, record["seconds"])
        else:
            t = time.time()
            record = {"result": stage(), "seconds": time.time() - t}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, path)
        self.timings[f"{name}_s"] = record["seconds"]
        return record["result"]


def check_resumable(work: Path, s: DemoSettings, resume: bool) -> None:
    """A new run needs an empty WORK; `--resume` needs the settings WORK was started with."""
    saved = work / "settings.json"
    if not resume:
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"{work} is not empty; pass --resume to continue the run there, or remove it or "
                             "pass another --work_dir.")
        work.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(asdict(s), indent=1))
        return
    if not saved.exists():
        raise SystemExit(f"--resume: {saved} is missing; {work} holds no preference_demo run to continue.")
    before = json.loads(saved.read_text())
    differ = {k: (before.get(k), v) for k, v in asdict(s).items() if before.get(k) != v}
    if differ:
        raise SystemExit(f"--resume: {work} was started with other settings ("
                         + ", ".join(f"{k}: {a} then, {b} now" for k, (a, b) in differ.items())
                         + "); resume with the same ones, or start a new run in another --work_dir.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def label_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`python -m mmft.label ...` (the same commands as `mmft label ...`)."""
    return subprocess.run([sys.executable, "-m", "mmft.label", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True, **kwargs)


class Server:
    """`mmft label serve` in a subprocess on a free loopback port."""

    def __init__(self, pairs: Path, db: Path):
        import httpx

        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = db.parent / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mmft.label", "serve", "--pairs", str(pairs), "--db", str(db),
                 "--port", self.url.rsplit(":", 1)[1]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        # The clock starts once the server has synced the pairs into the database ("serving N
        # pairs" in its log): 560,000 pairs take about a minute to check and sync here, and imports
        # alone can take 15 s on a busy 2-core machine.
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label server exited with {self.process.returncode}:\n{self.log.read_text()}")
            if deadline is None:
                if b"serving " not in self.log.read_bytes():
                    time.sleep(0.5)
                    continue
                deadline = time.monotonic() + 120
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"label server did not answer within 120 s of syncing its pairs:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def oracle_choice(oracle, caption_a: str, caption_b: str, scene: dict) -> str:
    """"A", "B" or "tie": the caption naming more true attributes (fewer wrong ones) wins."""
    a = oracle.score_one(caption_a, scene["objects"], scene["num_objects"], scene["relation"])
    b = oracle.score_one(caption_b, scene["objects"], scene["num_objects"], scene["relation"])
    return "A" if a > b else "B" if b > a else "tie"


def label_over_http(url: str, token: str, scenes: dict[str, dict], oracle, log_every: int = LOG_EVERY_LABELS,
                    batch: int = LABEL_BATCH) -> dict[str, int]:
    """The scripted labeler: the next `batch` pairs (GET /api/pairs), judge them, submit them
    (POST /api/labels), until the server says done. Logs the server's progress about every
    `log_every` labels."""
    import httpx

    counts = {"A": 0, "B": 0, "tie": 0}
    start, logged = time.time(), 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as client:
        while True:
            nxt = client.get("/api/pairs", params={"limit": batch})
            nxt.raise_for_status()
            pairs = nxt.json()["pairs"]
            if not pairs:
                return counts
            labels = [{"pair_id": pair["pair_id"],
                       "choice": oracle_choice(oracle, pair["caption_a"], pair["caption_b"], scenes[pair["pair_id"]])}
                      for pair in pairs]
            posted = client.post("/api/labels", json={"labels": labels})
            posted.raise_for_status()
            for label in labels:
                counts[label["choice"]] += 1
            labelled = sum(counts.values())
            if labelled - logged >= log_every:
                logged = labelled
                progress = posted.json()["progress"]
                logging.info("Oracle labels: %d/%d in the database, %.0f a second over HTTP.",
                             progress["done"], progress["total"], labelled / (time.time() - start))


def label_with_oracle(work: Path, pairs: Path, db: Path, scenes: dict[str, dict], oracle,
                      log_every: int = LOG_EVERY_LABELS, batch: int = LABEL_BATCH) -> dict[str, int]:
    """Stage 2: the oracle labeler's token (kept in WORK, so a resumed run labels on as the
    same labeler), a server, every pair not yet labelled; the labels in the database by choice."""
    from mmft.label import storage

    token_file = work / "oracle_token"
    if not token_file.exists():
        token_file.write_text(label_cli("add-labeler", "oracle", "--db", str(db)).stdout.strip())
    server = Server(pairs, db)
    try:
        label_over_http(server.url, token_file.read_text().strip(), scenes, oracle, log_every, batch)
    finally:
        server.stop()
    conn = storage.connect(db)
    try:
        choices = [row.choice for row in storage.read_labels(conn) if row.labeler == "oracle"]
    finally:
        conn.close()
    return {c: choices.count(c) for c in ("A", "B", "tie")}


def oracle_scores(trainer, dataset) -> tuple[dict[str, float], list[str]]:
    """Mean AttributeReward of greedy captions on `dataset` under every scoring (and the captions)."""
    from reward_models import AttributeReward

    indices, texts = trainer.generate_captions(dataset)
    means = {}
    for scoring in AttributeReward.SCORINGS:
        oracle = AttributeReward(scoring=scoring)
        scores = [oracle.score_one(t, dataset[i]["objects"], dataset[i]["num_objects"], dataset[i]["relation"])
                  for i, t in zip(indices, texts)]
        means[scoring] = sum(scores) / len(scores)
    return means, texts


def mean_words(texts: list[str]) -> float:
    """Mean number of whitespace-separated words per caption."""
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def image_sensitivity(base: str, num_scenes: int = 32) -> dict[str, float]:
    """Caption loss of the base on held-out scenes with their own images and with the
    images shuffled. Equal losses mean the base ignores the image, so neither a reward
    model on its backbone (vision tower frozen) nor PPO on it can judge captions by the
    image: the diagnosis to read beside a low rm_accuracy."""
    import torch

    from mmft.data.collator import VLMCollator
    from mmft.data.synthetic import load_synthetic_captions
    from mmft.demo import caption_targets
    from mmft.models.loading import load_processor, load_vlm
    from mmft.rollout import training_inputs

    model, processor = load_vlm(base).eval(), load_processor(base)
    tok = processor.tokenizer
    rows = list(load_synthetic_captions("test", num_scenes))
    ids, mask = caption_targets(tok, [r["references"][0] for r in rows], tok.eos_token_id, tok.pad_token_id)

    def loss(image_rows) -> float:
        inputs = training_inputs(VLMCollator(processor)(image_rows), ids, mask, model.config.model_type)
        with torch.no_grad():
            logits = model(**inputs, logits_to_keep=ids.shape[1] + 1).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        return float((nll * mask).sum() / mask.sum())

    return {"matched_images": loss(rows), "shuffled_images": loss(rows[1:] + rows[:1])}


GAP_BUCKETS = ((0.1, "< 0.1"), (0.2, "0.1-0.2"), (0.3, "0.2-0.3"), (0.4, "0.3-0.4"), (0.5, "0.4-0.5"),
               (float("inf"), ">= 0.5"))


def accuracy_by_oracle_margin(pair_ids, chosen, rejected, scenes: dict[str, dict], oracle) -> dict[str, dict]:
    """Held-out accuracy (ties count 1/2, as eval/accuracy) of rewards `chosen` / `rejected`
    [pairs] by how far apart the oracle scored the pair's two captions (|score_A - score_B|,
    in GAP_BUCKETS): near-equal pairs are the hard ones for any model. `scenes` maps each
    pair id to its line of the pairs file (captions and scene)."""
    import torch

    from mmft.reward_modeling.core import pair_accuracy

    correct = pair_accuracy(torch.as_tensor(chosen).float(), torch.as_tensor(rejected).float()).tolist()
    buckets: dict[str, list[float]] = {}
    for pair_id, ok in zip(pair_ids, correct):
        scene = scenes[pair_id]
        a, b = (oracle.score_one(scene[c], scene["objects"], scene["num_objects"], scene["relation"])
                for c in ("caption_a", "caption_b"))
        key = next(name for bound, name in GAP_BUCKETS if abs(a - b) < bound)
        buckets.setdefault(key, []).append(ok)
    return {k: {"accuracy": sum(buckets[k]) / len(buckets[k]), "pairs": len(buckets[k])}
            for _, k in GAP_BUCKETS if k in buckets}


def unseen_scene_accuracy(make_pairs, base: str, rm_dir: Path, work: Path, s: DemoSettings, oracle) -> dict:
    """The saved reward model (`LearnedReward`, as PPO loads it) on pairs from scenes after
    every id that its pairs and its backbone trained on, labelled by the oracle directly
    (ties dropped, counted): does it judge new images, or recall the ones it saw?"""
    import torch
    from PIL import Image

    from mmft.demo import DemoBaseSpec
    from mmft.label.pairs import load_pairs
    from mmft.reward_modeling.core import pair_accuracy
    from reward_models.learned import LearnedReward

    backbone_scenes = s.rm_backbone_scenes if s.rm_backbone_steps > 0 else DemoBaseSpec().num_scenes
    offset = max(s.num_pair_images, backbone_scenes)
    path = work / "unseen" / "pairs.jsonl"
    shutil.rmtree(path.parent, ignore_errors=True)  # a resumed run's half-written ones
    make_pairs(path, model=base, num_images=s.num_unseen_scenes, offset=offset,
               samples_per_image=s.samples_per_image, pairs_per_image=s.pairs_per_image,
               temperature=s.pair_temperature, batch_size=64, seed=s.seed + 1)
    prompts, chosen, rejected, images, ties = [], [], [], [], 0
    for pair in load_pairs(path):
        choice = oracle_choice(oracle, pair.caption_a, pair.caption_b, pair.metadata)
        if choice == "tie":
            ties += 1
            continue
        win, lose = (pair.caption_a, pair.caption_b) if choice == "A" else (pair.caption_b, pair.caption_a)
        with Image.open(pair.image) as image:
            images.append(image.convert("RGB"))
        prompts.append(pair.prompt)
        chosen.append(win)
        rejected.append(lose)
    reward = LearnedReward(rm_dir, name="learned")
    n = len(chosen)
    scores = reward(prompts=prompts + prompts, completions=chosen + rejected, image=images + images)
    accuracy = pair_accuracy(torch.tensor(scores[:n]), torch.tensor(scores[n:])).mean().item() if n else None
    return {"accuracy": accuracy, "pairs": n, "ties": ties, "first_scene": offset,
            "scenes": s.num_unseen_scenes}


def preference_stages(work: Path, s: DemoSettings, base: str, oracle, min_rm_accuracy: float,
                      timings: dict[str, float]) -> tuple[Path, str, dict]:
    """Stages 1-4 (and the unseen scenes): the reward-model folder, its backbone, OUT's fields."""
    from mmft.checkpointing import complete_checkpoints
    from mmft.demo import DemoBaseSpec, build_demo_base
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer
    from mmft.reward_modeling.data import held_out_split, load_preferences
    from mmft.rl_trainer import default_lora_config

    stages = Stages(work, timings)
    # 1. Pairs from the demo base.
    make_pairs = runpy.run_path(str(ROOT / "scripts" / "make_pairs.py"), run_name="make_pairs")["make_pairs"]
    pairs = work / "pairs" / "pairs.jsonl"

    def pairs_stage() -> dict:
        if pairs.parent.exists():  # a run stopped while writing them
            shutil.rmtree(pairs.parent)
        return make_pairs(pairs, model=base, num_images=s.num_pair_images, samples_per_image=s.samples_per_image,
                          pairs_per_image=s.pairs_per_image, temperature=s.pair_temperature, batch_size=64,
                          seed=s.seed)

    pair_summary = stages.run("make_pairs", pairs_stage)
    scenes = {r["pair_id"]: r for r in map(json.loads, pairs.read_text().splitlines())}

    # 2. Oracle labels through a real server's HTTP API (a resumed run labels what is left).
    db = work / "labels.sqlite"
    counts = stages.run("labelling", lambda: label_with_oracle(work, pairs, db, scenes, oracle))

    # 3. Export.
    export = work / "prefs"

    def export_stage() -> dict:
        if export.exists():
            shutil.rmtree(export)
        label_cli("export", "--db", str(db), "--output", str(export))
        return {"rows": len(load_preferences(export))}

    stages.run("export", export_stage)
    prefs = load_preferences(export)
    train, held_out = held_out_split(prefs, s.eval_fraction, s.seed)

    # 4. Reward model on the export, on its backbone (built once, then cached like the demo base).
    t = time.time()
    rm_spec = DemoBaseSpec(steps=s.rm_backbone_steps, num_scenes=s.rm_backbone_scenes)
    rm_base = base if s.rm_backbone_steps <= 0 else str(build_demo_base(rm_spec))
    timings["rm_backbone_s"] = time.time() - t
    rm_dir = work / "reward_model"

    def reward_model_stage() -> dict:
        rm_args = RewardModelConfig(output_dir=str(rm_dir), num_train_epochs=s.rm_epochs,
                                    learning_rate=s.rm_learning_rate, per_device_train_batch_size=s.rm_batch_size,
                                    logging_steps=20, seed=s.seed, max_completion_length=64,
                                    likelihood_term=s.rm_likelihood, pooling=s.rm_pooling,
                                    group_by_image=s.rm_group_by_image, save_steps=s.rm_save_steps,
                                    save_total_limit=1)
        rm_trainer = RewardModelTrainer(rm_base, args=rm_args, train_dataset=train, eval_dataset=held_out,
                                        peft_config=default_lora_config("language", s.rm_lora_r, 2 * s.rm_lora_r))
        rm_trainer.train(resume_from_checkpoint=bool(complete_checkpoints(rm_dir)))
        rm_trainer.save_model()
        pred = rm_trainer.predict(held_out)
        return {"metrics": rm_trainer.info.metrics, "by_margin": accuracy_by_oracle_margin(
            held_out["pair_id"], pred["chosen"].mean(-1), pred["rejected"].mean(-1), scenes, oracle)}

    rm = stages.run("reward_model", reward_model_stage)
    rm_metrics = rm["metrics"]
    unseen = None
    if s.num_unseen_scenes > 0:
        unseen = stages.run("unseen_scenes", lambda: unseen_scene_accuracy(make_pairs, base, rm_dir, work, s, oracle))
    if rm_metrics["eval/accuracy"] < min_rm_accuracy:
        logging.warning("reward model held-out accuracy %.3f is under %.2f", rm_metrics["eval/accuracy"],
                        min_rm_accuracy)
    return rm_dir, rm_base, {
        "rm_accuracy": rm_metrics["eval/accuracy"],
        "rm_accuracy_shuffled_images": rm_metrics.get("eval/accuracy_shuffled_images"),
        "rm_accuracy_by_oracle_margin": rm["by_margin"],
        "rm_margin": rm_metrics["eval/margin"],
        "rm_accuracy_unseen_scenes": unseen,
        "pairs": pair_summary["pairs"],
        "labels": counts,
        "train_pairs": len(train),
        "held_out_pairs": len(held_out),
    }


def saved_reward_model(path: Path) -> tuple[Path, str, dict]:
    """`--reward_model`: an earlier run's reward-model folder instead of stages 1-4; its
    held-out figures come from the folder's reward_config.json."""
    from mmft.reward_modeling.model import read_info

    info = read_info(path)
    return path, info.base_model_name_or_path, {
        "reward_model_reused": str(path),
        "rm_accuracy": info.metrics.get("eval/accuracy"),
        "rm_accuracy_shuffled_images": info.metrics.get("eval/accuracy_shuffled_images"),
        "rm_margin": info.metrics.get("eval/margin"),
    }


def run(work: Path, s: DemoSettings, min_rm_accuracy: float, reward_model: Path | None = None) -> dict:
    import torch

    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions
    from mmft.demo import build_demo_base
    from mmft.rl_trainer import default_lora_config
    from reward_models import AttributeReward
    from reward_models.learned import LearnedReward

    oracle = AttributeReward(scoring=s.oracle_scoring)
    timings: dict[str, float] = {}
    t = time.time()
    base = str(build_demo_base())
    timings["demo_base_s"] = time.time() - t
    base_loss = image_sensitivity(base)
    if reward_model is None:
        rm_dir, rm_base, rm_fields = preference_stages(work, s, base, oracle, min_rm_accuracy, timings)
    else:
        rm_dir, rm_base, rm_fields = saved_reward_model(reward_model)

    # 5-6. PPO with the learned reward; oracle accuracy of greedy captions before and after.
    t = time.time()
    shutil.rmtree(work / "ppo", ignore_errors=True)  # a resumed run's unfinished PPO starts over
    ppo_args = PPOConfig(output_dir=str(work / "ppo"), max_steps=s.ppo_steps, per_device_train_batch_size=s.ppo_batch_size,
                         gradient_accumulation_steps=s.ppo_grad_accum, num_ppo_epochs=s.ppo_epochs,
                         learning_rate=s.ppo_learning_rate, kl_coef=s.ppo_kl_coef, max_new_tokens=32, temperature=1.0,
                         eval_steps=0, save_steps=0, logging_steps=5, per_device_eval_batch_size=50, seed=s.seed,
                         mount_reward_models=rm_base == base)
    test_scenes = load_synthetic_captions("test", s.num_eval_scenes)
    ppo = PPOTrainer(base, args=ppo_args, reward_funcs=[LearnedReward(rm_dir, name="learned")],
                     train_dataset=load_synthetic_captions("train"), peft_config=default_lora_config("language", 16, 32))
    before, before_texts = oracle_scores(ppo, test_scenes)
    history = ppo.train()
    after, after_texts = oracle_scores(ppo, test_scenes)
    timings["ppo_s"] = time.time() - t

    return {
        **rm_fields,
        "rm_backbone": rm_base,
        "rm_mounted": rm_base == base,
        "oracle_scoring": s.oracle_scoring,
        "oracle_before": before[s.oracle_scoring],
        "oracle_after": after[s.oracle_scoring],
        "oracle_scores_before_after": {k: [before[k], after[k]] for k in before},
        # Where the reward is gamed it shows in the greedy captions' length first: run-on lists
        # (more words) or a bare count such as "one" (captions of at most 2 words).
        "caption_words_before_after": [mean_words(before_texts), mean_words(after_texts)],
        "short_captions_before_after": [sum(len(t.split()) <= 2 for t in texts) for texts in (before_texts, after_texts)],
        "base_caption_loss": base_loss,
        "learned_reward_first_last": [history[0].get("rewards/learned"), history[-1].get("rewards/learned")],
        "sample_captions": [{"before": b, "after": a, "objects": test_scenes[i]["objects"]}
                            for i, (b, a) in enumerate(zip(before_texts[:5], after_texts[:5]))],
        "settings": asdict(s),
        "torch_threads": torch.get_num_threads(),
        "timings_s": timings,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--work_dir", default=None, help="pairs, labels, export, models (default: beside --json)")
    p.add_argument("--min_rm_accuracy", type=float, default=0.9, help="held-out accuracy the reward model must reach")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --work_dir (same settings): finished stages are read from "
                        "WORK_DIR/stages, labelling goes on from the database, the reward model from its checkpoint")
    p.add_argument("--reward_model", type=Path, default=None,
                   help="an earlier run's reward-model folder (WORK_DIR/reward_model): skip the pairs, labels and "
                        "reward-model training, and run the PPO stage with it (e.g. at another --ppo_kl_coef)")
    for name, value in asdict(DemoSettings()).items():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        p.add_argument(f"--{name}", type=kind, default=value, help=f"(default {value})")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    settings = DemoSettings(**{k: getattr(args, k) for k in asdict(DemoSettings())})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per labelled pair
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.json)
    work = Path(args.work_dir) if args.work_dir else out.parent / (out.stem + "_work")
    check_resumable(work, settings, args.resume)
    t = time.time()
    results = run(work, settings, args.min_rm_accuracy, args.reward_model)
    results["total_s"] = time.time() - t
    results["command"] = " ".join(["python", "scripts/preference_demo.py", *(sys.argv[1:] if argv is None else argv)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("rm_accuracy", "oracle_before", "oracle_after", "total_s")}, indent=1))
    return results


if __name__ == "__main__":
    main()
