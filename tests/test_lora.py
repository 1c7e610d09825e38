"""LoRA: zero-init B keeps the pre-trained function, only adapters + head train, fused GPT-2 c_attn and Llama q/v."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ftlab.backbones import load_model
from ftlab.errors import ConfigError
from ftlab.methods.adapters import LoRALayer, add_lora, freeze_for_adapters, lora_layers, merge_lora
from ftlab.methods.context import MethodContext
from ftlab.methods.lora.lora import LoRA
from conftest import compose_config

GPT2_BACKBONE = compose_config(["backbone=tiny-gpt2"]).backbone  # conf/backbone/layout/gpt2.yaml: q, k, v -> c_attn
LLAMA_BACKBONE = OmegaConf.create({  # as conf/backbone/layout/llama.yaml
    "name": "tiny-llama", "layers_path": "model.layers", "head": [],
    "block_linears": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                      "attn_out": "self_attn.o_proj", "ffn1": ["mlp.gate_proj", "mlp.up_proj"], "ffn2": "mlp.down_proj"},
})


@pytest.fixture
def tiny_bert():
    torch.manual_seed(0)
    backbone = compose_config(["backbone=tiny-bert"]).backbone
    return load_model(backbone, num_labels=2).eval(), backbone


def ids(vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))


def train_steps(model: torch.nn.Module, loss_fn, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()


def test_zero_init_b_keeps_outputs_and_hand_counted_trainables(tiny_bert):
    model, backbone = tiny_bert
    before = model(input_ids=ids()).logits
    method = LoRA(r=4, alpha=8)
    method.setup(model, backbone)
    assert torch.equal(model(input_ids=ids()).logits, before)
    # 2 layers x (q, v) x r (in + out) = 2 * 2 * 4 * (32 + 32), plus the classifier 32 * 2 + 2
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 2 * 2 * 4 * 64 + 66
    assert all(".lora_" in n or n.startswith("classifier.") for n in trainable)


def test_merge_equals_adapted_forward(tiny_bert):
    model, backbone = tiny_bert
    add_lora(model, backbone, ["q", "v", "ffn1"], r=3, alpha=6)
    freeze_for_adapters(model, backbone)
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    adapted = model(input_ids=ids()).logits
    merge_lora(model)
    assert not lora_layers(model)
    torch.testing.assert_close(model(input_ids=ids()).logits, adapted, atol=1e-5, rtol=1e-5)


def test_gpt2_fused_c_attn_trains_q_and_v_slices_only():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32)).eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = model(input_ids=ids(100)).logits
    layers = add_lora(model, GPT2_BACKBONE, ["q", "v"], r=2, alpha=4)
    freeze_for_adapters(model, GPT2_BACKBONE)
    assert [l.roles for l in layers] == [("q", "v"), ("q", "v")] and layers[0].slices == [(0, 32), (64, 96)]
    assert torch.equal(model(input_ids=ids(100)).logits, before)
    assert all(".attn.c_attn.lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    train_steps(model, lambda: model(input_ids=ids(100), labels=ids(100)).loss)
    adapted = model(input_ids=ids(100)).logits
    merge_lora(model)
    torch.testing.assert_close(model(input_ids=ids(100)).logits, adapted, atol=1e-5, rtol=1e-5)
    for i in range(2):  # Conv1D stores (in, out): q = columns 0:32, k = 32:64, v = 64:96
        change = (model.transformer.h[i].attn.c_attn.weight - original[f"transformer.h.{i}.attn.c_attn.weight"]).abs()
        assert change[:, 32:64].max() == 0
        assert change[:, :32].max() > 0 and change[:, 64:].max() > 0
    untouched = [n for n in original if "c_attn" not in n]
    assert all(torch.equal(dict(model.named_parameters())[n], original[n]) for n in untouched)


def test_llama_q_and_v_proj_with_grouped_kv():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config).eval()
    before = model(input_ids=ids(100)).logits
    layers = add_lora(model, LLAMA_BACKBONE, ["q", "v"], r=2, alpha=4)
    freeze_for_adapters(model, LLAMA_BACKBONE)
    assert [(l.roles, l.out_features) for l in layers[:2]] == [(("q",), 32), (("v",), 16)]
    assert torch.equal(model(input_ids=ids(100)).logits, before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 8 and all(("q_proj.lora_" in n or "v_proj.lora_" in n) for n in trainable)
    train_steps(model, lambda: model(input_ids=ids(100), labels=ids(100)).loss)
    assert model(input_ids=ids(100)).logits.sub(before).abs().max() > 0


def test_role_listing_several_modules_adapts_each(tiny_bert):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=100))
    layers = add_lora(model, LLAMA_BACKBONE, ["ffn1"], r=2, alpha=4)
    assert [type(l.base).__name__ for l in layers] == ["Linear", "Linear"] and all(isinstance(l, LoRALayer) for l in layers)


def test_t5_adapts_encoder_and_decoder_projections_including_cross_attention():
    backbone = compose_config(["backbone=tiny-t5"]).backbone
    torch.manual_seed(0)
    model = load_model(backbone, num_labels=2).eval()
    reference = copy.deepcopy(model)
    layers = add_lora(model, backbone, ["q", "v"], r=4, alpha=8)
    names = {n for n, m in model.named_modules() if isinstance(m, LoRALayer)}
    assert len(layers) == len(names) == 2 * 2 + 2 * 4  # encoder: q, v; decoder: self- and cross-attention q, v
    assert "transformer.decoder.block.1.layer.1.EncDecAttention.v" in names
    x = torch.randint(1000, 2000, (2, 7))
    x[:, -1] = 102  # the tiny T5's <eos> (MiniLM's [SEP]): the head reads that position
    torch.testing.assert_close(model(input_ids=x).logits, reference(input_ids=x).logits)  # B = 0 at init


def test_bad_inputs_name_the_problem(tiny_bert):
    model, backbone = tiny_bert
    with pytest.raises(ConfigError, match=r"unknown role\(s\) \['query'\].*defines \['q', 'k', 'v'"):
        LoRA(roles=["query"]).setup(copy.deepcopy(model), backbone)
    with pytest.raises(ConfigError, match="rank r=64 exceeds.*32 x 32.*r <= 32"):
        LoRA(r=64).setup(copy.deepcopy(model), backbone)
    with pytest.raises(ConfigError, match="positive integer"):
        LoRA(r=0)
    with pytest.raises(ConfigError, match="init="):
        LoRA(init="xavier")


def test_report_counts_parameters(tiny_bert):
    model, backbone = tiny_bert
    method = LoRA(r=4)
    method.setup(model, backbone)
    report = method.report(MethodContext(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["trainable_params"] == trainable == 2 * 2 * 4 * 64 + 66
    assert report["adapter_params"] == 1024 and report["flops_ratio"] > 1.0
    # the encoder figure leaves the trained classifier head out: only the adapters are trainable there
    assert report["encoder_trainable_params"] == 1024
    assert 0 < report["encoder_trainable_percent"] < report["trainable_percent"]
    assert report["model_nonzero_percent"] <= 100.0
