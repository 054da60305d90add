"""Peak memory of a PPO iteration (every role on one base) against a LoRA SFT step and
against naive separate copies, from tiny models to a realistic size (issues 3 and 6).

    python scripts/bench_memory.py --json bench_memory.json         # CPU: ~5-10 min on 2 cores
    python scripts/bench_memory.py --json /tmp/m.json --quick       # one tiny model (smoke test)
    python scripts/bench_memory.py --models realistic --json m.json # one model only

Per model, three measurements, each in its own child process with the same batch
(B prompts with their image; SFT targets of `max_new_tokens` tokens; the rollouts are
cut to their longest response, which is `max_new_tokens` for the random-weight models,
which practically never sample their EOS, and can be shorter for the trained demo model,
whose `response/length` the JSON records) and the same LoRA
(rank 16 on the language model's linear layers):

- sft: one LoRA SFT step (forward, backward, AdamW step) on prompt + caption;
- ppo: one mmft PPO iteration (`mmft.PPOTrainer`: rollout, old/ref log-probs, values,
  rewards, GAE, one epoch; policy LoRA + value LoRA + value head on ONE frozen base,
  reference = adapter disabled);
- naive: the same iteration with three separate models: policy (base + LoRA), frozen
  reference (a second copy of the base), critic (a third copy + LoRA + value head).

Memory is the child's peak: on the CPU `getrusage(RUSAGE_SELF).ru_maxrss` (the whole
process, so Python + torch + data are in every figure; "above imports" subtracts the
resident size measured right after the imports); on a GPU `torch.cuda.max_memory_allocated`.
When CUDA is available the script also adds bf16 and QLoRA (`load_in_4bit`, nf4 + double
quantisation, via bitsandbytes) rows for the realistic model.

Models: `tiny-<arch>` (mmft's tiny zoo, random init), `demo` (the demo base model of
`mmft.demo`), `realistic` (LLaVA architecture built from transformers config classes and
randomly initialised, no download: a Qwen2-0.5B-shaped language model (hidden 896, 24
layers, 14 heads / 2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings; ~494M
parameters) behind a small CLIP ViT (hidden 384, 6 layers, 64 px images, 16 image tokens).
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
    peak_rss_mib,
    run_child,
    table,
    write_child_result,
)

SCRIPT = Path(__file__).resolve()
TINY_ARCHS = ("llava", "qwen2_vl", "idefics3", "gemma3")

REALISTIC_TEXT = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                      max_position_embeddings=4096)
REALISTIC_VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                        image_size=64, patch_size=16, projection_dim=384)


def settings(quick: bool) -> dict:
    """Batch and LoRA of every measurement (per model kind; the realistic model gets a
    smaller batch to keep the CPU run to minutes)."""
    if quick:
        return dict(batch=2, max_new_tokens=4, lora_r=8, lora_alpha=16, realistic_batch=2, realistic_new_tokens=4,
                    critic="shared")
    return dict(batch=8, max_new_tokens=32, lora_r=16, lora_alpha=32, realistic_batch=4, realistic_new_tokens=16,
                critic="shared")


# ---------------------------------------------------------------------------------- children
def current_rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class ResponseLength:
    """A picklable reward (TRL contract): number of words. Only memory is measured."""

    __name__ = "length"

    def __call__(self, completions, **kwargs):
        return [float(len((c[0]["content"] if isinstance(c, list) else c).split())) for c in completions]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(path: str, dtype: str, load_in_4bit: bool):
    import torch

    from mmft.models.loading import load_vlm

    kwargs = {}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    return load_vlm(path, dtype=None if dtype == "float32" else dtype, load_in_4bit=load_in_4bit, **kwargs)


def _data(n: int):
    from mmft.data.synthetic import load_synthetic_captions

    return load_synthetic_captions("train", n)


def _lora(spec):
    from mmft.rl_trainer import default_lora_config

    return default_lora_config("language", spec["lora_r"], spec["lora_alpha"])


def mode_sft(spec: dict) -> dict:
    """One LoRA SFT step: prompt + `max_new_tokens` target tokens, loss on the targets."""
    import torch
    from peft import get_peft_model

    from mmft.data.collator import VLMCollator
    from mmft.demo import caption_targets
    from mmft.models.arch import freeze_vision_tower
    from mmft.models.loading import load_processor
    from mmft.rollout import training_inputs

    B, R = spec["batch"], spec["max_new_tokens"]
    processor = load_processor(spec["model"])
    model = _load(spec["model"], spec["dtype"], spec.get("load_in_4bit", False))
    freeze_vision_tower(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, _lora(spec))
    ds = _data(B)
    rows = [ds[i] for i in range(B)]
    prompts = VLMCollator(processor)(rows, list(range(B)))
    tok = processor.tokenizer
    ids, _ = caption_targets(tok, [" ".join(r["references"]) for r in rows], tok.eos_token_id, tok.pad_token_id)
    ids = ids[:, :R]
    if ids.shape[1] < R:
        ids = torch.nn.functional.pad(ids, (0, R - ids.shape[1]), value=tok.pad_token_id)
    mask = torch.ones_like(ids, dtype=torch.float)  # every target position counts (as a full-length response)
    dev = _device()
    inputs = {k: v.to(dev) for k, v in training_inputs(prompts, ids, mask, model.config.model_type).items()}
    ids, mask = ids.to(dev), mask.to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for _ in range(spec.get("steps", 1)):
        out = model(**inputs, logits_to_keep=R + 1, use_cache=False)
        logits = out.logits[:, :-1].float()
        loss = (torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * mask).sum()
        (loss / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"loss": float(loss.detach()) / float(mask.sum())}


def mode_ppo(spec: dict) -> dict:
    """One mmft PPO iteration (every role on one base)."""
    import torch

    from mmft import PPOConfig, PPOTrainer
    from mmft.models.loading import load_processor

    B, R = spec["batch"], spec["max_new_tokens"]
    processor = load_processor(spec["model"])
    model = _load(spec["model"], spec["dtype"], spec.get("load_in_4bit", False))
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(output_dir=out, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                         num_mini_batches=1, num_ppo_epochs=1, max_steps=spec.get("steps", 1), max_new_tokens=R,
                         eval_steps=0, save_steps=0, logging_steps=1, num_sample_captions=0, seed=0,
                         bf16=spec["dtype"] == "bfloat16", use_cpu=not torch.cuda.is_available(),
                         critic=spec.get("critic", "shared"), critic_layers=spec.get("critic_layers", "half"),
                         fuse_old_pass=spec.get("fuse_old_pass", True))
        trainer = PPOTrainer(model, processing_class=processor, args=args, reward_funcs=[ResponseLength()],
                             train_dataset=_data(4 * B), peft_config=_lora(spec))
        history = trainer.train()
    return {"objective/kl": history[-1]["objective/kl"], "response/length": history[-1]["response/length"]}


def mode_naive(spec: dict) -> dict:
    """The same PPO iteration with policy, reference and critic as three separate models
    (what a port of TRL's old PPOTrainer to a VLM does): same batch, same steps."""
    import torch
    from peft import get_peft_model
    from trl.trainer.utils import selective_log_softmax

    from mmft.data.collator import VLMCollator
    from mmft.models.arch import freeze_vision_tower, text_hidden_size
    from mmft.models.loading import load_processor
    from mmft.models.roles import ValueHead, response_hidden, response_logits
    from mmft.ppo import core
    from mmft.rollout import generate, stop_token_ids, training_inputs

    B, max_new = spec["batch"], spec["max_new_tokens"]
    processor = load_processor(spec["model"])
    tok = processor.tokenizer

    def frozen():
        m = _load(spec["model"], spec["dtype"], spec.get("load_in_4bit", False))
        freeze_vision_tower(m)
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    policy = get_peft_model(frozen(), _lora(spec))
    reference = frozen().eval()
    critic = get_peft_model(frozen(), _lora(spec))
    dev = _device()
    value_head = ValueHead(text_hidden_size(critic.config)).to(dev)
    params = [p for m in (policy, critic, value_head) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, eps=1e-5)
    ds = _data(B)
    prompts = VLMCollator(processor)([ds[i] for i in range(B)], list(range(B)))
    model_type = policy.config.model_type
    for _ in range(spec.get("steps", 1)):
        # 1. rollout with the policy copy
        ro = generate(policy, prompts, max_new_tokens=max_new, stop_ids=stop_token_ids(policy.generation_config, tok),
                      pad_id=tok.pad_token_id)
        inputs = {k: v.to(dev) for k, v in training_inputs(prompts, ro.response_ids, ro.response_mask,
                                                           model_type).items()}
        ids, mask = ro.response_ids.to(dev), ro.response_mask.to(dev)
        P, R = prompts.prompt_length, ids.shape[1]  # responses are cut to the longest one
        # 2-4. old log-probs (policy), reference log-probs (reference copy), values (critic copy)
        with torch.no_grad():
            old = selective_log_softmax(response_logits(policy, inputs, P, R, 1.0), ids)
            ref = selective_log_softmax(response_logits(reference, inputs, P, R, 1.0), ids)
            values = value_head(response_hidden(critic, inputs, P, R)).float()
        # 5-7. scores, KL-penalised rewards, GAE
        scores = torch.tensor([float(m.sum()) for m in ro.response_mask], device=dev)
        kl = core.kl_estimate(old, ref, "k1") * mask
        rewards = core.per_token_rewards(scores, kl, mask, 0.05)
        adv, returns = core.gae(rewards, values, mask, 1.0, 0.95)
        adv = core.masked_whiten(adv, mask)
        # 8. one epoch, one mini-batch: policy and critic losses, one optimizer step
        policy.train()
        critic.train()
        n = mask.sum()
        logp = selective_log_softmax(response_logits(policy, inputs, P, R, 1.0), ids)
        pg, _ = core.policy_loss(logp, old, adv, mask, 0.2, n)
        v = value_head(response_hidden(critic, inputs, P, R)).float()
        vf, _ = core.value_loss(v, values, returns, mask, 0.2, n)
        (pg + 0.1 * vf).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"objective/kl": float((kl.sum(-1)).mean())}


