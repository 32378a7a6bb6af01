"""The AdaptiveDecoder head: frozen-LM hidden state -> categorical over a grid of a decoding knob.

A standalone artifact saved like a PEFT adapter (``config.json`` + ``model.safetensors`` +
``README.md``) through huggingface_hub's ``PyTorchModelHubMixin`` (``save_pretrained``,
``push_to_hub``, ``from_pretrained``), recording the base model and its hidden size so it is
never attached to the wrong LM.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the one default temperature grid (heads, evaluation, sweeps)
GRID_PRESETS = {
    "default": DEFAULT_GRID,  # UltraMathStories, GSM8K, UltraFeedback
    "repetition": (0.0, 0.1, 0.2, 0.4, 0.6),  # Wikitext-2 n-gram repeats
    "majority4": (0.0, 0.4, 0.8, 1.0),  # GSM8K majority voting
    "majority5": (0.0, 0.4, 0.8, 1.0, 1.2),
}
KNOBS = ("temperature", "top_p", "top_k", "min_p")
LEVELS = ("token", "sequence")
SELECTIONS = ("argmax", "sample", "mixture")
INPUT_NORMS = ("standardize", "layernorm", "none")

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---
# AdaptiveDecoder head

A {{ config.level }}-level AdaptiveDecoder head that chooses the sampling **{{ config.knob }}** from the grid
{{ grid }} given the frozen base model's last hidden state (Dhuliawala et al., 2024,
[arXiv 2411.09661]({{ paper_url }})). It is not a language model: attach it to `{{ base }}` (hidden size
{{ config.hidden_size }}).

| field | value |
|---|---|
| base model | `{{ base }}` |
| knob | {{ config.knob }} |
| grid | {{ grid }} |
| level | {{ config.level }} |
| head | {{ config.num_layers }}-layer MLP, hidden {{ config.head_hidden_size }}, SiLU, input {{ config.input_norm }} |
{% if config.extra.get("adapter") %}| adapter on the base model | `{{ config.extra["adapter"] }}` (PEFT) |
{% endif %}{% if config.extra.get("adapter_in_repo") %}| LoRA adapter | in this repo (`adapter_config.json`, `adapter_model.safetensors`), trained jointly with the head (Eq. 9) |
{% endif %}{{ extra_sections }}
## Use
{% if config.extra.get("adapter_in_repo") %}
This repo holds the head and the LoRA adapter it was trained with; one call loads the base model, the
adapter on it and the head:

```python
from lpo_train import AdaptiveDecoderForCausalLM

model = AdaptiveDecoderForCausalLM.from_pretrained("<this repo or folder>")
inputs = model.tokenizer.apply_chat_template([{"role": "user", "content": "Write a short story about a fox."}],
                                             add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(model.tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0]))
```
{% else %}
```python
from lpo_train import AdaptiveDecoderHead
from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate
from lpo_train.models.loading import load_causal_lm

model, tokenizer = load_causal_lm("{{ config.extra.get("adapter") or base }}")  # a Hub id, a PEFT adapter, or a spec such as toy:small
head = AdaptiveDecoderHead.from_pretrained("<this repo or folder>")
traces = generate(model, tokenizer, ["Write a short story about a fox."],
                  AdaptiveDecoderRule(head, model=model), SamplingParams(max_new_tokens=128))
print(traces[0].text, traces[0].values[:5])
```
{% endif %}"""


