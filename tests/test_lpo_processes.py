"""Multi-process and kill/resume behaviour of LPO training (subprocesses, CPU)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "helpers" / "lpo_run.py")
RECIPE = str(ROOT / "recipes" / "toy" / "lpo_seq.yaml")
LIKELIHOOD_RECIPE = str(ROOT / "recipes" / "toy" / "lpo_tok_likelihood.yaml")


def _args(out, recipe=RECIPE, **overrides):
    base = {"toy_families": "story", "toy_prompts_per_family": "16", "max_steps": "3", "num_generations": "4",
            "max_completion_length": "40", "learning_rate": "0.01", "logging_steps": "1", "save_strategy": "no",
            "output_dir": str(out)}
    base.update(overrides)
    args = ["--config", recipe]
    for k, v in base.items():
        args += [f"--{k}"] + (v.split() if k == "toy_families" else [v])
    return args


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


def _deepspeed_env():
    """A DeepSpeed launch's environment: its CPU ops (JIT-compiled C++) built once into the test cache and
    reused by every DeepSpeed test and later run (torch rebuilds them when their sources or flags change);
    without ACCELERATE_USE_CPU, with which a DeepSpeed config would silently fall back to DDP."""
    env = _env(TORCH_EXTENSIONS_DIR=str(Path(os.environ["LPO_TRAIN_CACHE"]) / "torch_extensions"))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _heads(out):
    return {p.name: load_file(str(p)) for p in sorted(Path(out).glob("head_rank*.safetensors"))}


@pytest.mark.slow
def test_two_processes_match_one_process(toy_lm_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, HELPER, *_args(one, per_device_train_batch_size="4")],
                   check=True, env=_env(), cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    HELPER, *_args(two, per_device_train_batch_size="2")],
                   check=True, env=_env(ACCELERATE_USE_CPU="1"), cwd=ROOT, timeout=300)
    (single,) = _heads(one).values()
    ranks = list(_heads(two).values())
    assert len(ranks) == 2
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # DDP keeps the ranks identical
        # Same global batch, same prompts and samples (per-prompt seeds), so the same pairs: equal up
        # to float summation order (DDP averages two half-batch means), which Adam's near-sign
        # updates amplify for gradients near zero: measured max |diff| 2.3e-5 at lr 1e-2 after 3
        # steps. Stated tolerance: 1e-4. (A rank with fewer pairs, from ties, would differ more;
        # the continuous story reward avoids ties.)
        assert torch.allclose(ranks[0][k], single[k], atol=1e-4), k
    assert any(not torch.equal(single[k], torch.zeros_like(single[k])) for k in single if "mlp.4" in k)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_head(toy_lm_folder, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = dict(max_steps="6", save_strategy="steps", save_steps="2", per_device_train_batch_size="2")
    subprocess.run([sys.executable, HELPER, *_args(full, **common)], check=True, env=_env(), cwd=ROOT, timeout=300)
    proc = subprocess.Popen([sys.executable, HELPER, *_args(killed, **common)], env=_env(LPO_TEST_SLEEP="1.0"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint-2"
    deadline = time.time() + 240
    while not (checkpoint / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (checkpoint / "model.safetensors").exists() and not (killed / "checkpoint-6").exists()
    assert not list(killed.glob("head_rank*"))  # the killed run did not finish
    subprocess.run([sys.executable, HELPER, *_args(killed, **common), "--resume_from_checkpoint", str(checkpoint)],
                   check=True, env=_env(), cwd=ROOT, timeout=300)
    (a,), (b,) = _heads(full).values(), _heads(killed).values()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_cpu_processes(toy_lm_folder, tmp_path, stage):
    out = tmp_path / stage
    config = ROOT / "accelerate_configs" / f"{stage}_cpu2.yaml"
    env = _deepspeed_env()
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), HELPER,
                          *_args(out, per_device_train_batch_size="2", save_strategy="steps", save_steps="3"),
                          "--use_cpu", "true"], env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "DeepSpeed" in run.stdout + run.stderr  # really ran under DeepSpeed
    ranks = list(_heads(out).values())
    assert len(ranks) == 2
    saved = load_file(str(out / "checkpoint-3" / "model.safetensors"))  # gathered, full-size weights
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.equal(saved[k], ranks[0][k]), k  # the checkpoint holds the trained head, not shards
    assert saved["mlp.4.weight"].abs().sum() > 0  # the zero-initialised last layer was trained


@pytest.mark.slow
def test_uneven_prompts_over_two_processes_do_not_hang(toy_lm_folder, tmp_path):
    # 10 prompts, per-device batch 3, 2 ranks: ranks see different families and pair counts. Metrics used
    # to be gathered per key as they were recorded, so ranks called the collective a different number
    # of times and hung at step 0; now they are reduced once per log, over the union of keys.
    out = tmp_path / "uneven"
    args = _args(out, toy_families="arith story", toy_prompts_per_family="5", per_device_train_batch_size="3",
                 max_steps="-1", num_train_epochs="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          HELPER, *args], env=_env(ACCELERATE_USE_CPU="1"), cwd=ROOT, timeout=240,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = list(_heads(out).values())
    assert len(ranks) == 2 and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["group_relative", "likelihood"])
def test_group_relative_and_likelihood_over_two_processes_match_one_process(toy_lm_folder, tmp_path, loss):
    """Each rank divides its loss by its own count (samples of informative groups; references) and DDP averages
    the ranks, as for the LPO loss: with equal counts per rank (2 prompts each; the continuous story reward
    leaves every group informative) two ranks of half the batch take the same step as one process on the
    whole batch. (A rank with fewer informative groups would weigh its samples more, as in the LPO test.)"""
    recipe = LIKELIHOOD_RECIPE if loss == "likelihood" else RECIPE
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, HELPER, *_args(one, recipe, loss_type=loss, per_device_train_batch_size="4")],
                   check=True, env=_env(), cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    HELPER, *_args(two, recipe, loss_type=loss, per_device_train_batch_size="2")],
                   check=True, env=_env(ACCELERATE_USE_CPU="1"), cwd=ROOT, timeout=300)
    (single,) = _heads(one).values()
    ranks = list(_heads(two).values())
    assert len(ranks) == 2
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.allclose(ranks[0][k], single[k], atol=1e-4), k  # float summation order, as above
    assert any(single[k].abs().sum() > 0 for k in single if "mlp.4" in k)  # the zero-initialised layer trained


def _adapters(out):
    return {p.name: load_file(str(p)) for p in sorted(Path(out).glob("adapter_rank*.safetensors"))}


JOINT = {"use_peft": "true", "loss_type": "lpo_joint", "learning_rate": "0.001", "lora_learning_rate": "0.001",
         "lora_dropout": "0.0"}  # dropout masks depend on the batch layout: off, so layouts can agree


def _two_processes(launcher: str, args: list[str], tmp_path) -> tuple[list[str], dict]:
    """The command and environment of a 2-process CPU run of the helper: DDP (torch.distributed.run) or DeepSpeed
    ('zero2' / 'zero3', through accelerate with its CPU config; ACCELERATE_USE_CPU would fall back to DDP)."""
    if launcher == "ddp":
        return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", HELPER, *args],
                _env(ACCELERATE_USE_CPU="1"))
    env = _deepspeed_env()
    return ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             str(ROOT / "accelerate_configs" / f"{launcher}_cpu2.yaml"), HELPER, *args, "--use_cpu", "true"], env)


@pytest.fixture(scope="module")
def joint_one_process(toy_lm_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "one"
    subprocess.run([sys.executable, HELPER, *_args(out, per_device_train_batch_size="4", **JOINT_RUN)],
                   check=True, env=_env(), cwd=ROOT, timeout=300)
    return out


JOINT_RUN = dict(JOINT, save_strategy="steps", save_steps="3")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "zero2", "zero3"])
def test_joint_head_and_lora_over_two_processes(joint_one_process, tmp_path, launcher):
    """Eq. 9 with a LoRA on the LM (use_peft): 2 processes (DDP, ZeRO-2, ZeRO-3) train the head and the adapter
    to what one process trains (same global batch), and the checkpoint holds both, gathered to full size."""
    two = tmp_path / launcher
    cmd, env = _two_processes(launcher, _args(two, per_device_train_batch_size="2", **JOINT_RUN), tmp_path)
    run = subprocess.run(cmd, env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    for weights in (_heads, _adapters):
        (single,) = weights(joint_one_process).values()
        ranks = list(weights(two).values())
        assert len(ranks) == 2 and set(ranks[0]) == set(single)
        for k in single:
            assert torch.equal(ranks[0][k], ranks[1][k]), k
            # the same pairs on both layouts; equal up to float summation order, which the LM forward over
            # batches of other widths adds to (at lr 1e-2 Adam amplified it to 2e-4; at 1e-3, within 1e-4)
            assert torch.allclose(ranks[0][k], single[k], atol=1e-4), (k, (ranks[0][k] - single[k]).abs().max())
    head, adapter = list(_heads(two).values())[0], list(_adapters(two).values())[0]
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0: it was trained
    saved_head = load_file(str(two / "checkpoint-3" / "model.safetensors"))
    saved_adapter = load_file(str(two / "checkpoint-3" / "adapter_model.safetensors"))
    assert set(saved_head) == set(head) and all(torch.equal(saved_head[k], head[k]) for k in head)
    assert set(saved_adapter) == set(adapter) and all(torch.equal(saved_adapter[k], adapter[k]) for k in adapter)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "zero3"])
def test_joint_run_where_one_rank_has_no_pair_does_not_hang(toy_lm_folder, tmp_path, launcher):
    """Rank 1's rewards all tie (no pair there), rank 0 pairs: the pairless rank's zero loss still runs the joint
    forward (LM included), so DDP's reducer and ZeRO-3's gathering see the same calls and the run finishes."""
    out = tmp_path / launcher
    args = [*_args(out, per_device_train_batch_size="2", max_steps="2", **JOINT),
            "--reward_funcs", "tests.helpers.my_rewards:tied_on_rank_one", "--max_steps_without_pairs", "10"]
    cmd, env = _two_processes(launcher, args, tmp_path)
    run = subprocess.run(cmd, env=env, cwd=ROOT, timeout=400, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = list(_adapters(out).values())
    assert len(ranks) == 2 and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in ranks[0].items())  # rank 0's pairs trained it


@pytest.mark.slow
def test_likelihood_under_zero3_makes_the_same_collective_calls_on_every_rank(toy_lm_folder, tmp_path):
    # A head wide enough for ZeRO-3 to partition it (512 x 512 > its 1e5 persistence threshold), three epochs over
    # shuffled references: from the second epoch on a rank meets references the other rank cached, or none. The
    # gather around the references' teacher forcing used to be entered only for uncached ones, so the ranks made
    # different numbers of collective calls (a hang); it is now entered once per step on every rank.
    out = tmp_path / "zero3_likelihood"
    config = ROOT / "accelerate_configs" / "zero3_cpu2.yaml"
    args = _args(out, LIKELIHOOD_RECIPE, per_device_train_batch_size="2", max_steps="-1", num_train_epochs="3",
                 head_hidden_size="512", toy_families="arith story")
    args = [a for a in args if a not in ("--toy_families", "arith", "story", "--toy_prompts_per_family", "16")]
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), HELPER,
                          *args, "--use_cpu", "true"], env=_deepspeed_env(), cwd=ROOT, timeout=420,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = list(_heads(out).values())
    assert len(ranks) == 2 and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert ranks[0]["mlp.2.weight"].shape == (512, 512)


@pytest.mark.slow
def test_ranks_with_unequal_pair_counts_take_the_one_process_step(toy_lm_folder, tmp_path):
    # arith's 0/1 reward ties whole groups, so the two ranks form different numbers of pairs: each rank divides by
    # the step's global count (times the process count, as DDP averages), so every pair weighs alike and two ranks
    # take the one-process step (a rank dividing by its own count would weigh its pairs by 1 / (2 x n_rank))
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(toy_families="arith story", toy_prompts_per_family="8")
    subprocess.run([sys.executable, HELPER, *_args(one, per_device_train_batch_size="4", **common)],
                   check=True, env=_env(), cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    HELPER, *_args(two, per_device_train_batch_size="2", **common)],
                   check=True, env=_env(ACCELERATE_USE_CPU="1"), cwd=ROOT, timeout=300)
    (single,) = _heads(one).values()
    ranks = list(_heads(two).values())
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.allclose(ranks[0][k], single[k], atol=1e-4), k