def child_measure(spec: dict) -> dict:
    import torch

    baseline = current_rss_mib()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    extra = {"sft": mode_sft, "ppo": mode_ppo, "naive": mode_naive}[spec["mode"]](spec)
    out = {
        "mode": spec["mode"], "dtype": spec["dtype"], "load_in_4bit": spec.get("load_in_4bit", False),
        "peak_rss_mib": peak_rss_mib(), "rss_after_imports_mib": baseline, "wall_s": time.time() - t0,
        "device": "cuda" if cuda else "cpu", **extra,
    }
    if cuda:
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child_prepare(spec: dict) -> dict:
    """Build the models to measure (random init, no download) and save them like checkpoints."""
    from mmft.testing import make_tiny_vlm

    out = {}
    work = Path(spec["workdir"])
    for name in spec["models"]:
        path = work / name
        if name.startswith("tiny-"):
            make_tiny_vlm(name.removeprefix("tiny-"), path)
        elif name == "realistic":
            build_realistic(path)
        else:
            continue
        out[name] = {"path": str(path), "parameters": _count_params(path)}
    return out


def build_realistic(path: Path) -> None:
    """LLaVA with a Qwen2-0.5B-shaped language model and a small CLIP ViT, random init."""
    import torch
    from transformers import CLIPVisionConfig, LlavaForConditionalGeneration, Qwen2Config

    from mmft.testing import make_tiny_vlm

    tiny, processor = make_tiny_vlm("llava", image_size=REALISTIC_VISION["image_size"])
    tok = processor.tokenizer
    config = tiny.config
    config.text_config = Qwen2Config(**REALISTIC_TEXT, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     bos_token_id=tok.bos_token_id)
    config.vision_config = CLIPVisionConfig(**REALISTIC_VISION)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = tiny.generation_config
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _count_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            total += sum(_prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ---------------------------------------------------------------------------------- parent
CHILD_TASKS = {"measure": child_measure, "prepare": child_prepare}


def measure_model(name: str, path: str, s: dict, modes=("sft", "ppo", "naive"), variants=(("float32", False),),
                  log=print, parameters: int | None = None, in_process: dict | None = None) -> dict:
    """Measure every mode of one model (each in a fresh child); ratios to SFT."""
    realistic = name == "realistic"
    batch = s["realistic_batch"] if realistic else s["batch"]
    new = s["realistic_new_tokens"] if realistic else s["max_new_tokens"]
    result = {"model": name, "path": path, "parameters": parameters, "batch": batch, "max_new_tokens": new,
              "variants": {}}
    for dtype, four_bit in variants:
        key = "qlora-4bit" if four_bit else dtype
        res = {}
        for mode in modes:
            spec = {"task": "measure", "mode": mode, "model": path, "dtype": dtype, "load_in_4bit": four_bit,
                    "batch": batch, "max_new_tokens": new, "lora_r": s["lora_r"], "lora_alpha": s["lora_alpha"],
                    "critic": s.get("critic", "shared"), "critic_layers": s.get("critic_layers", "half"),
                    "fuse_old_pass": s.get("fuse_old_pass", True)}
            try:
                res[mode] = run_child(SCRIPT, spec, in_process=in_process)
            except Exception as err:  # keep measuring the other rows; the error is recorded and printed
                log(f"  {name} [{key}] {mode}: FAILED {str(err)[-1500:]}")
                res[mode] = {"error": str(err)[-3000:], "peak_rss_mib": float("nan"), "rss_after_imports_mib": 0.0}
                continue
            r = res[mode]
            log(f"  {name} [{key}] {mode}: peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (f", CUDA peak {r['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in r else "")
                + f" ({r['wall_s']:.0f}s)")
        metric = "cuda_peak_mib" if any("cuda_peak_mib" in r for r in res.values()) else "peak_rss_mib"
        v = {"metric": metric, "runs": res}
        for mode in modes:
            v[mode] = res[mode].get(metric, float("nan"))
            if metric == "peak_rss_mib":
                v[mode + "_above_imports"] = res[mode]["peak_rss_mib"] - res[mode]["rss_after_imports_mib"]
        if "sft" in modes:
            for mode in ("ppo", "naive"):
                if mode in modes:
                    v[f"{mode}_over_sft"] = v[mode] / v["sft"]
                    if metric == "peak_rss_mib":
                        v[f"{mode}_over_sft_above_imports"] = v[mode + "_above_imports"] / v["sft_above_imports"]
        result["variants"][key] = v
    first = result["variants"][next(iter(result["variants"]))]
    for k in ("ppo_over_sft", "naive_over_sft"):
        if k in first:
            result[k] = first[k]
    return result


def render_rows(models: list[dict]) -> str:
    rows = []
    for m in models:
        for key, v in m["variants"].items():
            unit = "CUDA max allocated" if v["metric"] == "cuda_peak_mib" else "peak RSS"
            rows.append([
                m["model"], f"{m['parameters'] / 1e6:.1f}M" if m.get("parameters") else "", key, unit,
                f"{m['batch']}x{m['max_new_tokens']}", v.get("sft", float("nan")), v.get("ppo", float("nan")),
                v.get("naive", float("nan")), v.get("ppo_over_sft", float("nan")),
                v.get("naive_over_sft", float("nan")),
                _fmt_pair(v.get("ppo_over_sft_above_imports"), v.get("naive_over_sft_above_imports")),
            ])
    head = ["model", "params", "weights", "memory", "batch x new tokens", "SFT MiB", "PPO MiB", "naive MiB",
            "PPO/SFT", "naive/SFT", "above imports: PPO/SFT, naive/SFT"]
    note = ("PPO = one mmft PPO iteration, policy + reference + critic on one base; naive = policy, reference and "
            "critic as three model copies; SFT = one LoRA SFT step; same batch and LoRA. Target PPO/SFT <= 1.3.")
    return "Peak memory, PPO iteration vs LoRA SFT step vs naive copies:\n" + table(head, rows, "{:.2f}") + "\n" + note


def _fmt_pair(a, b) -> str:
    if a is None:
        return ""
    return f"{a:.2f}, {b:.2f}" if b is not None else f"{a:.2f}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="Write the results here.")
    p.add_argument("--quick", action="store_true", help="One tiny model, tiny batch (smoke test).")
    p.add_argument("--models", nargs="+",
                   help="Any of tiny-<arch> (" + ", ".join(TINY_ARCHS) + ", ...), demo, realistic. Default: "
                        "tiny-llava tiny-qwen2_vl tiny-idefics3 tiny-gemma3 demo realistic (--quick: tiny-llava).")
    p.add_argument("--malloc-mmap-threshold", type=int,
                   help="Set glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ (bytes) in the children: a "
                        "fixed threshold returns freed large blocks to the OS, so peak RSS tracks live tensors "
                        "rather than heap retention (the default dynamic threshold keeps up to 32 MiB blocks in "
                        "the heap after they are freed).")
    p.add_argument("--critic", choices=("shared", "policy"), default="shared",
                   help="PPOConfig.critic of the PPO row: 'shared' (its own LoRA adapter) or 'policy' (the value "
                        "head on the policy adapter).")
    p.add_argument("--critic-layers", default="half",
                   help="PPOConfig.critic_layers of the PPO row's shared critic: 'half' (default), 'all' or N.")
    p.add_argument("--separate-old-pass", action="store_true",
                   help="PPO row with fuse_old_pass=False: the old log-probs and values from their own no-grad "
                        "pass instead of the first update's forward.")
    p.add_argument("--in-process", action="store_true",
                   help="Every measurement in this process (no isolation, figures not comparable; default with "
                        "--quick, for the smoke test). --isolated forces child processes.")
    p.add_argument("--isolated", action="store_true", help="Child processes even with --quick.")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        result = CHILD_TASKS[spec["task"]](spec)
        write_child_result(a.child_out, result)
        return result

    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    s = settings(a.quick)
    s["critic"] = a.critic
    s["critic_layers"] = a.critic_layers
    s["fuse_old_pass"] = not a.separate_old_pass
    models = a.models or (["tiny-llava"] if a.quick else [f"tiny-{x}" for x in TINY_ARCHS] + ["demo", "realistic"])
    in_process = CHILD_TASKS if (a.in_process or a.quick) and not a.isolated else None
    if a.malloc_mmap_threshold:
        import os

        os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = str(a.malloc_mmap_threshold)
    # The built models (1.9 GB with the realistic one) are only this run's inputs.
    with tempfile.TemporaryDirectory(prefix="mmft-bench-memory-", ignore_cleanup_errors=True) as workdir:
        log(f"building {', '.join(m for m in models if m != 'demo')} in {workdir}")
        built = run_child(SCRIPT, {"task": "prepare", "workdir": workdir, "models": models}, in_process=in_process)
        if "demo" in models:
            from mmft.demo import build_demo_base

            demo = build_demo_base()
            built["demo"] = {"path": str(demo), "parameters": _count_params(demo)}

        import torch

        cuda = torch.cuda.is_available()
        results = {"machine": machine_description(), "settings": s,
                   "command": "python scripts/bench_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "device": "cuda" if cuda else "cpu", "isolated": in_process is None,
                   "malloc_mmap_threshold": a.malloc_mmap_threshold, "models": []}
        for name in models:
            variants = [("float32", False)]
            if cuda and name in ("realistic", "demo") or (cuda and a.quick):
                variants += [("bfloat16", False), ("bfloat16", True)]
            log(f"{name}: " + ", ".join("qlora-4bit" if q else d for d, q in variants))
            results["models"].append(measure_model(name, built[name]["path"], s, variants=variants, log=log,
                                                   parameters=built[name].get("parameters"), in_process=in_process))
    results["total_s"] = time.time() - t_start
    results["all_finite"] = finite([{k: v for k, v in m.items() if k.endswith("_over_sft")} for m in results["models"]])
    print()
    if in_process is not None:
        print("WARNING: measured in one process (--in-process/--quick): memory figures are not comparable.")
    print(render_rows(results["models"]))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
        log(f"wrote {a.json}")
    return results


if __name__ == "__main__":
    main()
