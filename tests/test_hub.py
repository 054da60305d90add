"""`mmft push`: the dry-run folder reloads to the same adapter, the upload reaches a
local stand-in for the Hub with the right files, commit message and Bearer token, and a
bad token gives a clear error. The token never appears in the output."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only the subprocesses below talk HTTP, to 127.0.0.1

from mmft.cli import main as mmft_main  # noqa: E402
from mmft.hub import PushError, RunInfo, build_model_card, push_adapter  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_TestSecretToken0123456789abcdef"
RESOLVED_CONFIG = {
    "model": {"model_name_or_path": "tiny-llava", "lora_r": 4},
    "data": {"dataset": "synthetic", "train_split": "train", "num_samples": 64},
    "algorithm": {"algorithm": "ppo", "learning_rate": 1e-5, "kl_coef": 0.05, "clip_coef": 0.2},
    "rewards": [{"name": "cider", "weight": 1.0, "kwargs": {}},
                {"name": "length_penalty", "weight": 0.1, "kwargs": {"target": 12}}],
}
EVAL_RESULTS = {"before": {"CIDEr": 0.125, "Bleu_4": 0.05}, "after": {"CIDEr": 0.5, "Bleu_4": 0.125}}


# ----------------------------------------------------------------------------- fixtures


def _captions(model, processor, images) -> list[str]:
    """Greedy captions, one image at a time (no padding effects)."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image in one sentence."}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    out = []
    for image in images:
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        out.append(processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:])[0])
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_vlm_dir):
    """A run dir holding a perturbed (non-no-op) LoRA adapter of a tiny llava, its
    processor, a critic, the resolved config, eval results and a curves image."""
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmft.data.synthetic import load_synthetic_captions

    root = tmp_path_factory.mktemp("push")
    base_dir = Path(tiny_vlm_dir("llava"))
    processor = AutoProcessor.from_pretrained(base_dir)
    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: without this the adapter changes nothing
                param.normal_(std=0.5)
    peft_model.eval()
    run_dir = root / "run"
    adapter = run_dir / "adapter"
    peft_model.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    (adapter / "critic").mkdir()
    (adapter / "critic" / "value_head.safetensors").write_bytes(b"critic-bytes")
    (run_dir / "resolved_config.yaml").write_text(yaml.safe_dump(RESOLVED_CONFIG))
    (run_dir / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    Image.new("RGB", (16, 8), (0, 128, 255)).save(run_dir / "curves.png")

    images = load_synthetic_captions("test", 2)["image"]
    captions = _captions(peft_model, processor, images)
    with peft_model.disable_adapter():
        base_captions = _captions(peft_model, processor, images)
    return {"root": root, "adapter": adapter, "base": base_dir, "images": images,
            "captions": captions, "base_captions": base_captions}


class _FakeHub:
    """The Hub endpoints huggingface_hub calls for create_repo + upload_folder, on 127.0.0.1.

    Every preupload answer says "regular", so file bytes arrive inline (base64) in the
    commit's NDJSON payload; the server records every request and decodes commits.
    """

    def __init__(self, token: str):
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, status: int, payload: dict, headers: dict | None = None):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"method": self.command, "path": self.path,
                                     "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {token}":
                    msg = "Invalid credentials in Authorization header"
                    return self._reply(401, {"error": msg}, {"X-Error-Message": msg})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    return self._reply(200, {"url": f"{hub.url}/{req['organization']}/{req['name']}"})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in path:
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    hub.commits.append({
                        "path": path,
                        "summary": lines[0]["value"]["summary"],
                        "files": {ln["value"]["path"]: base64.b64decode(ln["value"]["content"])
                                  for ln in lines[1:] if ln["key"] == "file"},
                        "other_keys": [ln["key"] for ln in lines[1:] if ln["key"] != "file"],
                    })
                    return self._reply(200, {"commitUrl": f"{hub.url}/alice/tiny-ppo/commit/{'a' * 40}",
                                             "commitOid": "a" * 40, "success": True})
                return self._reply(404, {"error": f"not implemented in the test hub: {self.command} {path}"})

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _run_cli(args: list[str], *, endpoint: str, token: str | None, home: Path) -> subprocess.CompletedProcess:
    """`mmft push` in a fresh process: huggingface_hub reads HF_ENDPOINT/HF_TOKEN at import."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "mmft.cli", "push", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- tests


def test_dry_run_folder_reloads_to_the_same_captions(run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert run["captions"] != run["base_captions"], "the perturbed adapter must change the captions"
    out = tmp_path / "repo"
    assert mmft_main(["push", str(run["adapter"]), "--repo-id", "alice/tiny-ppo", "--dry-run", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"into {out}" in printed and "adapter_model.safetensors" in printed

    files = set(_folder_bytes(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json",
            "processor_config.json", "chat_template.jinja", "resolved_config.yaml", "eval_results.json",
            "curves.png"} <= files
    assert not any(f.startswith("critic/") for f in files)  # only with --include-critic
    assert (out / "curves.png").read_bytes() == (run["adapter"].parent / "curves.png").read_bytes()

    base = AutoModelForImageTextToText.from_pretrained(run["base"])
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert _captions(reloaded, AutoProcessor.from_pretrained(out), run["images"]) == run["captions"]

    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["tags"] == ["mmft", "vision-language", "rlhf", "ppo", "lora"]
    assert "base_model" not in meta  # a local path is not valid Hub metadata; the text names it
    assert f"`{run['base']}` (a local base model)" in card
    metrics = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"CIDEr": 0.5, "Bleu_4": 0.125}
    assert "| CIDEr | 0.1250 | 0.5000 | 0.3750 |" in card
    assert '| length_penalty | 0.1 | {"target": 12} |' in card
    assert "| kl_coef | 0.05 |" in card and "| dataset | synthetic |" in card
    assert "![training curves](curves.png)" in card
    assert 'PeftModel.from_pretrained(base, "alice/tiny-ppo")' in card
    assert 'AutoProcessor.from_pretrained("alice/tiny-ppo")' in card  # processor files are in the repo
    assert "## Limitations and bias" in card


def test_model_card_for_a_hub_base_and_flat_eval():
    info = RunInfo(adapter_config={"base_model_name_or_path": "llava-hf/llava-1.5-7b-hf", "r": 16,
                                   "peft_type": "LORA", "target_modules": ["q_proj", "v_proj"]},
                   config={"algorithm": {"algorithm": "scst"}, "data": {"dataset": "hf:yerevann/coco-karpathy"}},
                   eval_results={"CIDEr": 1.05, "SPICE": 0.2})
    card = build_model_card(info, "bob/llava-scst", has_processor=False, include_critic=False)
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert "scst" in meta["tags"] and "ppo" not in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert {(r["dataset"]["type"], m["type"], m["value"]) for r in results for m in r["metrics"]} == \
        {("yerevann/coco-karpathy", "cider", 1.05), ("yerevann/coco-karpathy", "spice", 0.2)}
    assert meta["datasets"] == ["yerevann/coco-karpathy"]
    assert "| CIDEr | 1.0500 |" in card and "fine-tuned with SCST" in card
    # No processor in the repo: the snippet loads it from the base model.
    assert 'AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")' in card
    assert '| target_modules | ["q_proj", "v_proj"] |' in card

    # Only "after" scores (no baseline run): a one-column table; nested breakdowns are left out.
    info.eval_results = {"after": {"CIDEr": 0.75, "slices": {"one_object": 0.9}}}
    card = build_model_card(info, "bob/x", has_processor=True, include_critic=False)
    assert "| CIDEr | 0.7500 |" in card and "slices" not in card

    # A local data spec names the source kind and file, never the local path.
    info.config["data"]["dataset"] = "vqa:/data/vqa/q.json:/data/vqa/a.json:/data/coco/val2014"
    meta = yaml.safe_load(build_model_card(info, "bob/x", has_processor=True, include_critic=False).split("---")[1])
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "visual-question-answering"
    assert result["dataset"] == {"type": "vqa", "name": "vqa (q.json)"} and "datasets" not in meta


def test_bad_inputs_give_clear_errors(run, tmp_path, monkeypatch):
    with pytest.raises(PushError, match="holds no adapter_config.json"):
        push_adapter(tmp_path, "alice/x", dry_run_output=tmp_path / "o")
    with pytest.raises(PushError, match="USER/NAME"):
        push_adapter(run["adapter"], "no-namespace", dry_run_output=tmp_path / "o")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "stale.txt").write_text("x")
    with pytest.raises(PushError, match="busy is not empty"):
        push_adapter(run["adapter"], "alice/x", dry_run_output=tmp_path / "busy")
    bare = tmp_path / "bare"
    shutil.copytree(run["adapter"], bare, ignore=shutil.ignore_patterns("critic"))
    with pytest.raises(PushError, match="--include-critic: no critic/ folder"):
        push_adapter(bare, "alice/x", include_critic=True, dry_run_output=tmp_path / "o2")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set: unset it to push, or use --dry-run"):
        push_adapter(run["adapter"], "alice/x", token=SECRET)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="No Hugging Face token: set HF_TOKEN"):
        push_adapter(run["adapter"], "alice/x")
    with pytest.raises(PushError, match=r"Could not reach the Hub at http://127.0.0.1:9 \(ConnectError\)") as err:
        push_adapter(run["adapter"], "alice/x", token=SECRET, endpoint="http://127.0.0.1:9")
    assert SECRET not in str(err.value) and err.value.__cause__ is None


def test_upload_reaches_the_hub_with_bearer_token(run, tmp_path):
    dry = tmp_path / "dry"
    push_adapter(run["adapter"], "alice/tiny-ppo", include_critic=True, dry_run_output=dry)
    with _FakeHub(SECRET) as hub:
        res = _run_cli([str(run["adapter"]), "--repo-id", "alice/tiny-ppo", "--private", "--include-critic"],
                       endpoint=hub.url, token=SECRET, home=tmp_path / "hf_home")
    assert res.returncode == 0, res.stderr
    assert f"Pushed {len(_folder_bytes(dry))} files to alice/tiny-ppo: {hub.url}/alice/tiny-ppo/commit/" in res.stdout
    assert SECRET not in res.stdout + res.stderr

    paths = [r["path"].split("?")[0] for r in hub.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/alice/tiny-ppo/preupload/main",
                     "/api/models/alice/tiny-ppo/commit/main"]
    assert all(r["auth"] == f"Bearer {SECRET}" for r in hub.requests)
    create = json.loads(hub.requests[0]["body"])
    assert create["name"] == "tiny-ppo" and create["organization"] == "alice"
    assert create.get("visibility") == "private" or create.get("private") is True

    (commit,) = hub.commits
    assert commit["summary"] == "Upload PPO LoRA adapter trained with mmft"
    assert commit["other_keys"] == []  # everything inline, nothing left for LFS
    assert commit["files"] == _folder_bytes(dry)  # exactly the dry-run folder, byte for byte
    assert commit["files"]["critic/value_head.safetensors"] == b"critic-bytes"


def test_rejected_token_is_a_clear_error(run, tmp_path):
    bad = "hf_WrongToken_do_not_print_me_42"
    with _FakeHub(SECRET) as hub:
        res = _run_cli([str(run["adapter"]), "--repo-id", "alice/tiny-ppo"], endpoint=hub.url, token=bad,
                       home=tmp_path / "hf_home")
    assert res.returncode == 1
    assert "rejected the token (401 Unauthorized)" in res.stderr and "HF_TOKEN" in res.stderr
    assert "Traceback" not in res.stderr
    assert bad not in res.stdout + res.stderr
    assert hub.requests and hub.requests[0]["auth"] == f"Bearer {bad}"  # it was sent, just not printed
    assert hub.commits == []
