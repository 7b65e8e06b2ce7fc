"""Multi-turn rollouts: the ids trained on are the ids sampled, observations are masked, limits truncate."""

import pytest
import torch

from align.generation import SamplingParams, build_rollout, eos_token_ids
from align.losses import ppo_clip_loss
from align.multiturn import ChatDelta, EpisodeLimits, episodes_to_rollout, run_episodes
from tests.support import tiny_tokenizer


class ScriptedSampler:
    """Returns the same token ids for every row each turn (with EOS unless `close` is False), log-prob -0.5
    each, and records the prompt ids it was given."""

    def __init__(self, tokenizer, ids, close=True):
        self.tokenizer, self.ids, self.close = tokenizer, list(ids), close
        self.eos = eos_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.calls = []

    def sync_weights(self, model):
        pass

    def generate(self, prompts, params, *, prompt_ids=None):
        self.calls.append((params, [list(p) for p in prompt_ids]))
        turn = (self.ids + [self.eos[0]] if self.close else self.ids)[: params.max_new_tokens]
        return build_rollout(
            prompts=prompts, num_generations=1, prompt_ids=prompt_ids, completion_ids=[turn] * len(prompts),
            logprobs=[[-0.5] * len(turn)] * len(prompts), tokenizer=self.tokenizer, eos_ids=self.eos,
            pad_id=self.tokenizer.pad_token_id,
        )  # fmt: skip


class WordEnv:
    """Asks for a word three times; reward 1 per turn whose text says 'left'."""

    system_prompt = "Answer with one word."

    def __init__(self, turns=3):
        self.turns = turns

    def reset(self, seed=None, options=None):
        self.t = 0
        return "Which way?", {"role": "user"}

    def step(self, text):
        self.t += 1
        return (
            f"You said {text!r}. Again?",
            float("left" in text),
            self.t >= self.turns,
            False,
            {"role": "user"},
        )


def _char_ids(tok, word):
    """`word` sampled one character at a time: ids the tokenizer would never produce when encoding it."""
    return [tok.convert_tokens_to_ids(c) for c in word]


def test_sampled_ids_are_trained_on_not_the_reencoded_text():
    tok = tiny_tokenizer()
    sampled = _char_ids(tok, "left")
    assert tok("left", add_special_tokens=False)["input_ids"] != sampled  # re-encoding changes the ids
    sampler = ScriptedSampler(tok, sampled)
    eps = run_episodes(sampler, tok, [WordEnv(), WordEnv()], [0, 0], SamplingParams(seed=1), EpisodeLimits())
    ep = eps[0]
    assert ep.turns == 3 and ep.terminated and not ep.truncated and ep.rewards == [1.0, 1.0, 1.0]
    turn = sampled + [sampler.eos[0]]
    actions = [t for t, m in zip(ep.ids, ep.action_mask) if m]
    assert actions == turn * 3  # exactly the sampled ids, each turn
    # The conversation decoded and encoded again gives other ids than the ones kept.
    text = tok.decode(ep.prompt_ids + ep.ids)
    assert tok(text, add_special_tokens=False)["input_ids"] != ep.prompt_ids + ep.ids
    # The sampler saw, on turn 2, the first prompt + turn 1's sampled ids + the observation's ids.
    second_prompt = sampler.calls[1][1][0]
    assert second_prompt[: len(ep.prompt_ids) + len(turn)] == ep.prompt_ids + turn

    rollout = episodes_to_rollout(eps, tok, pad_id=tok.pad_token_id, num_generations=2)
    row = rollout.completion_ids[0][rollout.loss_mask[0].bool()].tolist()
    assert row == turn * 3
    assert int(rollout.completion_mask[0].sum()) == len(ep.ids) > int(rollout.loss_mask[0].sum())
    assert rollout.logprobs[0][rollout.loss_mask[0].bool()].eq(-0.5).all()
    assert rollout.logprobs[0][~rollout.loss_mask[0].bool() & rollout.completion_mask[0].bool()].eq(0).all()


def test_observation_ids_are_the_template_delta():
    """The observation's ids equal what the template writes for it (the rest of the closing text, the new
    message, the assistant header), tokenised on their own."""
    tok = tiny_tokenizer()
    delta = ChatDelta(tok, "sys", eos_token_ids(tok))
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    full = tok.apply_chat_template(
        msgs + [{"role": "user", "content": "obs"}], tokenize=False, add_generation_prompt=True
    )
    before = tok.apply_chat_template(msgs, tokenize=False)
    obs_ids = delta.observation_ids([{"role": "user", "content": "obs"}], turn_closed=True)
    assert tok.decode(obs_ids) == full[len(before) - len(delta.close) + len("<|im_end|>") :]
    cut = delta.observation_ids([{"role": "user", "content": "obs"}], turn_closed=False)
    assert tok.decode(cut) == "<|im_end|>" + tok.decode(obs_ids)  # a turn cut mid-way is closed first


def test_observation_tokens_carry_no_gradient():
    tok = tiny_tokenizer()
    sampler = ScriptedSampler(tok, _char_ids(tok, "left"))
    eps = run_episodes(sampler, tok, [WordEnv()], [0], SamplingParams(seed=1), EpisodeLimits())
    rollout = episodes_to_rollout(eps, tok, pad_id=tok.pad_token_id, num_generations=1)
    logprobs = rollout.logprobs.clone().requires_grad_(True)
    loss = ppo_clip_loss(logprobs, rollout.logprobs, torch.ones(1), rollout.train_mask, clip_eps=0.2)[0]
    loss.backward()
    observation = rollout.completion_mask.bool() & ~rollout.loss_mask.bool()
    assert observation.any() and logprobs.grad[observation].eq(0).all()
    assert logprobs.grad[rollout.loss_mask.bool()].ne(0).all()


def test_limits_truncate_and_flag():
    tok = tiny_tokenizer()
    sampler = ScriptedSampler(tok, _char_ids(tok, "right"))
    (ep,) = run_episodes(sampler, tok, [WordEnv(turns=10)], [0], SamplingParams(), EpisodeLimits(max_turns=2))
    assert ep.turns == 2 and ep.truncated and not ep.terminated
    sampler = ScriptedSampler(tok, _char_ids(tok, "right"), close=False)
    limits = EpisodeLimits(max_turns=5, max_tokens_per_turn=3, max_episode_tokens=40)
    (ep,) = run_episodes(sampler, tok, [WordEnv(turns=10)], [0], SamplingParams(), limits)
    assert ep.truncated and not ep.last_turn_closed and len(ep.ids) <= 40
    assert all(p.max_new_tokens <= 3 for p, _ in sampler.calls)
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1"):
        EpisodeLimits(max_turns=0)


def test_each_episode_turn_draws_from_its_own_stream():
    tok = tiny_tokenizer()
    sampler = ScriptedSampler(tok, _char_ids(tok, "left"))
    run_episodes(
        sampler, tok, [WordEnv(), WordEnv()], [0, 0], SamplingParams(seed=7, seed_offset=4), EpisodeLimits()
    )
    seeds = [p.seed for p, _ in sampler.calls]
    assert len(set(seeds)) == 3 and all(p.seed_offset == 4 for p, _ in sampler.calls)
