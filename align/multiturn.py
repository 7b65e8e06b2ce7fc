"""Multi-turn rollouts, token in, token out: a language model acting in a text environment.

An episode alternates the policy's turns and the environment's observations (a user message, or a tool's
result). It is kept as token ids: the first prompt (the chat template over the system prompt and the first
observation), then for each turn the ids the sampler returned, exactly, followed by the ids of the next
observation. Those observation ids are built once, from the chat template's delta for the new message
alone (`ChatDelta`), and never re-encoded with the history. Decoding a conversation and encoding it again
does not give back the sampled ids (a token boundary moves: " 3" sampled as one token may come back as two),
which is how a trainer that re-tokenises trains on tokens the policy never sampled; here the ids trained on
are the ids sampled (verl#3720, trl#5224).

`episodes_to_rollout` lays a batch of episodes out as a `Rollout`: the prompt is the first prompt, the
"completion" is everything after it, `completion_mask` marks every real token (what the policy attends to)
and `loss_mask` only the sampled ones, so observation tokens carry no gradient. The GRPO and PPO losses
already take that mask.

Sampling is keyed per episode and turn (`SamplingParams.seed`): episode i's turn t draws from the stream
(seed, t, i) whichever episodes are still running, so a resumed run samples the same episodes. The HF
backend re-runs the prompt each turn (its `generate` has no cache to carry over); vLLM's prefix caching
reuses the shared history across turns by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from align.forward import pad_rows
from align.generation import Generator, Rollout, SamplingParams, build_rollout, stream_seed

__all__ = ["ChatDelta", "Episode", "EpisodeLimits", "episodes_to_rollout", "run_episodes"]


@dataclass
class EpisodeLimits:
    """Bounds on one episode. A turn cut at `max_tokens_per_turn`, or an episode at `max_turns` or
    `max_episode_tokens`, is truncated (flagged, never silently ended)."""

    max_turns: int = 4
    """Most policy turns."""
    max_tokens_per_turn: int = 64
    """Most tokens sampled in one turn."""
    max_episode_tokens: int = 512
    """Most tokens after the first prompt: sampled and observation tokens together."""

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_tokens_per_turn", "max_episode_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class ChatDelta:
    """Token ids the chat template adds for new messages, computed from those messages alone.

    The delta is found on a stand-in conversation (`_PAD_USER`, `_PAD_REPLY`): the text the template
    writes after an assistant reply's content (`close`, "<|im_end|>\\n" for ChatML), and the text it writes
    for the new messages up to the next assistant header. A template whose rendering of a longer
    conversation does not extend the shorter one's (one that rewrites earlier turns) is refused: no delta
    exists for it.
    """

    _PAD_USER, _PAD_REPLY = "x", "y"
    _PAD = ({"role": "user", "content": _PAD_USER}, {"role": "assistant", "content": _PAD_REPLY})

    def __init__(
        self,
        tokenizer: Any,
        system_prompt: str | None = None,
        eos_ids: Sequence[int] = (),
        tools: Sequence[Any] = (),
    ):
        self.tokenizer = tokenizer
        self.tools = list(tools)
        self.head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.eos_ids = {int(i) for i in eos_ids}
        asked = self._render(list(self._PAD[:1]), generation_prompt=True)
        self._base = self._render(list(self._PAD), generation_prompt=False)
        tail = self._suffix(asked, self._base)
        if not tail.startswith(self._PAD_REPLY):
            raise ValueError(
                "the chat template does not write an assistant reply after its generation prompt"
            )
        self.close = tail[len(self._PAD_REPLY) :]

    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        # Tools through the template's own `tools=` where it has them, else in the Hermes format.
        from align.envs.tools import apply_chat_template_with_tools

        return apply_chat_template_with_tools(
            self.tokenizer,
            self.head + messages,
            self.tools,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    @staticmethod
    def _suffix(shorter: str, longer: str) -> str:
        if not longer.startswith(shorter):
            raise ValueError(
                "the chat template rewrites earlier turns when a message is added, so observation tokens "
                "cannot be appended to the sampled ones (token in, token out needs a template that extends)"
            )
        return longer[len(shorter) :]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The first prompt: the system prompt (if any), `messages`, and the assistant header."""
        return self._encode(self._render(messages, generation_prompt=True))

    def observation_ids(self, messages: list[dict[str, str]], *, turn_closed: bool) -> list[int]:
        """Ids appended after a policy turn: the rest of the turn's closing text (all of it when the turn was
        cut before its end-of-turn token, `turn_closed` False), the new messages and the next assistant
        header."""
        new = self._suffix(self._base, self._render([*self._PAD, *messages], generation_prompt=True))
        close = self.close
        if turn_closed:
            eos_text = self.tokenizer.decode(sorted(self.eos_ids)[:1]) if self.eos_ids else ""
            close = close[len(eos_text) :] if eos_text and close.startswith(eos_text) else close
        return self._encode(close + new)


