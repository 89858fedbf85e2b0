"""The LoRA SFT recipe: PEFT's LoraConfig, TRL's SFTConfig, and two training callbacks.

Taught in notebook 04, where each of these is written; ``python -m helpers.train`` builds its
run from the same functions, so the notebook and the command line train the same way.
"""

import math

import swanlab
import torch
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig


def lora_config(profile):  #@save
    """PEFT's LoraConfig from the profile: which linear layers get a low-rank update, and how large."""
    return LoraConfig(
        r=profile.lora_r,  # rank of the update B @ A (usual 4-64)
        lora_alpha=profile.lora_alpha,  # the update is scaled by alpha / r
        lora_dropout=profile.lora_dropout,  # dropout on the LoRA branch's input only (usual 0-0.1)
        target_modules=list(profile.lora_target_modules),  # GLM-4 names: there is no gate_proj or up_proj
        task_type="CAUSAL_LM",
    )


def sft_config(profile, output_dir, report_to="none"):  #@save
    """TRL's SFTConfig from the profile: batch, learning rate and schedule, length, precision, checkpoints."""
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=profile.batch_size, per_device_eval_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,  # effective batch = batch x accumulation x GPUs
        learning_rate=profile.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,  # 5% of the steps
        num_train_epochs=profile.num_epochs, max_steps=profile.max_steps,  # max_steps > 0 overrides the epochs
        max_length=profile.max_length,  # not max_seq_length: today's TRL removed it
        packing=profile.packing, packing_strategy="bfd",  # whole examples in rows of max_length, no padding
        eval_strategy="steps", eval_steps=profile.eval_steps,
        save_strategy="steps", save_steps=profile.save_steps,
        logging_steps=profile.logging_steps, logging_nan_inf_filter=False,  # show a nan loss as nan
        bf16=profile.dtype == "bfloat16", use_cpu=profile.device == "cpu",  # GLM-4 trains in bf16, never fp16
        activation_checkpointing=profile.activation_checkpointing,  # recompute in backward: less memory, more time
        report_to=report_to, seed=profile.seed, data_seed=profile.seed,
    )


class PredictionCallback(TrainerCallback):  #@save
    """At every evaluation, answers a few fixed questions (greedy) and keeps the answers, so you see what is learned."""

    def __init__(self, tokenizer, prompts=("你是谁？", "把“今天天气很好”翻译成英文。", "12 乘以 3 等于多少？"),
                 max_new_tokens=48):
        self.tokenizer, self.prompts, self.max_new_tokens = tokenizer, list(prompts), max_new_tokens
        self.history = []  # one row per evaluation and prompt

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:  # under accelerate launch, one process answers
            return
        end_ids = model.generation_config.eos_token_id  # GLM-4's three end ids
        for prompt in self.prompts:
            inputs = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                        return_tensors="pt", return_dict=True).to(model.device)
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=end_ids)
            new = output[0, inputs["input_ids"].shape[1]:].tolist()
            answer = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            self.history.append({"step": state.global_step, "prompt": prompt, "answer": answer, "stopped": new[-1] in end_ids})
        if "swanlab" in args.report_to:  # only when a SwanLab run is tracking this training
            texts = [swanlab.Text(f"{row['prompt']}\n→ {row['answer']}") for row in self.history[-len(self.prompts):]]
            swanlab.log({"predictions": texts}, step=state.global_step)


class TrainingDiverged(FloatingPointError):  #@save
    """The loss or the gradients stopped being finite numbers (nan or inf)."""

    def _render_traceback_(self):  # Jupyter shows this one line instead of a stack trace
        return [f"TrainingDiverged: {self}"]


class DivergenceCallback(TrainerCallback):  #@save
    """Stops training the moment the loss or the LoRA gradients are nan or inf, before the bad update is applied."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        norms = [p.grad.float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
        if norms and not torch.isfinite(torch.stack(norms).sum()):
            raise TrainingDiverged(f"the gradients became nan or inf at step {state.global_step + 1}: lower the learning "
                                   f"rate (now {args.learning_rate:g}), keep bf16 rather than fp16, and resume.")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in (logs or {}) and not math.isfinite(logs[key]):
                raise TrainingDiverged(f"{key} became {logs[key]} at step {state.global_step}: lower the learning "
                                       f"rate (now {args.learning_rate:g}) and resume from the last checkpoint.")
