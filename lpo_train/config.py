"""Config fields shared by every command, each defined once (TRL's parser composes dataclasses):
the prompt dataset and its seed, the sampling arguments and the rewards, under TRL's names where TRL has one.
``LPOConfig``, ``EvalConfig``, the value trainers' ``ValueDataArguments`` and ``GenerateConfig``
inherit them; a command that needs another default says so with ``default_of``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lpo_train.cli_args import help_field as _help


def default_of(cls, name: str, default=None, default_factory=None):
    """Field ``name`` of ``cls`` with another default and the same help string (defined once)."""
    meta = cls.__dataclass_fields__[name].metadata
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PromptDataArguments:
    dataset_name: str | None = _help(
        "Prompt dataset: a local .json/.jsonl/.parquet file, a Hub dataset id, 'toy' (the toy world), "
        "'smollm2_mix[:train|eval]' (the SmolLM2 suite) or 'reasoning_gym:TASK[+TASK][:SIZE]'.", None)
    dataset_split: str = _help("Split of a Hub prompt dataset.", "train")
    dataset_seed: int | None = _help(
        "Seed of generated prompt suites (toy, reasoning-gym, the smollm2_mix order); keep held-out runs apart "
        "from training (default: the run's seed).", None)
    toy_families: list[str] | None = _help("Toy-world families when dataset_name is 'toy'.", None)
    toy_prompts_per_family: int = _help("Toy-world prompts per family when dataset_name is 'toy'.", 64)

    def load_prompts(self, seed: int = 0, prompt_column: str = "prompt", name: str | None = None,
                     split: str | None = None, seed_offset: int = 0):
        """The prompt ``datasets.Dataset`` (``seed``: used when ``dataset_seed`` is unset); ``name`` / ``split``:
        another dataset under the same settings (e.g. an evaluation set); ``seed_offset`` is added to the seed (an
        evaluation set of a generated dataset, such as the toy world's, is drawn with other random numbers)."""
        from lpo_train.data import load_prompt_dataset

        return load_prompt_dataset(name or self.dataset_name, split or self.dataset_split,
                                   (seed if self.dataset_seed is None else self.dataset_seed) + seed_offset,
                                   self.toy_families, self.toy_prompts_per_family, prompt_column)


@dataclass
class VLLMArguments:
    """Plain sampling on vLLM instead of the engine, under TRL's ``GRPOConfig`` names and defaults
    (``lpo_train.decoding.vllm``; what vLLM cannot sample is an error naming ``use_vllm``)."""

    use_vllm: bool = _help("Sample with vLLM instead of lpo-train's engine (fixed temperatures, truncations and "
                           "sequence-level temperature heads; anything decided per token needs the engine).", False)
    vllm_mode: str = _help("'colocate': vLLM inside this process; 'server': a running vLLM server on the same model "
                           "(vllm_server_*; docs/serving.md).", "colocate")
    vllm_gpu_memory_utilization: float = _help("Fraction of GPU memory vLLM may take (colocate; unused on CPU).", 0.3)
    vllm_tensor_parallel_size: int = _help("GPUs vLLM shards the model over (colocate).", 1)
    vllm_max_model_length: int | None = _help("vLLM's context window (default: the model's).", None)
    vllm_server_base_url: str | None = _help("Server mode: the server's URL (overrides host and port).", None)
    vllm_server_host: str = _help("Server mode: the server's host.", "0.0.0.0")
    vllm_server_port: int = _help("Server mode: the server's port.", 8000)
    vllm_server_timeout: float = _help("Server mode: seconds to wait for the server (and for one request).", 240.0)


@dataclass
class DecodingArguments(VLLMArguments):
    max_completion_length: int = _help("Maximum new tokens per response.", 256)
    generation_batch_size: int = _help("Rows (prompt x sample) per engine forward batch.", 256)
    top_k: int = _help("Top-k after temperature (0 = off; HF generate's default is 50).", 0)
    top_p: float = _help("Top-p after top-k (1.0 = off).", 1.0)
    min_p: float = _help("Min-p after top-p (0.0 = off).", 0.0)
    compile_decode_step: bool = _help("torch.compile the model's one-token decode forward (dynamic shapes; "
                                      "the first call compiles, tens of seconds).", False)

    def check_decoding(self) -> None:
        from lpo_train.decoding.vllm import check_vllm_args

        self.decoding_truncation()  # raises a clear error
        check_vllm_args(self)
        if self.max_completion_length < 1 or self.generation_batch_size < 1:
            raise ValueError("max_completion_length and generation_batch_size must be >= 1, got "
                             f"{self.max_completion_length} and {self.generation_batch_size}.")

    def truncation(self) -> dict:
        return {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}

    def decoding_truncation(self):
        """The fixed truncations as the sampling layer's ``Truncation``."""
        from lpo_train.decoding.sampling import Truncation

        return Truncation(**self.truncation())

    def engine_options(self) -> dict:
        """The ``SamplingParams`` these fields set besides the lengths: the truncations and how the step runs."""
        return {**self.truncation(), "compile_decode_step": self.compile_decode_step}


@dataclass
class SamplingArguments(DecodingArguments):
    num_generations: int = _help("Responses sampled per prompt (N).", 8)


@dataclass
class RewardArguments:
    """The rewards a command scores responses with (TRL's ``reward_funcs``), resolved by ``lpo_train.rewards``."""

    reward_funcs: list[str] | None = _help(
        "Rewards: built-in or registered names (lpo_train.registry.register_reward), 'package.module:function' "
        "paths or sequence-classification model paths/ids.", None)
    reward_weights: list[float] | None = _help("One weight per reward function (default all 1).", None)


@dataclass
class LoraArguments:
    """A LoRA adapter instead of full fine-tuning, under TRL's ``ModelConfig`` names and defaults (built
    with TRL's ``get_peft_config``)."""

    use_peft: bool = _help("Train a LoRA adapter (PEFT) on the LM: train-value trains it instead of the whole model; "
                           "train (loss_type lpo_joint) trains it jointly with the head (Eq. 9).", False)
    lora_r: int = _help("LoRA rank.", 16)
    lora_alpha: int = _help("LoRA alpha (the update is scaled by alpha / r).", 32)
    lora_dropout: float = _help("Dropout on the LoRA input.", 0.05)
    lora_target_modules: list[str] | None = _help(
        "Module names that get an adapter (default: PEFT's choice for the architecture, e.g. q_proj v_proj).", None)

    def peft_config(self):
        """``peft.LoraConfig`` (task CAUSAL_LM), or None without ``use_peft``."""
        from trl import ModelConfig, get_peft_config

        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"Need lora_r >= 1 and 0 <= lora_dropout < 1, got {self.lora_r} and {self.lora_dropout}.")
        return get_peft_config(ModelConfig(use_peft=self.use_peft, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                                           lora_dropout=self.lora_dropout,
                                           lora_target_modules=self.lora_target_modules))


SHARED_FIELDS = tuple(f.name for cls in (PromptDataArguments, SamplingArguments, RewardArguments)
                      for f in dataclasses.fields(cls))
