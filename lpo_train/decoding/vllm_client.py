"""``vllm_mode: server``: a running vLLM OpenAI-compatible server as ``vllm_generate``'s engine (TRL's server mode,
``vllm_server_base_url`` / ``vllm_server_host`` / ``vllm_server_port`` / ``vllm_server_timeout``).

Start the server on the same model (``vllm serve MODEL``; on vLLM's CPU build ``python -m
lpo_train.decoding.vllm_serve MODEL``), then sample with ``--use_vllm --vllm_mode server``. Every sample is one
``/v1/completions`` request carrying the prompt's token ids and that sample's temperature, truncations, seed and
length (nothing left to the server's defaults), sent concurrently so the server batches them; the server returns the
sampled token ids. The client checks before sampling that the server holds the same model (``/v1/models``'s
``root``). A head served by ``lpo-train serve`` is not a plain model: point the client at a plain server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lpo_train.errors import UserError


@dataclass
class _Completion:  # the fields of vLLM's CompletionOutput that ``vllm_generate`` reads
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None


@dataclass
class _Output:  # vLLM's RequestOutput, as far as ``vllm_generate`` reads it
    outputs: list[_Completion]


def server_url(args) -> str:
    """``vllm_server_base_url``, else ``http://{vllm_server_host}:{vllm_server_port}`` (TRL's rule)."""
    if args.vllm_server_base_url:
        return args.vllm_server_base_url.rstrip("/")
    return f"http://{args.vllm_server_host}:{args.vllm_server_port}"


class VLLMServerClient:
    """The ``generate(requests, sampling_params)`` of a ``vllm.LLM``, answered by a vLLM server at ``url``."""

    def __init__(self, url: str, model_path: str, timeout: float = 240.0, max_concurrency: int = 64):
        self.url, self.timeout, self.max_concurrency = url, timeout, max_concurrency
        self.model = self._served_model(model_path)

    def _get(self, route: str) -> dict:
        with urllib.request.urlopen(self.url + route, timeout=30) as reply:
            return json.loads(reply.read() or b"{}")

    def _served_model(self, model_path: str) -> str:
        deadline = time.time() + self.timeout
        while True:  # the server may still be starting: wait up to vllm_server_timeout, as TRL's client does
            try:
                models = self._get("/v1/models")["data"]
                break
            except (OSError, KeyError, ValueError) as e:
                if time.time() > deadline:
                    raise UserError(f"vllm_mode 'server': no vLLM server answered at {self.url}/v1/models within "
                                    f"vllm_server_timeout ({self.timeout:g} s): {e}. Start one on the same model "
                                    f"(`vllm serve {model_path}`; on vLLM's CPU build `python -m "
                                    f"lpo_train.decoding.vllm_serve {model_path}`) or set vllm_server_base_url / "
                                    "vllm_server_host / vllm_server_port.") from e
                time.sleep(2)
        want = _same_path(model_path)
        for entry in models:
            if _same_path(entry.get("root") or entry.get("id") or "") == want:
                return entry["id"]
        served = [entry.get("root") or entry.get("id") for entry in models]
        raise UserError(f"vllm_mode 'server': the server at {self.url} serves {served}, not this run's model "
                        f"{model_path}: sampling there would train or evaluate on another model's samples. Start the "
                        "server on the same model, or set vllm_server_base_url to one that serves it.")

    def generate(self, requests, sampling_params, use_tqdm: bool = False) -> list[_Output]:
        bodies = [self._body(request, params) for request, params in zip(requests, sampling_params)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(bodies)))) as pool:
            return list(pool.map(self._complete, bodies))

    def _body(self, request, params) -> dict:
        if params.extra_args:
            raise UserError("vllm_mode 'server' samples fixed temperatures, truncations and sequence-level heads; "
                            "EDT and dynatemp run inside vLLM only in colocate mode (vllm_mode 'colocate').")
        return {"model": self.model, "prompt": list(request["prompt_token_ids"]), "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
                "min_p": params.min_p, "seed": params.seed, "stop": params.stop or [],
                "ignore_eos": params.ignore_eos, "include_stop_str_in_output": params.include_stop_str_in_output,
                "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "return_token_ids": True}

    def _complete(self, body: dict) -> _Output:
        request = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                choice = json.loads(reply.read())["choices"][0]
        except urllib.error.HTTPError as e:
            raise UserError(f"vllm_mode 'server': {self.url}/v1/completions answered {e.code}: "
                            f"{e.read().decode(errors='replace')[:500]}") from e
        return _Output([_Completion(list(choice["token_ids"]), choice["finish_reason"], choice.get("stop_reason"))])


def _same_path(name: str) -> str:
    path = Path(name)
    return str(path.resolve()) if path.exists() else name
