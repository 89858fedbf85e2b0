"""Notebook 04's own code: the identity asked inside conversations, and the two training callbacks (prediction
samples during training, and a stop on nan).

Taught in notebook 04, where they are written; ``python -m helpers.train`` trains with the same data and callbacks.
"""

import math
import random

import swanlab
import torch
from datasets import Dataset
from transformers import TrainerCallback

# ---- #@save from notebooks/04_lora_sft.ipynb: identity_in_conversations, PredictionCallback, TrainingDiverged, DivergenceCallback (make sync writes this block) ----
def identity_in_conversations(identity, tasks, seed=42):  #@save
    """Each identity row asked again inside a two-turn conversation, beside a single question drawn from `tasks`:
    after that task in every other conversation, before it in the rest. The name is then learned at turn 2 too,
    after another answer, and a task asked after the identity question learns a plain answer."""
    def turn(row):  # an Alpaca row as a question and its answer
        question = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
        return [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]

    singles = [row for row in tasks if not row.get("messages")]  # Alpaca rows, not conversations
    if not singles:
        raise ValueError("no single question among the tasks to ask the identity beside: give Alpaca rows too.")
    rng = random.Random(seed)  # the same conversations every run
    talks = []
    for n, row in enumerate(identity):
        task = rng.choice(singles)
        talks.append({"messages": turn(task) + turn(row) if n % 2 == 0 else turn(row) + turn(task)})
    return Dataset.from_list(talks)


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
