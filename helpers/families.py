"""Model families: the facts about a family of models that the course depends on, in one place.

Taught in notebooks 01 and 02, which show each GLM-4 fact. A recipe (configs/*.yaml) names its family;
adding a family means one entry here and one recipe file (tests/test_families.py builds a second one).

GLM-4's facts:
- its special tokens, in its order (ids 151329 to 151342 on the 9B);
- three end ids: generation stops on any of them, and pad = eos = ``<|endoftext|>``;
- GLM-4-9B-chat's chat template: ``[gMASK]<sop>`` once, then ``<|role|>`` + newline + content for every
  non-empty message, and no token that closes an assistant turn; its training version adds TRL's
  ``{% generation %}`` markers around each answer and the token that ends it;
- the LoRA target names: GLM-4 fuses gate and up into ``gate_up_proj``; it has no ``gate_proj`` or ``up_proj``,
  so a Llama target list matches nothing there;
- the released weights and where to get them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from helpers import CourseError

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json's model_type
    config_class: str  # transformers' config class; its defaults are the released model's shape (for estimates)
    special_tokens: tuple[str, ...]
    end_tokens: tuple[str, ...]  # generation stops on any of them; the first is also the pad token
    roles: tuple[str, ...]  # a message's roles
    lora_targets: tuple[str, ...]  # every linear layer LoRA can adapt, by its module name
    chat_template: Path  # the chat model's own template
    training_template: Path  # the same, with {% generation %} blocks that hold each answer and the token ending it
    downloads: dict[str, tuple[str, str, float]]  # weights directory -> (Hugging Face id, ModelScope id, GB)
    download_name: str = ""  # `python -m helpers.download NAME`


GLM4 = Family(
    name="glm4",
    model_type="glm",
    config_class="GlmConfig",  # GlmConfig() is GLM-4-9B's shape
    special_tokens=("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"),
    end_tokens=("<|endoftext|>", "<|user|>", "<|observation|>"),  # 151329, 151336, 151338 on the 9B
    roles=("system", "user", "assistant", "observation"),  # observation: a tool's result
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    chat_template=HERE / "glm4_chat_template.jinja",  # GLM-4-9B-chat's own
    training_template=HERE / "glm4_training_template.jinja",
    downloads={"weights/glm-4-9b-hf": ("THUDM/glm-4-9b-hf", "ZhipuAI/glm-4-9b-hf", 19.0),  # base: training needs it
               "weights/glm-4-9b-chat-hf": ("THUDM/glm-4-9b-chat-hf", "ZhipuAI/glm-4-9b-chat-hf", 19.0)},
    download_name="glm4-9b",
)
FAMILIES = {GLM4.name: GLM4}


def family(name: str) -> Family:
    """The family a recipe names (its `family` key)."""
    if name not in FAMILIES:
        raise CourseError(f"unknown model family {name!r}: use one of {', '.join(FAMILIES)}, or add an entry to "
                          "helpers/families.py.")
    return FAMILIES[name]


def has_chat_template(model_dir: Path) -> bool:
    """Whether a model directory's tokenizer carries a chat template (in its own file or in its config)."""
    config = model_dir / "tokenizer_config.json"
    return (model_dir / "chat_template.jinja").is_file() or (
        config.is_file() and "chat_template" in json.loads(config.read_text(encoding="utf-8")))
