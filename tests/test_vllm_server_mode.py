"""``vllm_mode: server`` (TRL's server mode): a vLLM server on SmolLM2-135M-Instruct, started here with
``python -m lpo_train.decoding.vllm_serve`` on localhost, samples for ``vllm_generate`` and an LPO run; checked
against the engine (greedy) and HF's exact next-token distribution (chi-square). ``make test`` installs vLLM's CPU
build and sets LPO_TRAIN_REQUIRE_VLLM=1."""

from __future__ import annotations

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

from lpo_train.config import DecodingArguments  # noqa: E402
from lpo_train.decoding import EDT, FixedTemperature, SamplingParams, generate  # noqa: E402
from lpo_train.decoding import vllm as backend  # noqa: E402
from lpo_train.decoding.engine import encode_prompts, next_token_distribution  # noqa: E402
from lpo_train.errors import UserError  # noqa: E402
from tests.helpers.stats import chi_square_p  # noqa: E402

pytestmark = pytest.mark.slow
PROMPTS = ["Name a colour.", [{"role": "user", "content": "What is 2+3?"}], "Write one word about the sea."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lpo_train.models.loading import load_causal_lm, resolve_model_path

    path = resolve_model_path("smollm2")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lpo_train.decoding.vllm_serve", path, "--host", "127.0.0.1",
                                "--port", str(port), "--max-model-len", "1024", "--seed", "0"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 400
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited {process.returncode}:\n" + log_path.read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError("the vLLM server did not answer /health in 400 s:\n" + log_path.read_text()[-4000:])
            time.sleep(2)
        model, tokenizer = load_causal_lm("smollm2")
        args = DecodingArguments(use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1", vllm_server_port=port)
        yield model, tokenizer, backend.vllm_engine(path, args), args
    finally:
        backend.shutdown()
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_server_greedy_responses_equal_the_engines(server):
    model, tokenizer, client, _ = server
    params = SamplingParams(max_new_tokens=24, num_samples=2, seed=3)
    ours = generate(model, tokenizer, PROMPTS, FixedTemperature(0.0), params)
    theirs = backend.vllm_generate(client, model, tokenizer, PROMPTS, FixedTemperature(0.0), params)
    for a, b in zip(ours, theirs, strict=True):
        assert (b.prompt_index, b.sample_index, b.prompt_ids) == (a.prompt_index, a.sample_index, a.prompt_ids)
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
    assert {t.finish_reason for t in theirs} == {"eos"}


def test_server_samples_follow_the_exact_distribution_and_repeat_with_their_seeds(server):
    """400 seeded one-token samples at T = 0.7 with top-p 0.9 (every field reaches the server): chi-square against
    the distribution the engine samples from, nothing outside the support; the same seeds give the same tokens."""
    model, tokenizer, client, _ = server
    prompt = PROMPTS[2]
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
    probs = next_token_distribution(logits[None], torch.tensor([0.7], dtype=torch.float64), top_p=0.9)[0].float()
    params = SamplingParams(max_new_tokens=1, num_samples=400, seed=11, top_p=0.9)
    traces = backend.vllm_generate(client, model, tokenizer, [prompt], FixedTemperature(0.7), params)
    firsts = torch.tensor([t.token_ids[0] for t in traces])
    assert probs[firsts].min() > 0, "the server sampled a token outside the truncated support"
    assert chi_square_p(torch.bincount(firsts, minlength=len(probs)).float(), probs) > 1e-3
    again = backend.vllm_generate(client, model, tokenizer, [prompt], FixedTemperature(0.7),
                                  SamplingParams(max_new_tokens=1, num_samples=40, seed=11, top_p=0.9))
    assert [t.token_ids for t in again] == [t.token_ids for t in traces[:40]]


def test_server_rollouts_carry_the_engine_paths_choices(server, tmp_path):
    """An LPO rollout (SmolLM2) whose responses the server samples: the same choices as the engine path's rollout,
    each response sampled at its choice's temperature (the DDP test below trains on such rollouts)."""
    from datasets import Dataset

    from lpo_train.registry import REWARDS, register_reward
    from lpo_train.trainers import LPOConfig, LPOTrainer

    register_reward("server_test_chars", lambda prompts, completions, **_: [  # the response's length in characters
        float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions])
    model, tokenizer, _, args = server
    rows = [{"prompt": [{"role": "user", "content": f"Count to {n}."}]} for n in (3, 5)]
    common = dict(model_name_or_path="smollm2", reward_funcs=["server_test_chars"], num_generations=3,
                  max_completion_length=12, per_device_train_batch_size=2, max_steps=2, grid=[0.0, 0.7, 1.2],
                  level="sequence", report_to=[], save_strategy="no", seed=4)
    try:
        trainer = LPOTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                             args=LPOConfig(output_dir=str(tmp_path / "server"), use_vllm=True, vllm_mode="server",
                                            vllm_server_host=args.vllm_server_host,
                                            vllm_server_port=args.vllm_server_port, **common))
        engine = LPOTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                            args=LPOConfig(output_dir=str(tmp_path / "engine"), **common))
        batch = [trainer.train_dataset[i] for i in range(len(rows))]
        ours, theirs = engine.rollout(batch), trainer.rollout(batch)
    finally:
        REWARDS.unregister("server_test_chars")
    assert [d.choices for d in theirs.draws] == [d.choices for d in ours.draws]
    for a, b in zip(ours.traces, theirs.traces, strict=True):
        assert b.choices == a.choices and set(b.values) == {a.values[0]} and b.token_ids


