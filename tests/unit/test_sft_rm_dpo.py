"""SFT, reward-model and DPO trainers on tiny models: log-probs against a plain computation, losses through
``compute_loss`` against TRL 1.16's trainers on the same batch, configs, and the reward-model reward."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import align.forward as forward_module
from align.chat_data import collate_preferences, collate_sft, tokenize_preferences, tokenize_sft
from align.config import ConfigError, parse_config
from align.forward import logprob_sums, selected_logits
from align.losses import bradley_terry_loss
from align.trainers.dpo import DPOConfig, DPOTrainer
from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer, pair_rewards
from align.trainers.sft import SFTConfig, SFTTrainer
from tests.support import (
    bare_trl_trainer,
    reset_accelerate_state,
    save_tiny_model,
    tiny_causal_lm,
    tiny_llama_config,
    tiny_sequence_classifier,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), atol=atol, rtol=rtol
    )


def pairs(n=4):
    out = []
    for i in range(n):
        out.append(
            {
                "prompt": [{"role": "user", "content": f"What is {i} + {i * 3}?" + " Think." * i}],
                "chosen": [{"role": "assistant", "content": f"{i} + {3 * i} = {4 * i}."}],
                "rejected": [{"role": "assistant", "content": f"It is {4 * i + 1}, I believe" + "!" * i}],
            }
        )
    return out


def chats(n=6):
    return [
        {
            "messages": [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": " ".join(str(k) for k in range(1, i + 2))},
            ]
        }
        for i in range(n)
    ]


def args(tmp_path, *extra):
    return ["--output_dir", str(tmp_path / "out"), "--disable_progress_bar", "true", *extra]


# --- per-sequence log-probs ----------------------------------------------------------------------------


def reference_logprob(model, ids: list[int], start: int) -> float:
    """Straightforward: one unpadded row, full log-softmax, sum over the tokens from ``start``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))


@pytest.mark.parametrize("side", ["right", "left"])
def test_logprob_sums_equal_plain_computation(tiny_tokenizer, tiny_model, side):
    rows, _ = tokenize_preferences(pairs(), tiny_tokenizer)
    seqs = [(r["prompt_ids"] + r["chosen_ids"], len(r["prompt_ids"])) for r in rows]
    seqs += [(r["prompt_ids"] + r["rejected_ids"], len(r["prompt_ids"])) for r in rows]
    T = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), T), tiny_tokenizer.pad_token_id)
    attention = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for b, (s, p) in enumerate(seqs):
        off = 0 if side == "right" else T - len(s)
        ids[b, off : off + len(s)] = torch.tensor(s)
        attention[b, off : off + len(s)] = 1
        mask[b, off + p : off + len(s)] = 1
    with torch.no_grad():
        logps, counts = logprob_sums(tiny_model, ids, attention, mask)
    expected = [reference_logprob(tiny_model, s, p) for s, p in seqs]
    close(logps, expected, atol=2e-4)
    assert counts.tolist() == [len(s) - p for s, p in seqs]


def test_selected_logits_without_boolean_logits_to_keep(tiny_tokenizer, tiny_model, monkeypatch):
    rows, _ = tokenize_sft(chats(), tiny_tokenizer)
    b = collate_sft(rows, tiny_tokenizer.pad_token_id)
    keep = forward_module.label_positions(b["mask"])
    with torch.no_grad():
        fast = selected_logits(tiny_model, b["input_ids"], b["attention_mask"], keep)
        monkeypatch.setattr(forward_module, "_takes_bool_logits_to_keep", lambda cls: False)
        slow = selected_logits(tiny_model, b["input_ids"], b["attention_mask"], keep)
        full = tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[keep]
    assert fast.shape == (int(keep.sum()), tiny_model.config.vocab_size)
    close(fast, full, atol=1e-5)
    close(slow, full, atol=1e-5)


# --- SFT ---------------------------------------------------------------------------------------------