@dataclass
class AdaptiveDecoderConfig:
    hidden_size: int  # the base LM's hidden size (the head's input)
    grid: tuple[float, ...] | str = "default"  # values of the knob, or a preset name
    knob: str = "temperature"  # temperature | top_p | top_k | min_p
    level: str = "sequence"  # token: a choice before every token; sequence: one from the last prompt token
    head_hidden_size: int | None = None  # paper: 2048 for 8B models; default min(2048, max(64, 2 x hidden))
    num_layers: int = 3  # Linear layers; SiLU between them
    base_temperature: float = 1.0  # temperature used with the top_p/top_k/min_p knobs
    # the head's input: "standardize" (LayerNorm, then each feature centred and scaled by statistics of
    # the training prompts' states, set once before training and saved with the head), "layernorm", or "none"
    input_norm: str = "standardize"
    base_model: str | None = None  # id or path of the LM the head was trained on
    extra: dict = field(default_factory=dict)  # free metadata (training config, metrics)

    def __post_init__(self):
        if isinstance(self.grid, str):
            if self.grid not in GRID_PRESETS:
                raise ValueError(f"Unknown grid preset {self.grid!r}; choose from {sorted(GRID_PRESETS)} "
                                 "or give a list of values.")
            self.grid = GRID_PRESETS[self.grid]
        self.grid = tuple(float(v) for v in self.grid)
        if not self.grid:
            raise ValueError("The grid is empty: give at least one value, e.g. grid=[0.0, 0.5, 1.0].")
        if len(set(self.grid)) != len(self.grid):
            raise ValueError(f"The grid has duplicate values {list(self.grid)}; each choice must be distinct.")
        if any(not math.isfinite(v) or v < 0 for v in self.grid):
            raise ValueError(f"Grid values must be finite and >= 0, got {list(self.grid)}.")
        if self.knob not in KNOBS:
            raise ValueError(f"Unknown knob {self.knob!r}; choose from {KNOBS}.")
        if self.knob == "top_p" and any(not 0 < v <= 1 for v in self.grid):
            raise ValueError(f"top_p grid values must be in (0, 1], got {list(self.grid)}.")
        if self.knob == "min_p" and any(v >= 1 for v in self.grid):
            raise ValueError(f"min_p grid values must be in [0, 1), got {list(self.grid)}.")
        if self.knob == "top_k" and any(v != int(v) for v in self.grid):
            raise ValueError(f"top_k grid values must be whole numbers (0 = off), got {list(self.grid)}.")
        if self.input_norm is True or self.input_norm is False:  # older configs wrote a bool
            self.input_norm = "layernorm" if self.input_norm else "none"
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}.")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}.")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be >= 1.")
        if self.head_hidden_size is None:
            self.head_hidden_size = min(2048, max(64, 2 * self.hidden_size))

    @property
    def num_choices(self) -> int:
        return len(self.grid)

    def to_dict(self) -> dict:
        """JSON-ready fields (also what trackers such as W&B record as the model config)."""
        return {"model_type": "adaptive_decoder", **asdict(self), "grid": list(self.grid)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class AdaptiveDecoderHead(nn.Module, PyTorchModelHubMixin, library_name="lpo-train",
                          tags=["lpo-train", "adaptive-decoding", "latent-preference-optimization"],
                          paper_url="https://arxiv.org/abs/2411.09661", model_card_template=MODEL_CARD_TEMPLATE):
    """MLP (SiLU) from the LM's last hidden state to logits over the knob's grid.

    The last layer is zero-initialised, so the first distribution is exactly uniform.
    """

    def __init__(self, config: AdaptiveDecoderConfig):
        super().__init__()
        self.config = config
        dims = [config.hidden_size] + [config.head_hidden_size] * (config.num_layers - 1) + [config.num_choices]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        # A real LM's last hidden state has a large norm (SmolLM2: ~55) and, at the last prompt token (the
        # chat template's "assistant" token for every prompt), a large component shared by all prompts:
        # raw, it makes the first steps overshoot; layer-normed only, the head sees near-identical inputs
        # and learns one temperature for all prompts. Standardising each feature with the training
        # prompts' statistics keeps what differs between prompts.
        self.norm = (nn.LayerNorm(config.hidden_size, elementwise_affine=False) if config.input_norm != "none"
                     else nn.Identity())
        if config.input_norm == "standardize":
            self.register_buffer("input_mean", torch.zeros(config.hidden_size))
            self.register_buffer("input_std", torch.ones(config.hidden_size))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("grid", torch.tensor(config.grid), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the grid, [..., K], in the head's dtype."""
        x = self.norm(hidden.to(self.mlp[0].weight.dtype))
        if self.config.input_norm == "standardize":
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        return self.mlp(x)

    @property
    def input_statistics_set(self) -> bool:
        return self.config.input_norm == "standardize" and not (
            bool((self.input_mean == 0).all()) and bool((self.input_std == 1).all()))

    @torch.no_grad()
    def set_input_statistics(self, hidden: torch.Tensor) -> None:
        """Set the standardisation from example hidden states [n, H] (``input_norm='standardize'``)."""
        if self.config.input_norm != "standardize":
            return
        x = self.norm(hidden.to(self.input_mean.device, torch.float32))
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(x.std(0).clamp(min=1e-3) if len(x) > 1 else torch.ones_like(self.input_mean))

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.forward(hidden).float(), dim=-1)

    def check_compatible(self, model) -> None:
        """Raise a clear error when ``model``'s hidden size is not the one the head was built for."""
        size = getattr(model.config, "hidden_size", None)
        if size is None and hasattr(model.config, "get_text_config"):
            size = model.config.get_text_config().hidden_size
        if self.config.extra.get("adapter_in_repo") and not (getattr(model, "lpo_adapter", None) or
                                                             hasattr(model, "peft_config")):
            logger.warning("This head was trained jointly with the LoRA adapter saved beside it (adapter_in_repo), "
                           "but the model has no adapter: its choices were learned for the adapted LM. Load the "
                           "head's folder as the model (load_causal_lm(folder), --model_name_or_path FOLDER) or "
                           "use AdaptiveDecoderForCausalLM.from_pretrained(folder).")
        if size != self.config.hidden_size:
            raise ValueError(
                f"This AdaptiveDecoder head expects hidden size {self.config.hidden_size} "
                f"(base model {self.config.base_model!r}) but the model has hidden size {size}. "
                "Attach it to the base model it was trained on, or train a new head.")

    @classmethod
    def for_model(cls, model, **config_kwargs) -> AdaptiveDecoderHead:
        """A fresh head sized for ``model`` (its base model id is recorded)."""
        config_kwargs.setdefault("base_model", getattr(model.config, "name_or_path", None) or None)
        if getattr(model, "lpo_adapter", None):  # a PEFT adapter as the base model: the card names both
            config_kwargs["extra"] = {**config_kwargs.get("extra", {}), "adapter": model.lpo_adapter}
        return cls(AdaptiveDecoderConfig(hidden_size=model.config.hidden_size, **config_kwargs))

    # --- artifact (huggingface_hub's PyTorchModelHubMixin: save_pretrained, push_to_hub, from_pretrained) --

    def save_pretrained(self, save_directory: str | Path, *, state_dict: dict | None = None,
                        custom_generate: bool = False, **kwargs) -> Path | str:
        """config.json + model.safetensors + README.md (the mixin's, with ``model_card_kwargs``, ``push_to_hub``,
        ``repo_id``). ``state_dict`` overrides the module's own weights (e.g. gathered from ZeRO-3 shards).
        ``custom_generate``: also write ``custom_generate/generate.py`` + ``requirements.txt``, so that plain
        transformers runs the head with ``model.generate(..., custom_generate=<this folder or repo>,
        trust_remote_code=True)``. Returns the folder (the commit URL with ``push_to_hub=True``)."""
        self._custom_generate = custom_generate or getattr(self, "_custom_generate", False)
        if "model_card" in kwargs:
            raise TypeError("save_pretrained(model_card=...) is gone: pass extra card rows as "
                            "model_card_kwargs={'extra_sections': '| key | value |\\n'}.")
        unknown = set(kwargs) - {"config", "repo_id", "push_to_hub", "model_card_kwargs"}
        if unknown and not kwargs.get("push_to_hub"):
            raise TypeError(f"save_pretrained got unexpected arguments {sorted(unknown)}.")
        head = self
        if state_dict is not None:
            head = type(self)(self.config)
            head.load_state_dict(state_dict)
            head._custom_generate, head._hub_target = self._custom_generate, getattr(self, "_hub_target", None)
        try:
            url = PyTorchModelHubMixin.save_pretrained(head, save_directory, **kwargs)
        finally:
            self._custom_generate = False
        return url if kwargs.get("push_to_hub") else Path(save_directory)

    def push_to_hub(self, repo_id: str, *, custom_generate: bool = False, **kwargs) -> str:
        """The mixin's ``push_to_hub`` (``private``, ``token``, ``branch``, ``create_pr``, ...);
        ``custom_generate`` as in ``save_pretrained`` (the file then names this repo)."""
        self._custom_generate, self._hub_target = custom_generate, repo_id
        try:
            return PyTorchModelHubMixin.push_to_hub(self, repo_id, **kwargs)
        finally:
            self._custom_generate, self._hub_target = False, None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: config.json (with ``model_type``) and model.safetensors. The card is the mixin's
        (``generate_model_card``); a card left by an earlier save is replaced, never kept stale."""
        from safetensors.torch import save_file

        (save_directory / "README.md").unlink(missing_ok=True)
        (save_directory / "config.json").write_text(self.config.to_json_string())
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(save_directory / "model.safetensors"))
        if getattr(self, "_custom_generate", False):
            from importlib.resources import files

            folder = save_directory / "custom_generate"
            folder.mkdir(exist_ok=True)
            target = getattr(self, "_hub_target", None) or str(Path(save_directory).resolve())
            template = files("lpo_train.templates").joinpath("custom_generate.py").read_text()
            (folder / "generate.py").write_text(template.replace('"{head}"', repr(target)))
            (folder / "requirements.txt").write_text("lpo-train\n")

    def generate_model_card(self, *args, extra_sections: str = "", **kwargs) -> ModelCard:
        """The head's card from :data:`MODEL_CARD_TEMPLATE`; ``extra_sections`` adds rows to its table (the
        trainer's loss, data and final metrics); pass it as ``save_pretrained(..., model_card_kwargs=...)``."""
        info = self._hub_mixin_info
        data = ModelCardData(**info.model_card_data.to_dict())
        data.base_model = self.config.base_model
        c = self.config
        return ModelCard.from_template(card_data=data, template_str=info.model_card_template,
                                       paper_url=info.paper_url, config=c, grid=list(c.grid),
                                       base=c.base_model or "<base model>", extra_sections=extra_sections, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs) -> AdaptiveDecoderHead:
        """A saved head from a folder or a Hub repo (``revision``, ``token``, ``cache_dir``, ``force_download``,
        ``local_files_only`` as in ``huggingface_hub``). Validates the artifact: its type, a readable weights
        file, and every weight loaded strictly (a half-written head is an error, not a partial load)."""
        name = str(pretrained_model_name_or_path)
        if Path(name).is_dir():
            if not (Path(name) / "config.json").exists():
                raise FileNotFoundError(f"No AdaptiveDecoder config.json in {name}.")
        elif _looks_local(name):
            raise FileNotFoundError(f"No AdaptiveDecoder head at {name}: the folder does not exist. "
                                    "Give the output_dir of a training run or a Hub repo id (user/name).")
        try:
            return super().from_pretrained(name, force_download=force_download, token=token, cache_dir=cache_dir,
                                           local_files_only=local_files_only, revision=revision, **model_kwargs)
        except _ArtifactError:
            raise
        except Exception as e:  # HFValidationError, offline mode, 404: say both places were looked at
            raise FileNotFoundError(f"No AdaptiveDecoder head at {name!r}: there is no such local folder, and as "
                                    f"a Hub repo id it could not be fetched ({type(e).__name__}: {e}).") from e

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         config: dict | None = None, map_location: str = "cpu", **kwargs) -> AdaptiveDecoderHead:
        """The mixin's hook, given config.json as read (a dict): checked, then the weights loaded strictly
        (``map_location``: the device the head is put on)."""
        if kwargs:
            raise _Invalid(f"AdaptiveDecoderHead.from_pretrained got unexpected arguments {sorted(kwargs)} "
                           "(weights always load strictly).")
        if not isinstance(config, dict):
            raise _NotFound(f"No AdaptiveDecoder config.json at {model_id!r} (not a folder holding one, and the "
                            "Hub has none there).")
        raw = dict(config)
        raw.setdefault("input_norm", "none")  # heads saved before the field existed read raw states
        if raw.pop("model_type", "adaptive_decoder") != "adaptive_decoder":
            raise _Invalid(f"{model_id} does not hold an AdaptiveDecoder head (config.json model_type "
                           f"{config.get('model_type')!r}).")
        try:
            head = cls(AdaptiveDecoderConfig(**raw))
        except TypeError as e:
            raise _Invalid(f"{model_id}/config.json is not an AdaptiveDecoder config: {e}.") from e
        if Path(model_id).is_dir():
            weights = Path(model_id) / "model.safetensors"
        else:
            from huggingface_hub import hf_hub_download

            weights = Path(hf_hub_download(model_id, "model.safetensors", revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, local_files_only=local_files_only,
                                           token=token))
        head.load_state_dict(load_head_weights(weights))
        return head.to(map_location).eval()


class _ArtifactError(Exception):
    """A head artifact that was found but is not usable (raised as is, never re-worded as 'not found')."""


class _NotFound(_ArtifactError, FileNotFoundError):
    pass


class _Invalid(_ArtifactError, ValueError):
    pass


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id: starts with . / ~, or has more than one '/' or a backslash."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def load_head_weights(path: Path) -> dict:
    """The head's safetensors state, with an error naming the file when it is missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise _NotFound(f"{path} is missing: the head or checkpoint folder is incomplete (an interrupted "
                        "save?). Use another checkpoint or retrain.")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise _Invalid(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it is corrupt or "
                       "half-written. Use another checkpoint or retrain.") from e
