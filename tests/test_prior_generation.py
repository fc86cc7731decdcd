"""prior_generation: real openai client against a local HTTP server, real encoders, real files.

Encoders are built once per module (open_clip ViT-B-32 text tower with random weights; the bundled MiniLM).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from prior_generation import PriorsError, load_priors, priors_paths
from prior_generation.cli import main as cli_main
from prior_generation.dataset_info import classes_from_dataset_json
from prior_generation.encoders import create_encoder, parse_open_clip_spec, split_sentences
from prior_generation.errors import (
    EncoderError,
    LLMAuthError,
    LLMConnectionError,
    LLMRefusalError,
    MissingAPIKeyError,
    UnknownClassesError,
)
from prior_generation.generate import build_requests, generate_priors
from prior_generation.llm import OfflineKnowledgeBackend, OpenAIChatBackend, looks_like_refusal
from prior_generation.names import load_label_map, normalize_name
from prior_generation.prompts import KINDS, TextRequest
from prior_generation.texts import TEXTS_NAME

SECRET = "sk-test-SECRET-4f1d9c2b7a"
KEY_ENV = "PG_TEST_API_KEY"
TINY = "Dataset951_PGTiny"
TINY_LABELS = {"background": 0, "hippocampus_anterior": 1, "hippocampus_posterior": 2}


# ------------------------------------------------------------------------------------------ helpers
def write_dataset(raw: Path, name: str, labels: dict, channels: dict | None = None) -> Path:
    folder = raw / name
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "channel_names": channels or {"0": "MRI"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(doc))
    return folder / "dataset.json"


@pytest.fixture
def env(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv(KEY_ENV, SECRET)
    write_dataset(raw, TINY, TINY_LABELS)
    return raw, pre


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm-l6-v2", "cpu")


@pytest.fixture(scope="module")
def clip_random():
    return create_encoder("open_clip:ViT-B-32:none", "cpu")


class FakeLLMServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1; scripted replies, counted requests."""

    def __init__(self) -> None:
        self.script: list[tuple] = []  # ("ok", text|None) | ("status", code) | ("sleep", s)
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer.lock:
                    outer.requests.append(body)
                    outer.auth_headers.append(self.headers.get("Authorization", ""))
                    action = outer.script.pop(0) if outer.script else ("ok", None)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if action[0] == "status":
                    return self._send(action[1], {"error": {"message": f"scripted {action[1]}", "type": "x"}})
                if action[0] == "sleep":
                    time.sleep(action[1])
                content = (
                    action[1]
                    if action[0] == "ok" and action[1] is not None
                    else (
                        "Test answer. "
                        + body["messages"][-1]["content"][:90].replace("Please describe", "It covers")
                    )
                )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(
                        200,
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content},
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeLLMServer()
    yield s
    s.close()


def backend_for(server: FakeLLMServer, cache: Path, **kw) -> OpenAIChatBackend:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff_s", 0.01)
    return OpenAIChatBackend("test-model", base_url=server.url, api_key_env=KEY_ENV, cache_dir=cache, **kw)


def openai_cli_args(server: FakeLLMServer, cache: Path, *extra: str) -> list[str]:
    """``python -m prior_generation`` arguments for the tiny dataset through the local OpenAI-compatible server."""
    return ["-d", TINY, "--llm", "openai", "--model", "test-model", "--base-url", server.url, "--api-key-env",
            KEY_ENV, "--encoder", "minilm-l6-v2", "--cache-dir", str(cache), *extra, "--no-progress"]


def a_request(kind: str = "tak_shape") -> TextRequest:
    return TextRequest("spleen", "spleen", kind, "CT", "CT", ("liver", "left kidney"), "DatasetX", False)