def test_sft_mask_matches_huggingface_generation_markers(tiny_tokenizer):
    """Our prefix-rendering mask equals transformers' return_assistant_tokens_mask under a ChatML template
    with {% generation %} markers around each assistant turn's content and end token."""
    marked = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    msgs = chats(4)[3]["messages"] + [
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "1 2"},
    ]
    out = tiny_tokenizer.apply_chat_template(
        msgs, chat_template=marked, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    rows, _ = tokenize_sft([{"messages": msgs}], tiny_tokenizer)
    assert rows[0]["input_ids"] == list(out["input_ids"])
    assert rows[0]["mask"] == list(out["assistant_masks"])


def test_sft_compute_loss_is_token_mean_cross_entropy(tmp_path, tiny_tokenizer):
    model = tiny_causal_lm(tiny_tokenizer)
    cfg = parse_config(SFTConfig, args(tmp_path, "--max_steps", "1"))
    trainer = SFTTrainer(cfg, model, tiny_tokenizer, chats())
    batch = collate_sft(trainer.train_rows, tiny_tokenizer.pad_token_id)
    loss, metrics = trainer.compute_loss(batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["input_ids"][:, 1:].masked_fill(batch["mask"][:, 1:] == 0, -100)
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    close(loss, expected)
    assert trainer.num_items(batch) == int((labels != -100).sum()) == int(metrics["sft/tokens"])


def test_sft_loss_matches_trl_sft_trainer(tmp_path, tiny_tokenizer):
    from trl import SFTTrainer as TRLSFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_causal_lm(tiny_tokenizer)
    cfg = parse_config(SFTConfig, args(tmp_path, "--max_steps", "1"))
    ours = SFTTrainer(cfg, model, tiny_tokenizer, chats())
    batch = collate_sft(ours.train_rows, tiny_tokenizer.pad_token_id)
    loss, _ = ours.compute_loss(batch)

    trl_model = copy.deepcopy(model).train()
    add_fused_lm_head(trl_model, outputs=("log_probs", "entropy", "is_top1"))
    trl = bare_trl_trainer(
        TRLSFTTrainer,
        trl_model,
        args=SimpleNamespace(loss_type="nll", average_tokens_across_devices=False),
        aux_loss_enabled=False,
        compute_loss_func=None,
        label_smoother=None,
    )
    labels = batch["input_ids"].masked_fill(batch["mask"] == 0, -100)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    close(loss, trl.compute_loss(trl_model, inputs))


# --- reward model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("margin", "center"), [(False, 0.0), (True, 0.05)])
def test_reward_compute_loss_matches_trl_reward_trainer(tmp_path, tiny_tokenizer, margin, center):
    from trl import RewardTrainer as TRLRewardTrainer

    model = tiny_sequence_classifier(tiny_tokenizer).train()
    data = [dict(p, margin=0.3 * i) for i, p in enumerate(pairs())]
    cfg = parse_config(
        RewardModelConfig,
        args(
            tmp_path,
            "--max_steps",
            "1",
            "--use_margin",
            str(margin),
            "--center_rewards_coefficient",
            str(center),
        ),
    )
    ours = RewardModelTrainer(cfg, model, tiny_tokenizer, data)
    batch = collate_preferences(ours.train_rows, tiny_tokenizer.pad_token_id)
    loss, metrics = ours.compute_loss(batch)

    # TRL's RewardTrainer takes whole sequences (prompt + completion) as chosen_ids / rejected_ids.
    from trl.trainer.reward_trainer import DataCollatorForPreference

    trl_rows = [
        {"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
        | ({"margin": r["margin"]} if margin else {})
        for r in ours.train_rows
    ]
    inputs = DataCollatorForPreference(pad_token_id=tiny_tokenizer.pad_token_id)(trl_rows)
    assert torch.equal(inputs["input_ids"], batch["input_ids"])
    trl = bare_trl_trainer(
        TRLRewardTrainer, model, args=SimpleNamespace(center_rewards_coefficient=center or None)
    )
    close(loss, trl.compute_loss(model, inputs))
    assert 0.0 <= float(metrics["reward/accuracy"]) <= 1.0


def _rm_grads(model, batch, share_prompt):
    model.zero_grad()
    chosen, rejected = pair_rewards(model, batch, share_prompt=share_prompt)
    # A loss that weighs every reward differently, so that a reward swapped between rows would show.
    w = torch.arange(1, 2 * len(chosen) + 1, dtype=torch.float32)
    (torch.cat([chosen, rejected]) * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return chosen.detach(), rejected.detach(), grads


@pytest.mark.parametrize(
    ("lora", "attn", "checkpointing"),
    [(False, "sdpa", False), (True, "sdpa", False), (False, "eager", False), (False, "sdpa", True)],
)
def test_reward_shared_prompt_equals_plain_forward(tiny_tokenizer, monkeypatch, lora, attn, checkpointing):
    """Each pair as one row (prompt once, completions masked from each other): the rewards and every gradient
    equal the plain forward's, with prompts of different lengths (left padding) and completion pairs of
    different lengths (right padding), for a plain classifier and a LoRA (SEQ_CLS) one, under sdpa and
    eager attention, with and without activation checkpointing."""
    import align.trainers.reward_model as rm
    from align.models import apply_lora

    model = tiny_sequence_classifier(tiny_tokenizer).train()
    model.config._attn_implementation = attn
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model = apply_lora(model, r=4, dropout=0.0, task_type="SEQ_CLS")
        with torch.no_grad():  # LoRA's B starts at zero, which would leave A without gradient
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    rows, _ = tokenize_preferences(pairs(5), tiny_tokenizer)
    batch = collate_preferences(rows, tiny_tokenizer.pad_token_id)
    assert (batch["shared_branch"][:, 0] == -1).any() and (batch["shared_branch"][:, -1] == -1).any()
    assert len({len(r["prompt_ids"]) for r in rows}) > 1

    shared = []
    split = rm._shared_prompt_rewards
    monkeypatch.setattr(rm, "_shared_prompt_rewards", lambda *a: shared.append(split(*a)) or shared[-1])
    c0, r0, g0 = _rm_grads(model, batch, share_prompt=False)
    assert shared == []
    c1, r1, g1 = _rm_grads(model, batch, share_prompt=True)
    assert len(shared) == 1 and shared[0] is not None  # the shared forward ran
    close(c1, c0)
    close(r1, r0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    assert any("score" in n for n in g0) and (not lora or any("lora_A" in n for n in g0))
    for n in g0:  # float32 sums in a different order: tolerance relative to the gradient's scale
        close(g1[n], g0[n], atol=1e-5 * max(1.0, float(g0[n].abs().max())), rtol=1e-4)


def test_reward_shared_prompt_falls_back_to_plain_forward(tiny_tokenizer):
    """The plain forward where the shared one does not apply: a completion of padding alone (the plain head
    reads the prompt's last token then), an attention without custom masks, a model without a score head."""
    import align.trainers.reward_model as rm

    model = tiny_sequence_classifier(tiny_tokenizer).train()
    rows, _ = tokenize_preferences(pairs(3), tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    assert rm._shared_prompt_rewards(model, collate_preferences(rows, pad)) is not None
    odd = [dict(rows[0], rejected_ids=[pad]), *rows[1:]]
    batch = collate_preferences(odd, pad)
    assert rm._shared_prompt_rewards(model, batch) is None
    close(torch.cat(pair_rewards(model, batch, share_prompt=True)), torch.cat(pair_rewards(model, batch)))
    assert rm._shared_prompt_rewards(tiny_causal_lm(tiny_tokenizer), batch) is None  # no score head
    model.config._attn_implementation = "flash_attention_2"
    assert rm._shared_prompt_rewards(model, collate_preferences(rows, pad)) is None


@pytest.mark.parametrize(
    ("lora", "attn", "checkpointing"),
    [(False, "sdpa", False), (True, "sdpa", False), (False, "eager", False), (False, "sdpa", True)],
)
def test_dpo_shared_prompt_logprobs_equal_plain_forward(
    tiny_tokenizer, monkeypatch, lora, attn, checkpointing
):
    """One row per pair (prompt once, completions masked from each other): the summed log-probs, token counts
    and every gradient equal those of the 2B whole sequences (left- and right-padded prompts and completions,
    plain and LoRA policies, sdpa and eager attention, with and without activation checkpointing)."""
    import align.trainers.dpo as dpo
    from align.models import apply_lora

    model = tiny_causal_lm(tiny_tokenizer).train()
    model.config._attn_implementation = attn
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model = apply_lora(model, r=4, dropout=0.0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    rows, _ = tokenize_preferences(pairs(5), tiny_tokenizer)
    rows[1] = dict(rows[1], rejected_ids=rows[1]["rejected_ids"][:1])  # a one-token completion
    batch = collate_preferences(rows, tiny_tokenizer.pad_token_id)
    shared = []
    split = dpo.pair_logprob_sums
    monkeypatch.setattr(dpo, "pair_logprob_sums", lambda *a: shared.append(split(*a)) or shared[-1])

    def run(share):
        model.zero_grad()
        logps, counts = dpo.pair_logprobs(model, batch, share_prompt=share)
        (logps * torch.arange(1, len(logps) + 1)).sum().backward()  # a different weight per sequence
        return (
            logps.detach(),
            counts,
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )

    l0, n0, g0 = run(False)
    assert shared == []
    l1, n1, g1 = run(True)
    assert len(shared) == 1 and shared[0] is not None  # the shared forward ran
    close(l1, l0)
    assert torch.equal(n1, n0) and n0.tolist() == [len(r["chosen_ids"]) for r in rows] + [
        len(r["rejected_ids"]) for r in rows
    ]
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:  # float32 sums in a different order: tolerance relative to the gradient's scale
        close(g1[n], g0[n], atol=1e-5 * max(1.0, float(g0[n].abs().max())), rtol=1e-4)


def test_dpo_trainer_share_prompt_loss_and_fallback(tmp_path, tiny_tokenizer):
    """The trainer's loss (policy and frozen reference) is the same with and without share_prompt; an empty
    prompt or an attention without custom masks falls back to whole sequences."""
    from align.forward import pair_logprob_sums

    losses = []
    for share in (True, False):
        cfg = parse_config(DPOConfig, args(tmp_path / str(share), "--share_prompt", str(share)))
        trainer = DPOTrainer(cfg, tiny_causal_lm(tiny_tokenizer).train(), tiny_tokenizer, pairs())
        assert trainer.share_prompt is share
        loss, _ = trainer.compute_loss(collate_preferences(trainer.train_rows, tiny_tokenizer.pad_token_id))
        losses.append(loss.detach())
    close(losses[0], losses[1])

    model = tiny_causal_lm(tiny_tokenizer)
    rows, _ = tokenize_preferences(pairs(3), tiny_tokenizer)
    empty = collate_preferences([dict(rows[0], prompt_ids=[]), *rows[1:]], tiny_tokenizer.pad_token_id)
    assert pair_logprob_sums(model, empty) is None
    model.config._attn_implementation = "flash_attention_2"
    assert pair_logprob_sums(model, collate_preferences(rows, tiny_tokenizer.pad_token_id)) is None


@pytest.mark.parametrize("share", [True, False])
def test_reward_trainer_share_prompt_flag(tmp_path, tiny_tokenizer, share):
    model = tiny_sequence_classifier(tiny_tokenizer).train()
    cfg = parse_config(RewardModelConfig, args(tmp_path, "--max_steps", "1", "--share_prompt", str(share)))
    trainer = RewardModelTrainer(cfg, model, tiny_tokenizer, pairs())
    assert trainer.share_prompt is share
    batch = collate_preferences(trainer.train_rows, tiny_tokenizer.pad_token_id)
    loss, _ = trainer.compute_loss(batch)
    plain, _ = bradley_terry_loss(*pair_rewards(model, batch))
    close(loss, plain)


# --- DPO ---------------------------------------------------------------------------------------------


def _trl_dpo_loss(model, ref, rows, pad_id, loss_type, beta, label_smoothing=0.0):
    from trl import DPOTrainer as TRLDPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref)
    trainer = bare_trl_trainer(
        TRLDPOTrainer,
        model,
        ref_model=ref,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=False,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    inputs = DataCollatorForPreference(pad_token_id=pad_id)(
        [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows]
    )
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}, inputs


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_compute_loss_matches_trl_dpo_trainer(tmp_path, tiny_tokenizer, loss_type):
    policy = tiny_causal_lm(tiny_tokenizer, seed=1).train()
    reference = tiny_causal_lm(tiny_tokenizer, seed=2)  # a different reference, so the log-ratios are not 0
    beta = 0.3
    cfg = parse_config(
        DPOConfig, args(tmp_path, "--max_steps", "1", "--beta", str(beta), "--loss_type", loss_type)
    )
    ours = DPOTrainer(cfg, policy, tiny_tokenizer, pairs(), ref_model=copy.deepcopy(reference))
    batch = collate_preferences(ours.train_rows, tiny_tokenizer.pad_token_id)
    loss, metrics = ours.compute_loss(batch)

    trl_loss, trl_metrics, inputs = _trl_dpo_loss(
        copy.deepcopy(policy), copy.deepcopy(reference).eval(), ours.train_rows, tiny_tokenizer.pad_token_id,
        loss_type, beta,
    )  # fmt: skip
    assert torch.equal(inputs["input_ids"], batch["input_ids"])  # the same 2B rows
    close(loss, trl_loss, atol=1e-5)
    for key, trl_key in [("rewards/chosen",) * 2, ("rewards/rejected",) * 2, ("rewards/margins",) * 2,
                         ("rewards/accuracy", "rewards/accuracies")]:  # fmt: skip
        close(metrics[key], trl_metrics[trl_key], atol=1e-5)
    # the loss is not trivial: the two models disagree
    assert abs(float(metrics["rewards/margins"])) > 1e-3


def test_dpo_label_smoothing_changes_loss_as_cdpo(tmp_path, tiny_tokenizer):
    policy = tiny_causal_lm(tiny_tokenizer, seed=1).train()
    reference = tiny_causal_lm(tiny_tokenizer, seed=2)
    cfg = parse_config(
        DPOConfig, args(tmp_path, "--max_steps", "1", "--label_smoothing", "0.2", "--beta", "0.5")
    )
    ours = DPOTrainer(cfg, policy, tiny_tokenizer, pairs(), ref_model=reference)
    batch = collate_preferences(ours.train_rows, tiny_tokenizer.pad_token_id)
    loss, m = ours.compute_loss(batch)
    with torch.no_grad():
        logps, _ = logprob_sums(policy, batch["input_ids"], batch["attention_mask"], batch["mask"])
        ref, _ = logprob_sums(reference, batch["input_ids"], batch["attention_mask"], batch["mask"])
    c, r = logps.chunk(2)
    rc, rr = ref.chunk(2)
    h = 0.5 * ((c - rc) - (r - rr))
    close(loss, (-0.8 * F.logsigmoid(h) - 0.2 * F.logsigmoid(-h)).mean())


def test_dpo_precomputed_reference_equals_live_reference(tmp_path, tiny_tokenizer):
    policy = tiny_causal_lm(tiny_tokenizer, seed=1)
    live = DPOTrainer(
        parse_config(DPOConfig, args(tmp_path / "a", "--max_steps", "1")),
        copy.deepcopy(policy),
        tiny_tokenizer,
        pairs(),
    )
    reset_accelerate_state()
    pre = DPOTrainer(
        parse_config(
            DPOConfig, args(tmp_path / "b", "--max_steps", "1", "--precompute_ref_logprobs", "true")
        ),
        copy.deepcopy(policy),
        tiny_tokenizer,
        pairs(),
    )
    assert pre.ref_model is None and live.ref_model is not None
    batch_live = collate_preferences(live.train_rows, tiny_tokenizer.pad_token_id)
    batch_pre = collate_preferences(pre.train_rows, tiny_tokenizer.pad_token_id)
    assert "ref_chosen_logps" in batch_pre
    close(torch.stack(live.reference_logprobs(batch_live)), torch.stack(pre.reference_logprobs(batch_pre)))


def _lm_with_dropout(tokenizer, kind, p=0.3):
    """A tiny causal LM with dropout ``p``, in train mode. Llama's attention dropout is a float its attention
    reads in train mode (no ``nn.Dropout``); GPT-2's are ``nn.Dropout`` modules (embeddings, attention,
    residuals), the kind TRL's ``disable_dropout_in_model`` turns off."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    if kind == "llama":
        config = tiny_llama_config(tokenizer, attention_dropout=p)
        build = LlamaForCausalLM
    else:
        ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, **ids,
        )  # fmt: skip
        build = GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build(config).train()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("disable", [True, False])
def test_dpo_disable_dropout_makes_step_0_margins_exactly_zero(tmp_path, tiny_tokenizer, kind, disable):
    """The reference (a frozen copy of the policy) runs in eval mode and the policy in train mode: with
    dropout off (the default, as TRL) the log-ratios are exactly 0 at step 0, so the margins are too and the
    loss is log 2; with dropout left on they are noise."""
    cfg = parse_config(DPOConfig, args(tmp_path, "--max_steps", "1", "--disable_dropout", str(disable)))
    assert DPOConfig().disable_dropout is True
    trainer = DPOTrainer(cfg, _lm_with_dropout(tiny_tokenizer, kind), tiny_tokenizer, pairs())
    assert trainer.model.training and trainer.ref_model is not None
    batch = collate_preferences(trainer.train_rows, tiny_tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss, metrics = trainer.compute_loss(batch)
    if disable:
        assert float(metrics["rewards/margins"]) == 0.0
        assert float(metrics["rewards/chosen"]) == 0.0 and float(metrics["rewards/rejected"]) == 0.0
        assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(float(metrics["rewards/margins"])) > 1e-4


def test_reward_model_disable_dropout_scores_as_in_eval_mode(tmp_path, tiny_tokenizer):
    """With dropout off (the default) the reward model trains on the rewards it gives when scoring (eval
    mode)."""
    from transformers import LlamaForSequenceClassification

    config = tiny_llama_config(tiny_tokenizer, num_labels=1, attention_dropout=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config).train()
    cfg = parse_config(RewardModelConfig, args(tmp_path, "--max_steps", "1"))
    assert cfg.disable_dropout is True
    trainer = RewardModelTrainer(cfg, model, tiny_tokenizer, pairs())
    batch = collate_preferences(trainer.train_rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        train_mode = torch.stack(pair_rewards(model, batch))
        eval_mode = torch.stack(pair_rewards(model.eval(), batch))
    assert torch.equal(train_mode, eval_mode)


# --- configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "flags", "match"),
    [
        (DPOConfig, ["--beta", "0"], r"beta must be in \(0.0, inf\)"),
        (DPOConfig, ["--label_smoothing", "0.5"], r"label_smoothing must be in \[0.0, 0.5\)"),
        (
            DPOConfig,
            ["--loss_type", "ipo", "--label_smoothing", "0.1"],
            "label_smoothing applies to loss_type",
        ),
        (DPOConfig, ["--truncation", "middle"], "truncation must be one of"),
        (SFTConfig, ["--max_length", "1"], r"max_length must be in \[2, inf\)"),
        (RewardModelConfig, ["--center_rewards_coefficient", "-1"], "center_rewards_coefficient must be in"),
    ],
)
def test_config_errors_name_the_field(cls, flags, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(cls, flags)


# --- the reward-model reward -------------------------------------------------------------------------


def test_reward_model_reward_scores_like_training(tmp_path, tiny_tokenizer):
    from align.rewards.reward_model import make_reward_model_reward, reward_model_from_name
    from align.trainers.reward_model import pair_rewards

    path = save_tiny_model(tmp_path / "rm", tokenizer=tiny_tokenizer, kind="sequence_classifier")
    reward = make_reward_model_reward(path, batch_size=3, name="rm")
    data = pairs(5)
    prompts = [p["prompt"] for p in data]
    completions = [p["chosen"] for p in data]  # TRL passes assistant messages for conversational prompts
    scores = reward(prompts, completions)
    assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
    # the same numbers as the training-time forward on the tokenised pairs
    rows, _ = tokenize_preferences(data, tiny_tokenizer)
    batch = collate_preferences(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, _ = pair_rewards(reward.model, batch)
    close(scores, chosen, atol=1e-5)
    # completions as plain strings give the same scores; batch size does not matter
    assert reward(prompts, [c[0]["content"] for c in completions]) == pytest.approx(scores, abs=1e-5)
    assert make_reward_model_reward(path, batch_size=1)(prompts, completions) == pytest.approx(
        scores, abs=1e-5
    )
    assert reward.__name__ == "rm" and reward_model_from_name(str(path)).__name__ == "reward_model"
    with pytest.raises(ValueError, match="needs a path"):
        reward_model_from_name("")
    with pytest.raises(FileNotFoundError):
        make_reward_model_reward(tmp_path / "missing")


@pytest.mark.parametrize("lora", [False, True])
def test_saved_reward_model_scores_through_get_reward_funcs(tmp_path, tiny_tokenizer, lora):
    """``reward_model:<path>`` in a GRPO/PPO config: full weights, or a LoRA adapter with its score head."""
    from align.models import apply_lora, load_sequence_classifier, save_pretrained
    from align.rewards import get_reward_funcs
    from align.trainers.reward_model import pair_rewards

    base_dir = save_tiny_model(tmp_path / "base", tokenizer=tiny_tokenizer, kind="sequence_classifier")
    model = load_sequence_classifier(base_dir)  # the adapter records its base model's path
    if lora:
        model = apply_lora(model, r=4, task_type="SEQ_CLS")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # as if trained: the adapter and the head both change the scores
            for name, p in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    p.add_(0.5 * torch.randn(p.shape, generator=g))
    path = save_pretrained(model, tiny_tokenizer, tmp_path / "rm")
    assert (path / "adapter_config.json").is_file() == lora
    (reward,) = get_reward_funcs([f"reward_model:{path}"])
    assert reward.__name__ == "reward_model"
    data = pairs(4)
    scores = reward([p["prompt"] for p in data], [p["chosen"] for p in data])
    rows, _ = tokenize_preferences(data, tiny_tokenizer)
    with torch.no_grad():
        expected, _ = pair_rewards(model.eval(), collate_preferences(rows, tiny_tokenizer.pad_token_id))
    close(scores, expected, atol=1e-5)
    if lora:  # the adapter matters: the bare backbone with a fresh head scores differently
        base = load_sequence_classifier(base_dir).eval()
        with torch.no_grad():
            plain, _ = pair_rewards(base, collate_preferences(rows, tiny_tokenizer.pad_token_id))
        assert not torch.allclose(plain, expected, atol=1e-3)
    with pytest.raises(ValueError, match="'reward_model' needs a path"):
        get_reward_funcs(["reward_model"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_reward_funcs([f"reward_model:{tmp_path / 'missing'}"])


@pytest.mark.parametrize("pipeline", ["sft", "reward_model", "dpo"])
def test_shipped_yaml_configs_parse(pipeline):
    from align.data import repo_root

    cls = {"sft": SFTConfig, "reward_model": RewardModelConfig, "dpo": DPOConfig}[pipeline]
    files = sorted((repo_root() / "recipes" / "configs" / pipeline).glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        cfg = parse_config(cls, ["--config", str(path)])
        assert cfg.output_dir.startswith(f"outputs/{pipeline}/")


def test_trainers_use_the_fused_adamw_kernel(tmp_path, tiny_tokenizer):
    cfg = parse_config(SFTConfig, args(tmp_path, "--max_steps", "1", "--weight_decay", "0.1"))
    trainer = SFTTrainer(cfg, tiny_causal_lm(tiny_tokenizer), tiny_tokenizer, chats())
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # no decay on norms, as the base
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(trainer.model.parameters()))


# --- bad input through the trainers: counted in data/skipped/*, or an error naming the file ------------


@pytest.mark.parametrize("pipeline", ["sft", "reward_model", "dpo"])
def test_trainers_count_bad_rows_and_name_the_file_in_errors(tmp_path, tiny_tokenizer, pipeline):
    import json

    from align.chat_data import load_rows

    if pipeline == "sft":
        cls, trainer_cls, model = SFTConfig, SFTTrainer, tiny_causal_lm
        good = [
            {"prompt": f"Count to {i}.", "completion": " ".join(map(str, range(i + 2)))} for i in range(4)
        ]
        bad = [
            {"prompt": "Hi", "completion": ""},
            {"prompt": "Hi"},
            {"prompt": "Hi", "completion": "w " * 90},
        ]
        expected = {"data/skipped/empty_completion": 2.0, "data/skipped/too_long": 1.0}
        no_column = {"answer": "x"}
    else:
        cls, trainer_cls = (
            (RewardModelConfig, RewardModelTrainer) if pipeline == "reward_model" else (DPOConfig, DPOTrainer)
        )
        model = tiny_sequence_classifier if pipeline == "reward_model" else tiny_causal_lm
        good = [
            {"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
            for i in range(4)
        ]
        bad = [
            {"prompt": "Q", "chosen": "", "rejected": "x"},
            {"prompt": "Q", "rejected": "x"},
            {"prompt": "Q", "chosen": "same", "rejected": "same"},
            {"prompt": "Q", "chosen": "w " * 90, "rejected": "x"},
        ]
        expected = {
            "data/skipped/empty_completion": 2.0,
            "data/skipped/identical_pair": 1.0,
            "data/skipped/too_long": 1.0,
        }
        no_column = {"prompt": "x", "answer": "y"}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    flags = ["--max_steps", "1", "--max_length", "64", "--dataset_name", str(path)]
    cfg = parse_config(cls, args(tmp_path / "a", *flags, "--truncation", "skip"))
    trainer = trainer_cls(cfg, model(tiny_tokenizer), tiny_tokenizer, load_rows(path))
    assert len(trainer.train_rows) == 4 and trainer.data_metrics["data/kept"] == 4.0
    assert {k: v for k, v in trainer.data_metrics.items() if "skipped" in k} == expected
    reset_accelerate_state()
    cfg = parse_config(cls, args(tmp_path / "b", *flags, "--truncation", "error"))
    with pytest.raises(
        ValueError, match=rf"train .*\({path}\): row {len(good + bad) - 1}: .*longer than max_length=64"
    ):
        trainer_cls(cfg, model(tiny_tokenizer), tiny_tokenizer, load_rows(path))
    path.write_text(json.dumps(no_column) + "\n")
    with pytest.raises(ValueError, match=rf"\({path}\): .*\['answer'.*expected"):
        trainer_cls(cfg, model(tiny_tokenizer), tiny_tokenizer, load_rows(path))
