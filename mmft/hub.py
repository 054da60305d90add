"""Publishing an mmft adapter to the Hugging Face Hub, with a generated model card.

`prepare_push_folder` assembles exactly what would be uploaded; `push_adapter` creates
the repo and uploads that folder in one commit (`mmft push` on the command line,
`--push_to_hub` in the recipes).

What goes into the repo:
- from ADAPTER_DIR: `adapter_model.safetensors` (or `.bin`), `adapter_config.json`, the
  processor/tokenizer files when present (`PROCESSOR_FILES`), and `critic/` (the PPO
  value model) only with `include_critic=True`;
- from the run directory (`run_dir`; default: ADAPTER_DIR if it holds a config file,
  else its parent if that does): the resolved config (first of `CONFIG_FILES`:
  `resolved_config.yaml`, `config.yaml`, `mmft_config.json`), `eval_results.json` and
  `curves.png`, copied as they are;
- `README.md`: the model card, built from `adapter_config.json` (base model, LoRA
  settings), the resolved config (model, data, algorithm, rewards) and the eval results.

Run-directory formats read:
- resolved config: a mapping with sections `model`, `data`, `algorithm` (a mapping
  whose `algorithm` key names it: ppo, scst, ...) and `rewards` (a list of
  {name, weight, kwargs});
- `eval_results.json`: `{"before": {metric: value}, "after": {metric: value}}` or a flat
  `{metric: value}` (taken as the scores of the published adapter).

The token comes from `token=`, else `HF_TOKEN`, else the saved Hugging Face login; it
is never printed, logged or put into an exception message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_CONFIG = "adapter_config.json"
PROCESSOR_FILES = (
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
CONFIG_FILES = ("resolved_config.yaml", "config.yaml", "mmft_config.json")
EVAL_FILE = "eval_results.json"
CURVES_FILE = "curves.png"
CRITIC_DIR = "critic"


class PushError(RuntimeError):
    """Publishing failed for a reason the user can fix; the message says which and how."""


@dataclass
class RunInfo:
    """What the model card is built from. Every field may be empty for a bare adapter."""

    adapter_config: dict[str, Any]
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    eval_results: dict[str, Any] = field(default_factory=dict)
    eval_file: Path | None = None
    curves: Path | None = None

    @property
    def base_model(self) -> str:
        return self.adapter_config.get("base_model_name_or_path") or "unknown"

    @property
    def algorithm(self) -> str | None:
        algo = self.config.get("algorithm")
        if isinstance(algo, dict):
            algo = algo.get("algorithm")
        return str(algo).lower() if algo else None


@dataclass
class PushResult:
    """`files`: the relative paths sent (or written); `folder`: where they were written
    (dry run only; an upload assembles them in a temporary folder); `url`: the commit URL
    (upload only)."""

    files: list[str]
    folder: Path | None = None
    url: str | None = None


# ---------------------------------------------------------------------------------------
# Reading the adapter and its run


def find_run_dir(adapter_dir: str | os.PathLike) -> Path | None:
    """The adapter dir if it holds a resolved config, else its parent if that does, else None."""
    adapter_dir = Path(adapter_dir)
    for candidate in (adapter_dir, adapter_dir.absolute().parent):
        if any((candidate / name).is_file() for name in CONFIG_FILES):
            return candidate
    return None


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise PushError(f"Cannot read the run config {path}: {err}") from None
    if not isinstance(data, dict):
        raise PushError(f"The run config {path} is not a mapping of sections (model, data, algorithm, rewards).")
    return data


def load_run_info(adapter_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> RunInfo:
    """Read `adapter_config.json` and, from the run dir, the resolved config, eval results and curves."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not adapter_dir.is_dir():
        raise PushError(f"{adapter_dir} is not a directory: pass the folder the adapter was saved to.")
    if not config_path.is_file():
        raise PushError(f"{adapter_dir} holds no {ADAPTER_CONFIG}: is it a PEFT adapter folder "
                        "(written by save_pretrained of a PeftModel)?")
    if not any((adapter_dir / w).is_file() for w in ADAPTER_WEIGHTS):
        raise PushError(f"{adapter_dir} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}).")
    try:
        info = RunInfo(adapter_config=json.loads(config_path.read_text(encoding="utf-8")))
    except ValueError as err:
        raise PushError(f"{config_path} is not valid JSON: {err}") from None

    if run_dir is None:
        run_dir = find_run_dir(adapter_dir)
    elif not Path(run_dir).is_dir():
        raise PushError(f"--run-dir {run_dir} is not a directory.")
    if run_dir is None:
        return info
    run_dir = info.run_dir = Path(run_dir)
    info.config_file = next((run_dir / n for n in CONFIG_FILES if (run_dir / n).is_file()), None)
    if info.config_file:
        info.config = _read_config(info.config_file)
    if (run_dir / EVAL_FILE).is_file():
        info.eval_file = run_dir / EVAL_FILE
        try:
            info.eval_results = json.loads(info.eval_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise PushError(f"{info.eval_file} is not valid JSON: {err}") from None
        if not isinstance(info.eval_results, dict):
            raise PushError(f"{info.eval_file} must hold {{\"before\": {{metric: value}}, \"after\": {{...}}}} "
                            "or {metric: value}.")
    if (run_dir / CURVES_FILE).is_file():
        info.curves = run_dir / CURVES_FILE
    return info


def _eval_table(results: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Columns and metric -> {column: value} from either eval_results.json form."""
    def numbers(d: dict) -> dict[str, float]:  # leave out nested breakdowns (slices, per-sample scores)
        return {m: v for m, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    if isinstance(results.get("after"), dict):
        columns = [c for c in ("before", "after") if isinstance(results.get(c), dict)]
        metrics: dict[str, dict[str, float]] = {}
        for c in columns:
            for m, v in numbers(results[c]).items():
                metrics.setdefault(m, {})[c] = v
        return columns, metrics
    return ["value"], {m: {"value": v} for m, v in numbers(results).items()}


# ---------------------------------------------------------------------------------------
# The model card


def _looks_like_hub_id(name: str) -> bool:
    # Local paths make invalid `base_model` metadata (the Hub links it to a repo).
    return bool(name) and not Path(name).is_absolute() and not Path(name).exists() and name.count("/") <= 1


def _dataset_ids(spec: str) -> tuple[str, str, str | None]:
    """(model-index dataset type, readable name, Hub dataset id or None) of a data spec
    (`mmft.data.loaders`): local paths never go into the metadata, only the source kind
    and file name."""
    if not spec:
        return "custom", "evaluation set", None
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        name = rest.split(":")[0]
        return (name, name, name) if _looks_like_hub_id(name) else ("custom", Path(name).name, None)
    if not rest:
        return kind, kind, None
    return kind, f"{kind} ({Path(rest.split(':')[0]).name})", None


def _scalar_rows(section: Any) -> list[tuple[str, str]]:
    """Key/value rows of a config section, nested mappings flattened as a.b."""
    rows: list[tuple[str, str]] = []
    if not isinstance(section, dict):
        return rows
    for key, value in section.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in _scalar_rows(value)]
        else:
            rows.append((str(key), json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)))
    return rows


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_model_card(info: RunInfo, repo_id: str, *, has_processor: bool, include_critic: bool) -> str:
    """The README.md text: YAML front matter (HF model-card metadata) and the card body."""
    from huggingface_hub import EvalResult, ModelCardData

    algo = info.algorithm
    data = info.config.get("data") if isinstance(info.config.get("data"), dict) else {}
    spec = str(data.get("dataset") or data.get("spec") or data.get("dataset_name") or "")
    dataset_type, dataset_name, hub_dataset = _dataset_ids(spec)
    is_vqa = spec.startswith(("vqa", "synthetic-vqa"))
    columns, metrics = _eval_table(info.eval_results)
    final = "after" if "after" in columns else "value"
    eval_results = [
        EvalResult(task_type="visual-question-answering" if is_vqa else "image-to-text",
                   task_name="Visual question answering" if is_vqa else "Image captioning",
                   dataset_type=dataset_type, dataset_name=dataset_name, metric_type=m.lower(), metric_name=m,
                   metric_value=float(v[final]))
        for m, v in metrics.items() if final in v and isinstance(v[final], (int, float))
    ]
    tags = ["mmft", "vision-language", "rlhf"] + ([algo] if algo else []) + ["lora"]
    card_data = ModelCardData(library_name="peft", pipeline_tag="image-text-to-text", tags=tags,
                              base_model=info.base_model if _looks_like_hub_id(info.base_model) else None,
                              datasets=[hub_dataset] if hub_dataset else None,
                              model_name=repo_id, eval_results=eval_results or None)

    base = info.base_model
    lora = info.adapter_config
    name = repo_id.split("/")[-1]
    out = ["---", card_data.to_yaml(), "---", "", f"# {name}", ""]
    base_text = f"[`{base}`](https://huggingface.co/{base})" if _looks_like_hub_id(base) \
        else f"`{base}` (a local base model)"
    out.append(f"A LoRA adapter for {base_text} fine-tuned" + (f" with {algo.upper()}" if algo else "")
               + " using mmft, reinforcement-learning fine-tuning for vision-language models.")
    out += ["", "## Training", ""]
    if info.config_file:
        out.append(f"Taken from the run's resolved config (`{info.config_file.name}`, included in this repo).")
        for section in ("model", "data", "algorithm"):
            rows = _scalar_rows(info.config.get(section))
            if rows:
                out += ["", f"**{section.capitalize()}**", "", _table(("setting", "value"), rows)]
    else:
        out.append("No resolved config was found next to the adapter, so the training settings are not recorded.")
    out += ["", "**LoRA**", "", _table(("setting", "value"), [
        (k, json.dumps(lora[k]) if isinstance(lora[k], (list, dict)) else lora[k])
        for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "task_type") if k in lora])]

    rewards = info.config.get("rewards") or []
    if rewards:
        out += ["", "## Rewards", "", "The policy was optimised for the weighted sum of these rewards:", "",
                _table(("reward", "weight", "arguments"), [
                    (r.get("name", "?"), r.get("weight", 1.0), json.dumps(r.get("kwargs") or {}))
                    for r in rewards if isinstance(r, dict)])]

    if metrics:
        out += ["", "## Evaluation", ""]
        if columns == ["before", "after"]:
            out.append("Scores of the base model (before) and of this adapter (after), as written by mmft's evaluation.")
            rows = [(m, _fmt(v.get("before", "")), _fmt(v.get("after", "")),
                     _fmt(v["after"] - v["before"]) if {"before", "after"} <= set(v) else "")
                    for m, v in metrics.items()]
            out += ["", _table(("metric", "before", "after", "change"), rows)]
        else:
            out += ["Scores of this adapter, as written by mmft's evaluation.", "",
                    _table(("metric", "value"), [(m, _fmt(v[final])) for m, v in metrics.items() if final in v])]
    if info.curves:
        out += ["", "## Training curves", "", f"![training curves]({CURVES_FILE})"]

    processor_source = repo_id if has_processor else base
    out += ["", "## Usage", "", "```python", "import torch",
            "from peft import PeftModel",
            "from PIL import Image",
            "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base}", torch_dtype=torch.bfloat16)',
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            f'processor = AutoProcessor.from_pretrained("{processor_source}")', "",
            'messages = [{"role": "user", "content": [{"type": "image"}, '
            '{"type": "text", "text": "Describe the image in one sentence."}]}]',
            "text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
            'inputs = processor(images=[Image.open("photo.jpg")], text=[text], return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=40, do_sample=False)",
            'print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])',
            "```"]
    if include_critic:
        out += ["", f"`{CRITIC_DIR}/` holds the value model (critic) of the PPO run; it is needed only to resume "
                "training, not for inference."]
    out += ["", "## Limitations and bias", "",
            "- The adapter was optimised against automatic rewards: it can learn the metrics' blind spots "
            "(reward hacking), e.g. repeating n-grams that score well, and its captions are only as good as "
            "the rewards and references allow.",
            "- It inherits the biases of the base model and of the training captions (who and what gets "
            "described, and how); check its outputs on your own data before using them, and do not use it "
            "for decisions about people.",
            "- It was evaluated only on the data named above; quality on other domains, languages and image "
            "types is unknown.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Assembling and uploading


def prepare_push_folder(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, *, repo_id: str,
                        run_dir: str | os.PathLike | None = None, include_critic: bool = False) -> list[str]:
    """Write into `output_dir` exactly what `push_adapter` uploads; returns the relative paths.

    `output_dir` must be empty or absent (a stale file would otherwise be uploaded too).
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    info = load_run_info(adapter_dir, run_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise PushError(f"The output folder {output_dir} is not empty: pass a new or empty folder.")
    critic = None
    if include_critic:
        critic = next((d / CRITIC_DIR for d in (adapter_dir, info.run_dir)
                       if d is not None and (d / CRITIC_DIR).is_dir()), None)
        if critic is None:
            raise PushError(f"--include-critic: no {CRITIC_DIR}/ folder in {adapter_dir} or the run directory.")
    output_dir.mkdir(parents=True, exist_ok=True)
    files = [ADAPTER_CONFIG, next(w for w in ADAPTER_WEIGHTS if (adapter_dir / w).is_file())]
    files += [f for f in PROCESSOR_FILES if (adapter_dir / f).is_file()]
    for name in files:
        shutil.copy2(adapter_dir / name, output_dir / name)
    for extra in (info.config_file, info.eval_file, info.curves):
        if extra is not None:
            shutil.copy2(extra, output_dir / extra.name)
            files.append(extra.name)
    if critic is not None:
        shutil.copytree(critic, output_dir / CRITIC_DIR)
        files += sorted(str(p.relative_to(output_dir)) for p in (output_dir / CRITIC_DIR).rglob("*") if p.is_file())
    has_processor = any(f in files for f in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"))
    card = build_model_card(info, repo_id, has_processor=has_processor, include_critic=critic is not None)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return sorted(files + ["README.md"])


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of the hub client's HTTP library: huggingface_hub 1.x uses
    httpx, 2.x its fork httpx2 (whose exceptions do not subclass httpx's)."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def _hub_error(err: Exception, repo_id: str, endpoint: str, token: str | None) -> PushError:
    """A PushError for a failed Hub call: the status and what to do, never the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return PushError("HF_HUB_OFFLINE is set: unset it to push, or use --dry-run --output DIR to only "
                         "write the folder.")
    status = err.response.status_code if isinstance(err, HfHubHTTPError) and err.response is not None else None
    if isinstance(err, _transport_errors()):
        msg = (f"Could not reach the Hub at {endpoint} ({type(err).__name__}): check the network, "
               "and HF_ENDPOINT if it is set.")
    elif status == 401:
        msg = (f"The Hub at {endpoint} rejected the token (401 Unauthorized) while pushing to {repo_id}. "
               "Set HF_TOKEN to a valid token with write access, or log in with `hf auth login`.")
    elif status == 403:
        msg = (f"The token has no write access to {repo_id} on {endpoint} (403 Forbidden): use a token with "
               "write permission for that user or organisation.")
    elif status is not None:
        server = (getattr(err, "server_message", None) or "").strip()
        msg = f"Pushing to {repo_id} on {endpoint} failed: HTTP {status}" + (f": {server}" if server else ".")
    else:
        msg = f"Pushing to {repo_id} on {endpoint} failed: {type(err).__name__}: {err}"
    if token:
        msg = msg.replace(token, "<token>")  # a server could echo it back
    return PushError(msg)


def push_adapter(adapter_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                 run_dir: str | os.PathLike | None = None, include_critic: bool = False,
                 dry_run_output: str | os.PathLike | None = None, commit_message: str | None = None,
                 token: str | None = None, endpoint: str | None = None) -> PushResult:
    """Publish an adapter folder (see the module docstring for what is uploaded).

    With `dry_run_output`, only write the folder there and send nothing. Otherwise create
    `repo_id` if needed (`private` applies only on creation) and upload the assembled
    folder in one commit. `endpoint` defaults to HF_ENDPOINT / huggingface.co.
    Raises `PushError` with a message naming what to fix.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo-id must be USER/NAME or ORG/NAME, got {repo_id!r}.")
    if dry_run_output is not None:
        files = prepare_push_folder(adapter_dir, dry_run_output, repo_id=repo_id, run_dir=run_dir,
                                    include_critic=include_critic)
        return PushResult(files=files, folder=Path(dry_run_output))

    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set: unset it to push, or use --dry-run --output DIR to only "
                        "write the folder.")
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access).")
    api = HfApi(endpoint=endpoint, token=token)
    info = load_run_info(adapter_dir, run_dir)
    message = commit_message or (f"Upload {info.algorithm.upper()} LoRA adapter trained with mmft" if info.algorithm
                                 else "Upload LoRA adapter trained with mmft")
    with tempfile.TemporaryDirectory(prefix="mmft-push-") as tmp:
        folder = Path(tmp) / "repo"
        files = prepare_push_folder(adapter_dir, folder, repo_id=repo_id, run_dir=run_dir,
                                    include_critic=include_critic)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message,
                                       repo_type="model")
        except (HfHubHTTPError, OfflineModeIsEnabled, *_transport_errors(), OSError) as err:
            # `from None`: the chained hub exception carries the request, headers included.
            raise _hub_error(err, repo_id, api.endpoint, token) from None
    return PushResult(files=files, url=commit.commit_url)
