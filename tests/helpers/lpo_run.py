"""Test helper: an LPO run that saves every rank's head (and LoRA adapter, with use_peft), and can sleep after each step
(``LPO_TEST_SLEEP``) so a test can kill it mid-run."""

import os
import sys
import time
from pathlib import Path

from safetensors.torch import save_file
from transformers import TrainerCallback

from lpo_train.train import parse_config
from lpo_train.trainers import LPOTrainer


class Sleep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(os.environ.get("LPO_TEST_SLEEP", "0")))


def main():
    config = parse_config(sys.argv[1:])
    trainer = LPOTrainer(args=config, callbacks=[Sleep()])
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    rank = trainer.accelerator.process_index
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    with trainer.head_for_generation() as head:  # gathers ZeRO-3 shards on every rank
        state = {k: v.detach().clone().contiguous().cpu() for k, v in head.state_dict().items()}
        if config.use_peft:  # the jointly trained LoRA adapter too
            from peft import get_peft_model_state_dict

            adapter = {k: v.detach().clone().contiguous().cpu() for k, v in get_peft_model_state_dict(trainer.lm, save_embedding_layers=False).items()}
    save_file(state, str(Path(config.output_dir) / f"head_rank{rank}.safetensors"))
    if config.use_peft:
        save_file(adapter, str(Path(config.output_dir) / f"adapter_rank{rank}.safetensors"))
    if trainer.accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.barrier()


if __name__ == "__main__":
    main()