@dataclass
class Episode:
    """One episode as token ids. `ids` follow `prompt_ids`; `action_mask[j]` is 1 where `ids[j]` was
    sampled by the policy; `logprobs[j]` its sampling log-prob (0 on observation tokens)."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    """The environment's reward after each turn."""
    messages: list[dict[str, str]] = field(default_factory=list)
    """The conversation as text (the first observation, then turns and observations), for logs."""
    infos: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    terminated: bool = False
    truncated: bool = False
    """Stopped by a limit (turns, tokens) or by the environment's own truncation."""
    last_turn_closed: bool = False
    """The last turn ended with an end-of-turn token (not cut at max_tokens_per_turn)."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))


def _env_attr(env: Any, name: str, default: Any) -> Any:
    """An attribute of the environment or of any wrapper around it (gymnasium's wrappers do not forward
    attributes)."""
    get = getattr(env, "get_wrapper_attr", None)
    try:
        return get(name) if get is not None else getattr(env, name, default)
    except AttributeError:
        return default


def _reset(env: Any, seed: int, delta: ChatDelta) -> Episode:
    obs, info = env.reset(seed=seed)
    first = [{"role": info.get("role", "user"), "content": obs}]
    return Episode(prompt_ids=delta.prompt_ids(first), messages=list(first), infos=[dict(info)])


def _sample_turn(
    generator: Generator,
    episodes: list[Episode],
    active: list[int],
    params: SamplingParams,
    turn: int,
    budget: int,
) -> Rollout:
    """One turn for the `active` episodes (indices into `episodes`), all within one `generate` call per run
    of consecutive indices, so that each episode's draws are keyed by its own index."""
    rows = [episodes[i].prompt_ids + episodes[i].ids for i in active]
    turn_params = SamplingParams(
        max_new_tokens=budget,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        num_generations=1,
        seed=None if params.seed is None else stream_seed(params.seed, turn),
        seed_offset=params.seed_offset + active[0],
        repetition_penalty=params.repetition_penalty,
        return_logprobs=params.return_logprobs,
    )
    return generator.generate([""] * len(rows), turn_params, prompt_ids=rows)


def _contiguous_runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _apply_turn(
    ep: Episode, env: Any, out: Rollout, row: int, delta: ChatDelta, limits: EpisodeLimits
) -> None:
    n = int(out.completion_lengths[row])
    sampled = out.completion_ids[row, :n].tolist()
    ep.ids += sampled
    ep.action_mask += [1] * n
    ep.logprobs += out.logprobs[row, :n].tolist() if out.logprobs is not None else [0.0] * n
    ep.turns += 1
    ep.last_turn_closed = bool(out.is_eos[row])
    text = out.completion_texts[row]
    ep.messages.append({"role": "assistant", "content": text})
    obs, reward, terminated, truncated, info = env.step(text)
    ep.rewards.append(float(reward))
    ep.infos.append(dict(info))
    ep.terminated, ep.truncated = bool(terminated), bool(truncated)
    if ep.done:
        return
    message = {"role": info.get("role", "user"), "content": obs}
    obs_ids = delta.observation_ids([message], turn_closed=ep.last_turn_closed)
    if ep.turns >= limits.max_turns or len(ep.ids) + len(obs_ids) >= limits.max_episode_tokens:
        ep.truncated = True  # no room for another turn: the observation is not appended
        return
    ep.messages.append(message)
    ep.ids += obs_ids
    ep.action_mask += [0] * len(obs_ids)
    ep.logprobs += [0.0] * len(obs_ids)


