"""GLM-4 facts the course depends on, in one place. Notebooks 01 and 02 show each of them.

- GLM-4's special tokens, in its order (ids 151329 to 151342 on the 9B);
- the three end ids: generation stops on any of them, and pad = eos = ``<|endoftext|>``;
- GLM-4-9B-chat's chat template: ``[gMASK]<sop>`` once, then ``<|role|>`` + newline + content
  for every non-empty message, and no token that closes an assistant turn;
- the LoRA target names: GLM-4 fuses gate and up into ``gate_up_proj``; it has no ``gate_proj``
  or ``up_proj``, so a Llama target list matches nothing there.
"""

from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
)
ROLES = ("system", "user", "assistant", "observation")  # a message's role; observation: a tool's result
END_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")  # 151329, 151336, 151338 on the 9B
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
TEMPLATE_FILE = Path(__file__).with_name("glm4_chat_template.jinja")  # GLM-4-9B-chat's own template


def has_chat_template(model_dir: Path) -> bool:
    """Whether a model directory's tokenizer carries a chat template (in its own file or in its config)."""
    import json

    config = model_dir / "tokenizer_config.json"
    return (model_dir / "chat_template.jinja").is_file() or (
        config.is_file() and "chat_template" in json.loads(config.read_text(encoding="utf-8")))
