"""Recipes: every setting of a run, as a YAML file in configs/, in the libraries' own field names.

Taught in notebook 04, which writes the same values as literals, and notebook 00 (which recipe runs here).
A recipe file is plain data: TRL's ``ModelConfig`` fields (the model and its LoRA), TRL's ``SFTConfig`` fields
(training), and the course's few script arguments (family, data, tracking, max_new_tokens, chat_model_path).
``python -m helpers.train --config configs/tiny.yaml`` parses it with TRL's own parser; this module only reads
it, for the notebooks and the checks. Which recipe fits a machine is decided in ``helpers.machine``.

    read_recipe("tiny")                                  # configs/tiny.yaml
    read_recipe("configs/tiny.yaml", learning_rate=1e-3)  # with a setting changed
    python -m helpers.machine [auto | NAME ...]          # print recipes, their memory estimate, and what fits here
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from helpers import REPO_ROOT, CourseError, resolve, shown

CONFIGS = REPO_ROOT / "configs"
RECIPE_FILE = "recipe.yaml"  # written beside an adapter or a merged model: the recipe that made it


@dataclass
class CourseArguments:
    """The course's script arguments: what a recipe holds beside TRL's SFTConfig and ModelConfig fields."""

    family: str = field(default="glm4", metadata={"help": "model family (helpers/families.py): tokens and templates"})
    data: str = field(default="sample", metadata={"help": "sample, a .json/.jsonl file, or a hub id"})
    identity: bool | None = field(default=None, metadata={
        "help": "join data/identity_zh.json to the training rows (default: with the course's sample only)"})
    identity_share: float | None = field(default=None, metadata={
        "help": "the identity examples' share of the training rows (each row alone and in a conversation), sampled or "
        "repeated to reach it (default: each row once, alone and in a conversation)"})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop after this many evaluations without a lower eval loss (transformers' EarlyStoppingCallback)"})
    tracking: str = field(default="auto", metadata={"help": "SwanLab: auto, cloud, local, offline or disabled"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint in output_dir"})
    max_new_tokens: int = field(default=512, metadata={"help": "the longest answer when chatting and measuring"})
    chat_model_path: str | None = field(default=None, metadata={"help": "the matching chat model, if there is one"})
    export_for_trl: str | None = field(default=None, metadata={
        "help": "write this recipe as `trl sft` reads it (TRL's keys, its rows as messages JSONL) to this folder, and stop"})


def recipe_names() -> list[str]:
    """The recipes the course ships: configs/*.yaml (not the accelerate configs in configs/accelerate/)."""
    return sorted(path.stem for path in CONFIGS.glob("*.yaml"))


class Recipe(dict):
    """A recipe's settings, as its file writes them (the libraries' field names), with its name and a few paths."""

    def __init__(self, name: str, values: dict):
        super().__init__(values)
        self.name = name

    def path(self, key: str) -> Path:
        """A path setting (model_name_or_path, output_dir, chat_template_path ...), from the repository root."""
        return resolve(self[key])

    @property
    def model_dir(self) -> Path:
        return resolve(self["model_name_or_path"])

    @property
    def chat_model_dir(self) -> Path | None:
        return resolve(self["chat_model_path"]) if self.get("chat_model_path") else None

    @property
    def output_path(self) -> Path:
        return resolve(self["output_dir"])

    @property
    def device(self) -> str:
        return "cpu" if self.get("use_cpu") else "cuda"

    def weights_present(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    def replace(self, **changes) -> Recipe:
        """A copy with some settings changed (the libraries' field names, as in the file)."""
        return Recipe(self.name, {**self, **changes})

    def describe(self) -> str:
        import yaml

        return yaml.safe_dump(dict(self), allow_unicode=True, sort_keys=False, width=120).rstrip()

    def save(self, directory) -> Path:
        """Write recipe.yaml into ``directory`` (an adapter or merged model): what made it, and how to load it."""
        path = resolve(directory) / RECIPE_FILE
        path.write_text(f"# recipe {self.name}\n{self.describe()}\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory) -> Recipe | None:
        """The recipe saved in ``directory`` by ``save``, or None."""
        path = resolve(directory) / RECIPE_FILE
        if not path.is_file():
            return None
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]  # "# recipe NAME", as save writes it
        return read_recipe(path, name=first.removeprefix("# recipe ").strip() or None)


def read_recipe(name_or_path="tiny", name: str | None = None, **changes) -> Recipe:
    """A recipe by name (configs/NAME.yaml) or path, with ``changes`` applied."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if str(name_or_path) not in recipe_names():
            raise CourseError(f"unknown recipe {name_or_path!r}: choose one of {', '.join(['auto', *recipe_names()])}, "
                              "or give a .yaml file.")
        path = CONFIGS / f"{name_or_path}.yaml"
    path = resolve(path)
    if not path.is_file():
        raise CourseError(f"{shown(path)} not found: check the recipe's path.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise CourseError(f"{shown(path)} must be a YAML mapping of settings, such as `max_steps: 50`.")
    recipe = Recipe(name or path.stem, values)
    return recipe.replace(**changes) if changes else recipe