def run_episodes(
    generator: Generator,
    tokenizer: Any,
    envs: Sequence[Any],
    seeds: Sequence[int],
    params: SamplingParams,
    limits: EpisodeLimits,
    *,
    system_prompt: str | None = None,
    eos_ids: Sequence[int] = (),
) -> list[Episode]:
    """Play one episode in each of `envs` (gymnasium text environments: `reset(seed) -> (text, info)`,
    `step(text) -> (text, reward, terminated, truncated, info)`, `info["role"]` the observation's chat role),
    batched across episodes turn by turn. `seeds[i]` resets `envs[i]`; `system_prompt` defaults to the first
    environment's `system_prompt` attribute, and its `tools` (typed functions, `align.envs.tools`) are shown
    to the model through the chat template. `params.max_new_tokens` is ignored for `limits`."""
    if len(envs) != len(seeds):
        raise ValueError(f"got {len(seeds)} seeds for {len(envs)} environments")
    if not envs:
        return []
    if system_prompt is None:
        system_prompt = _env_attr(envs[0], "system_prompt", None)
    delta = ChatDelta(tokenizer, system_prompt, eos_ids, tools=_env_attr(envs[0], "tools", None) or ())
    episodes = [_reset(env, seed, delta) for env, seed in zip(envs, seeds)]
    for turn in range(limits.max_turns):
        active = [i for i, ep in enumerate(episodes) if not ep.done]
        if not active:
            break
        for run in _contiguous_runs(active):
            # One budget per call: the tightest of the run's remaining episode budgets.
            budget = min(
                limits.max_tokens_per_turn, *(limits.max_episode_tokens - len(episodes[i].ids) for i in run)
            )
            out = _sample_turn(generator, episodes, run, params, turn, max(budget, 1))
            for row, i in enumerate(run):
                _apply_turn(episodes[i], envs[i], out, row, delta, limits)
    for ep in episodes:
        if not ep.done:
            ep.truncated = True
    return episodes


def episodes_to_rollout(
    episodes: Sequence[Episode], tokenizer: Any, *, pad_id: int, num_generations: int, device: Any = "cpu"
) -> Rollout:
    """A `Rollout` of `episodes` (consecutive groups of `num_generations` share a reset seed): prompt =
    the first prompt; completion = everything after it; `completion_mask` 1 on every real token (attended
    to), `loss_mask` 1 on sampled tokens only; `completion_lengths` counts sampled tokens; `is_eos` is the
    last turn's end-of-turn token; `completion_texts` the policy's turns joined."""
    rollout = build_rollout(
        prompts=[None] * (len(episodes) // num_generations),
        num_generations=num_generations,
        prompt_ids=[ep.prompt_ids for ep in episodes],
        completion_ids=[ep.ids for ep in episodes],
        logprobs=[ep.logprobs for ep in episodes],
        tokenizer=tokenizer,
        eos_ids=[],  # an episode holds several end-of-turn tokens: keep every id
        pad_id=pad_id,
        device=device,
    )
    loss_mask, _ = pad_rows([ep.action_mask for ep in episodes], 0, min_width=1)
    rollout.loss_mask = loss_mask.to(rollout.completion_mask.dtype).to(rollout.completion_mask.device)
    rollout.completion_lengths = rollout.loss_mask.sum(1)
    rollout.is_eos = torch.tensor(
        [ep.last_turn_closed for ep in episodes], dtype=torch.bool, device=rollout.is_eos.device
    )
    rollout.completion_texts = [
        "\n".join(m["content"] for m in ep.messages if m["role"] == "assistant") for ep in episodes
    ]
    return rollout
