"""The two training callbacks of notebook 04: prediction samples during training, and a stop on nan.

Taught in notebook 04, where they are written; ``python -m helpers.train`` trains with the same callbacks.
"""

import math

import swanlab
import torch
from transformers import TrainerCallback

# ---- #@save from notebooks/04_lora_sft.ipynb: PredictionCallback, TrainingDiverged, DivergenceCallback (make sync writes this block) ----
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
# ---- end of #@save ----