def all_files(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------ openai back-end
def test_openai_cli_happy_path_cache_and_no_key_leak(env, server, minilm, capsys):
    _raw, pre = env
    cache = pre.parent / "llm_cache"
    args = openai_cli_args(server, cache)
    assert cli_main(args) == 0
    assert len(server.requests) == 9  # 3 classes x 3 texts
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    assert all(r["temperature"] == 0 and r["model"] == "test-model" for r in server.requests)
    loc_prompts = [
        r["messages"][-1]["content"]
        for r in server.requests
        if "relative position" in r["messages"][-1]["content"]
    ]
    assert any("hippocampus posterior" in p for p in loc_prompts if "hippocampus anterior with" in p)

    folder = pre / TINY
    priors = load_priors(folder, {"labels": TINY_LABELS})
    assert priors.class_names == list(TINY_LABELS) and priors.dim == 384
    assert priors.meta["llm"]["backend"] == "openai" and priors.meta["llm"]["api_key_env"] == KEY_ENV
    assert priors.meta["texts"]["background"]["llmseg"].startswith("Test answer.")
    assert len(list(cache.glob("*.json"))) == 9

    # rerun: every answer from the cache, no request, identical priors
    assert cli_main(args) == 0
    assert len(server.requests) == 9
    again = load_priors(folder)
    assert again.content_hash == priors.content_hash
    out = capsys.readouterr()
    assert "0 request(s), 9 cache hit(s)" in out.out

    # the key value is in no file we wrote, nor in what we printed
    files = all_files(folder, cache)
    assert len(files) >= 12
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in out.out + out.err


def test_openai_retry_after_500_then_success_and_self_check(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [
        ("status", 500),
        ("ok", "The spleen is crescent shaped."),
        ("ok", "The spleen is crescent shaped and about 11 cm long."),
    ]
    b = backend_for(server, tmp_path / "c", self_check=True)
    g = b.generate(a_request())
    assert g.text == "The spleen is crescent shaped and about 11 cm long."  # the corrected second pass
    assert len(server.requests) == 3 and b.n_requests == 3
    # the second pass shows the model its own first answer
    assert server.requests[2]["messages"][2] == {
        "role": "assistant",
        "content": "The spleen is crescent shaped.",
    }
    assert len(list((tmp_path / "c").glob("*.json"))) == 2


def test_openai_401_is_a_clear_error_without_the_key(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [("status", 401)]
    with pytest.raises(LLMAuthError, match=f"rejected the API key from \\${KEY_ENV}") as e:
        backend_for(server, tmp_path / "c").generate(a_request())
    assert SECRET not in str(e.value)
    assert len(server.requests) == 1  # 401 is not retried


def test_openai_timeout(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [("sleep", 1.2), ("sleep", 1.2)]
    b = backend_for(server, tmp_path / "c", timeout=0.3, retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(LLMConnectionError, match="timed out after 2 attempt"):
        b.generate(a_request())
    assert time.monotonic() - t0 < 2.5
    assert not list((tmp_path / "c").glob("*.json"))


def test_openai_refusal_and_empty_answer(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [("ok", "I'm sorry, but I can't help with medical questions."), ("ok", "   ")]
    b = backend_for(server, tmp_path / "c")
    with pytest.raises(LLMRefusalError, match="refused"):
        b.generate(a_request())
    with pytest.raises(LLMRefusalError, match="empty answer"):
        b.generate(a_request("llmseg"))
    assert not list((tmp_path / "c").glob("*.json"))  # refusals are never cached
    assert looks_like_refusal("As an AI language model, I cannot provide medical advice.")
    assert not looks_like_refusal("The pancreas cannot always be separated from the duodenum on CT.")


def test_failure_midway_keeps_cached_answers_and_rerun_resumes(env, server, minilm, capsys):
    _raw, pre = env
    cache = pre.parent / "cache"
    server.script = [("ok", None)] * 4 + [("status", 503)]
    args = openai_cli_args(server, cache, "--retries", "0")
    assert cli_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: request to") and "rerun to resume" in err[0]
    assert len(list(cache.glob("*.json"))) == 4
    assert not priors_paths(pre / TINY)[0].exists()
    assert cli_main(args) == 0
    assert len(server.requests) == 5 + 5  # 4 ok + 1 failed, then only the 5 missing answers


def test_missing_api_key_and_unreachable_server(env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(MissingAPIKeyError, match=KEY_ENV):
        OpenAIChatBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV, cache_dir=tmp_path)
    assert cli_main(["-d", TINY, "--llm", "openai", "--api-key-env", KEY_ENV]) == 1
    assert capsys.readouterr().err.startswith(f"error: environment variable {KEY_ENV} is not set")
    with pytest.raises(SystemExit):  # no way to pass a key on the command line (no prefix match either)
        cli_main(["-d", TINY, "--llm", "openai", "--api-key", "x"])
    capsys.readouterr()
    assert cli_main(["-d", TINY, "--llm", "openai", "--api-key-env", SECRET]) == 1  # key pasted by mistake
    out = capsys.readouterr()
    assert "NAME of an environment variable" in out.err and SECRET not in out.err + out.out

    monkeypatch.setenv(KEY_ENV, SECRET)
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cli_main(
        [
            "-d",
            TINY,
            "--llm",
            "openai",
            "--api-key-env",
            KEY_ENV,
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--retries",
            "1",
            "--backoff",
            "0.01",
            "--no-progress",
            "--encoder",
            "minilm-l6-v2",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "failed after 2 attempt(s)" in err[0] and SECRET not in err[0]


# ------------------------------------------------------------------------------------------- encoders
def test_open_clip_text_tower_sentence_averaging(clip_random):
    import torch

    enc = clip_random
    assert enc.dim == 512 and enc.max_tokens == 77
    assert enc.describe()["random_weights"] is True  # recorded in the priors' meta; trainers warn on it
    long_text = " ".join(
        f"Sentence number {i} says that the liver lies in the right upper quadrant below the diaphragm."
        for i in range(8)
    )
    assert enc.count_tokens(long_text) > 77
    emb, pieces = enc.encode([long_text, "The spleen is small."])
    assert emb.shape == (2, 512) and emb.dtype == np.float32 and pieces == [8, 1]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # equals the normalised mean of the normalised sentence embeddings ...
    with torch.no_grad():
        sent = enc.model.encode_text(enc.tokenizer(split_sentences(long_text))).numpy().astype(np.float64)
        truncated = enc.model.encode_text(enc.tokenizer([long_text])).numpy()[0]
    sent /= np.linalg.norm(sent, axis=1, keepdims=True)
    mean = sent.mean(0) / np.linalg.norm(sent.mean(0))
    np.testing.assert_allclose(emb[0], mean, atol=1e-4)
    # ... and differs from what silent truncation at 77 tokens would give
    truncated /= np.linalg.norm(truncated)
    assert float(emb[0] @ truncated) < 0.9999


def test_minilm_similar_texts_closer(minilm):
    emb, _ = minilm.encode(
        [
            "The liver is a large organ in the right upper abdomen.",
            "The liver is a big organ located in the upper right part of the abdomen.",
            "Preheat the oven and mix butter with sugar for the chocolate cake.",
        ]
    )
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_encoder_spec_and_unknown_encoder():
    assert parse_open_clip_spec("open_clip:ViT-B-32:none") == ("ViT-B-32", None)
    assert parse_open_clip_spec("open_clip:ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert parse_open_clip_spec("open_clip:ViT-B-32:/x/ckpt.safetensors") == (
        "ViT-B-32",
        "/x/ckpt.safetensors",
    )
    assert parse_open_clip_spec("open_clip:hf-hub:org/repo") == ("hf-hub:org/repo", None)
    for bare in ("open_clip:ViT-B-32", "open_clip:ViT-B-32:"):  # never read as random weights
        with pytest.raises(EncoderError, match=r"names no weights.*open_clip:ViT-B-32:openai.*':none'"):
            create_encoder(bare)
    with pytest.raises(EncoderError, match=r"unknown encoder 'bert-9000'.*minilm-l6-v2"):
        create_encoder("bert-9000")
    with pytest.raises(EncoderError, match="no pretrained tag 'nope'"):
        create_encoder("open_clip:ViT-B-32:nope")


def test_cli_weights_not_downloadable_is_one_line_error(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    write_dataset(raw, TINY, TINY_LABELS)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "prior_generation", "-d", TINY, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "cannot download weights 'openai'" in errors[0] and "--encoder minilm-l6-v2" in errors[0]
    assert "open_clip:<model>:/path/to/checkpoint" in errors[0]
    # the texts were written before the encoder failed, ready for review
    assert (pre / TINY / TEXTS_NAME).is_file()


# ---------------------------------------------------------------------------- files, labels, texts
def test_roundtrip_and_refusal_of_changed_labels(env, minilm):
    raw, pre = env
    write_dataset(raw, TINY, {**TINY_LABELS, "ignore": 3})
    res = generate_priors(
        TINY, backend=OfflineKnowledgeBackend(), encoder_name="minilm-l6-v2", progress=False
    )
    folder = pre / TINY
    assert (res.safetensors_path, res.json_path) == priors_paths(folder)
    p = load_priors(folder, {"labels": {**TINY_LABELS, "ignore": 3}})
    assert p.class_names == list(TINY_LABELS) and p.label_values == [0, 1, 2]
    assert set(p.embeddings) == {"llmseg", "tak_shape", "tak_location"}
    for a in p.embeddings.values():
        assert a.shape == (3, 384) and a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert p.embeddings["llmseg"].tobytes() == res.priors.embeddings["llmseg"].tobytes()
    assert "sentence" in p.meta["sentence_averaging"]["note"] and p.meta["encoder_info"]["dim"] == 384
    assert (
        p.meta["llm"]["backend"] == "offline"
        and "hippocampal head" in p.meta["texts"]["hippocampus_anterior"]["llmseg"]
    )

    rerun = f"Run: python -m prior_generation -d {TINY}"
    with pytest.raises(PriorsError, match=r"changed values: hippocampus_posterior \(2 -> 3\).*" + rerun):
        load_priors(
            folder, {"labels": {"background": 0, "hippocampus_anterior": 1, "hippocampus_posterior": 3}}
        )
    with pytest.raises(PriorsError, match=r"not in dataset\.json: hippocampus_posterior"):
        load_priors(folder, {"labels": {"background": 0, "hippocampus_anterior": 1}})
    with pytest.raises(PriorsError, match="missing from the priors: tail"):
        load_priors(folder, {"labels": {**TINY_LABELS, "tail": 3}})
    with pytest.raises(
        PriorsError, match=r"No text priors in .*Run: python -m prior_generation -d Dataset999_Nothing"
    ):
        load_priors(pre / "Dataset999_Nothing")

    st, _ = priors_paths(folder)
    data = bytearray(st.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last embedding
    st.write_bytes(bytes(data))
    with pytest.raises(PriorsError, match=r"text_priors\.safetensors"):
        load_priors(folder)


def test_regions_dataset_and_hand_edit_precedence(env, minilm, tmp_path):
    raw, pre = env
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    name = "Dataset952_PGBraTS"
    write_dataset(raw, name, labels, {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"})
    kb = OfflineKnowledgeBackend()
    res = generate_priors(name, backend=kb, encoder_name="minilm-l6-v2", progress=False)
    p = load_priors(pre / name, {"labels": labels})
    assert p.label_values == [0, [1, 2, 3], [2, 3], [3]]
    assert p.meta["modality"] == "MRI (T1, T1ce, T2, FLAIR)" and p.meta["region_based"] is True
    assert "contains the tumour core" in p.meta["texts"]["whole tumor"]["tak_location"]

    # hand edit in the texts file wins on rerun and survives further reruns
    texts_path = res.texts_path
    doc = json.loads(texts_path.read_text())
    edited = "The tumour core is a compact mass inside the whole tumour."
    doc["classes"]["tumor core"]["tak_shape"]["text"] = edited
    texts_path.write_text(json.dumps(doc))
    p2 = generate_priors(name, backend=kb, encoder_name="minilm-l6-v2", progress=False).priors
    assert p2.meta["texts"]["tumor core"]["tak_shape"] == edited
    assert p2.meta["text_sources"]["tumor core"]["tak_shape"] == "edited"
    assert not np.allclose(p2.embeddings["tak_shape"][2], p.embeddings["tak_shape"][2])
    np.testing.assert_array_equal(p2.embeddings["tak_shape"][1], p.embeddings["tak_shape"][1])
    p3 = generate_priors(name, backend=kb, encoder_name="minilm-l6-v2", progress=False).priors
    assert p3.meta["texts"]["tumor core"]["tak_shape"] == edited

    # --texts FILE beats the edit; --reset-texts returns to the knowledge base
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"tumor core": {"tak_shape": "User text for the core."}}))
    p4 = generate_priors(
        name, backend=kb, encoder_name="minilm-l6-v2", user_texts_file=user, progress=False
    ).priors
    assert p4.meta["texts"]["tumor core"]["tak_shape"] == "User text for the core."
    p5 = generate_priors(
        name, backend=kb, encoder_name="minilm-l6-v2", reset_edits=True, progress=False
    ).priors
    assert p5.meta["texts"]["tumor core"]["tak_shape"] == p.meta["texts"]["tumor core"]["tak_shape"]
    assert p5.content_hash == p.content_hash


# ------------------------------------------------------------------------------------ knowledge base
KB_DATASETS = {
    "amos": (
        {
            "background": 0,
            "spleen": 1,
            "right kidney": 2,
            "left kidney": 3,
            "gall bladder": 4,
            "esophagus": 5,
            "liver": 6,
            "stomach": 7,
            "arota": 8,
            "postcava": 9,
            "pancreas": 10,
            "right adrenal gland": 11,
            "left adrenal gland": 12,
            "duodenum": 13,
            "bladder": 14,
            "prostate/uterus": 15,
        },
        {"0": "CT"},
    ),
    "btcv": (
        {
            "background": 0,
            "Spleen": 1,
            "RK": 2,
            "LK": 3,
            "Gallbladder": 4,
            "Esophagus": 5,
            "Liver": 6,
            "Stomach": 7,
            "Aorta": 8,
            "IVC": 9,
            "portal_vein_and_splenic_vein": 10,
            "Pancreas": 11,
            "RAG": 12,
            "LAG": 13,
            "kidney_left": 14,
        },
        {"0": "CT"},
    ),
    "heart": ({"background": 0, "left atrium": 1}, {"0": "MRI"}),
    "acdc": ({"background": 0, "RV": 1, "MLV": 2, "LVC": 3, "LA": 4, "RA": 5}, {"0": "cineMRI"}),
    "pancreas": ({"background": 0, "pancreas": 1, "pancreatic_tumour": 2}, {"0": "CT"}),
    "brats": ({"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}, {"0": "FLAIR"}),
    "prostate": ({"background": 0, "PZ": 1, "TZ": 2}, {"0": "T2", "1": "ADC"}),
    "tiny": (TINY_LABELS, {"0": "MRI"}),
}


@pytest.mark.parametrize("key", sorted(KB_DATASETS))
def test_offline_kb_covers_target_datasets(key):
    labels, channels = KB_DATASETS[key]
    classes = classes_from_dataset_json({"labels": labels, "channel_names": channels}, f"Dataset_{key}")
    reqs = build_requests(classes)
    kb = OfflineKnowledgeBackend()
    kb.check_coverage(reqs)
    texts = {(r.class_name, r.kind): kb.generate(r).text for r in reqs}
    assert len(texts) == 3 * len(labels) and all(len(t) > 40 for t in texts.values())
    if key == "amos":
        assert classes.modality == "CT"
        assert "left kidney" in texts[("spleen", "tak_location")]
        assert "crescent" in texts[("spleen", "tak_shape")]
        assert "contrast-enhanced CT" in texts[("spleen", "llmseg")]
    if key == "btcv":  # terse names, left/right variants
        assert "right kidney" in texts[("RK", "tak_shape")].lower()
        assert texts[("kidney_left", "llmseg")] == texts[("LK", "llmseg")]


def test_msd_hippocampus_with_shipped_label_map(hippocampus_msd):
    doc = json.loads((hippocampus_msd / "dataset.json").read_text())
    classes = classes_from_dataset_json(doc, "Dataset004_Hippocampus")
    assert classes.class_names == ["background", "Anterior", "Posterior"] and classes.modality_family == "MRI"
    kb = OfflineKnowledgeBackend()
    with pytest.raises(UnknownClassesError) as e:
        kb.check_coverage(build_requests(classes))
    assert e.value.unknown == ["Anterior", "Posterior"] and "msd_hippocampus" in str(e.value)
    reqs = build_requests(classes, load_label_map("msd_hippocampus"))
    kb.check_coverage(reqs)
    loc = kb.generate(next(r for r in reqs if r.class_name == "Anterior" and r.kind == "tak_location")).text
    assert "anterior to the hippocampal body and tail" in loc


def test_unknown_class_error_and_texts_file_way_out(env, minilm, tmp_path, capsys):
    raw, pre = env
    name = "Dataset953_PGOdd"
    write_dataset(raw, name, {"background": 0, "liver": 1, "flux_capacitor": 2})
    with pytest.raises(UnknownClassesError, match="'flux_capacitor'") as e:
        generate_priors(name, backend=OfflineKnowledgeBackend(), encoder_name="minilm-l6-v2", progress=False)
    msg = str(e.value)
    assert "--llm openai" in msg and "--texts FILE" in msg and "liver" not in e.value.unknown
    assert cli_main(["-d", name, "--encoder", "minilm-l6-v2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flux_capacitor" in err[0]

    user = tmp_path / "texts.json"
    user.write_text(json.dumps({"flux_capacitor": {k: f"A made-up device, {k}." for k in KINDS}}))
    assert cli_main(["-d", name, "--encoder", "minilm-l6-v2", "--texts", str(user), "--no-progress"]) == 0
    p = load_priors(pre / name)
    assert p.meta["texts"]["flux_capacitor"]["llmseg"] == "A made-up device, llmseg."
    assert "liver" in p.meta["texts"]["liver"]["tak_shape"]


def test_name_normalisation():
    assert normalize_name("Left_Kidney") == normalize_name("left-kidney") == "left kidney"
    assert normalize_name("kidney_L") == "kidney left"
    assert normalize_name("Enhancing Tumour") == "enhancing tumor"
    kb = OfflineKnowledgeBackend().kb
    assert kb.lookup("kidney_R").id == kb.lookup("RK").id == "right_kidney"
    assert kb.lookup("Peritumoural Oedema").id == "edema"
    assert kb.lookup("hippocampus_posterior").id == "hippocampus_body_tail"
    assert kb.lookup("label_3") is None


def test_cli_end_to_end_by_dataset_id(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    write_dataset(raw, TINY, TINY_LABELS)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "prior_generation", "-d", "951", "--encoder", "minilm-l6-v2", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {pre / TINY / 'text_priors.safetensors'}" in proc.stdout
    assert load_priors(pre / TINY, {"labels": TINY_LABELS}).encoder == "minilm-l6-v2"