def test_server_mode_errors_name_the_fix(server, tmp_path):
    model, tokenizer, client, args = server
    with pytest.raises(UserError, match="EDT and dynatemp run inside vLLM only in colocate mode"):
        backend.vllm_generate(client, model, tokenizer, PROMPTS[:1], EDT(1.0, 1.0), SamplingParams(max_new_tokens=2))
    other = tmp_path / "other_model"
    other.mkdir()
    with pytest.raises(UserError, match=r"serves \[.*\], not this run's model .*other_model"):
        backend.vllm_engine(str(other), args)
    nobody = DecodingArguments(use_vllm=True, vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{_free_port()}",
                               vllm_server_timeout=1.0)
    with pytest.raises(UserError, match="no vLLM server answered.*vllm_server_timeout"):
        backend.vllm_engine(str(other), nobody)


def test_two_ddp_processes_sample_from_one_server(server, tmp_path):
    """TRL's reason for server mode: 2 DDP processes (CPU, gloo), each a client of the one server, train one step
    of the SmolLM2 recipe; both ranks end with the same head, and it moved from the initial (uniform) head."""
    from pathlib import Path

    from safetensors.torch import load_file

    _, _, _, args = server
    root = Path(__file__).resolve().parents[1]
    common = [str(root / "tests" / "helpers" / "lpo_run.py"), "--config",
              str(root / "recipes" / "smollm2-135m" / "lpo_seq.yaml"), "--max_steps", "1", "--num_generations", "3",
              "--grid", "0", "0.7", "1.2", "--max_completion_length", "8", "--per_device_train_batch_size", "2",
              "--learning_rate", "0.05", "--warmup_steps", "0", "--report_to", "none", "--save_strategy", "no"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
           "ACCELERATE_USE_CPU": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *common, "--use_vllm", "--vllm_mode", "server", "--vllm_server_host", args.vllm_server_host,
                          "--vllm_server_port", str(args.vllm_server_port), "--output_dir", str(tmp_path / "ddp")],
                         capture_output=True, text=True, cwd=root, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    heads = [load_file(str(tmp_path / "ddp" / f"head_rank{r}.safetensors")) for r in (0, 1)]
    assert heads[0].keys() == heads[1].keys() and all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    # a fresh head's output layer is all zeros (it starts uniform): one step of training moves it on both ranks
    assert heads[0]["mlp.4.weight"].abs().sum() > 0, "the DDP step did not move the head"
