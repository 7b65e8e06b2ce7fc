"""The embedded SmolLM2-135M-Instruct: converted once from its GGUF file, then loaded from the cache."""

import json
import time

import torch

from align import models


def test_cache_is_complete_and_reloads_fast(embedded_model_dir):
    marker = json.loads((embedded_model_dir / "align_embedded.json").read_text())
    assert marker["source_size"] > 50_000_000 and marker["transformers_version"]
    assert (embedded_model_dir / "model.safetensors").is_file()
    assert not list(embedded_model_dir.glob("*.bin"))
    start = time.perf_counter()
    assert models.resolve_model_path(None) == str(embedded_model_dir)
    models.load_tokenizer()
    models.load_causal_lm()
    assert time.perf_counter() - start < 5.0


def test_architecture(embedded_model_dir):
    model = models.load_causal_lm("embedded")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert 134_000_000 < models.count_parameters(model)[1] < 135_000_000


def test_chat_template_and_greedy_reply(embedded_model_dir):
    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    model = models.load_causal_lm(models.EMBEDDED_MODEL)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer([prompt], return_tensors="pt")
    max_new_tokens = 16
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    completion = output[0, inputs["input_ids"].shape[1] :]
    assert (
        completion[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") or len(completion) == max_new_tokens
    )
    reply = tokenizer.decode(completion, skip_special_tokens=True).strip()
    assert reply, "empty reply"


def test_reward_model_head_on_the_embedded_backbone(embedded_model_dir):
    reward_model = models.load_sequence_classifier()
    assert type(reward_model).__name__ == "LlamaForSequenceClassification"
    assert reward_model.config.pad_token_id == models.load_tokenizer().pad_token_id == 2
