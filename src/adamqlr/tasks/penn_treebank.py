"""Penn Treebank word-level language modelling with a randomly initialised GPT-2-style decoder.

Data: Mikolov's preprocessed PTB (``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``), read
as words with ``<eos>`` closing every line: 929,589 / 73,760 / 82,430 tokens. The vocabulary is
the training file's 10,000 words in order of first appearance (``<eos>`` = 24 and ``<unk>`` = 26,
the ids of the official code). Each stream is cut into consecutive, non-overlapping windows of
``seq_len = 70`` tokens; the target of every position is the next token. A split therefore holds
token ids of shape ``(N, 70)`` for inputs and targets, **batch-major**: a mini-batch is
``(B, 70)``, one row per window.

Differences from the official code (the authors' code at commit ``ab3dea5``), on purpose:

* The official batches are built time-major, ``(70, B)``, and handed unchanged to GPT-2, which
  reads the first axis as the batch, so each token's context came from unrelated windows. We feed
  ``(B, 70)`` windows, so the context is the real preceding text.
* The official code draws ``B`` random windows with replacement each step and evaluates on one
  random 1,400-token chunk; we shuffle the fixed windows each epoch (every training token is seen
  once per epoch, 443 steps of 30 windows against the official 442) and evaluate on whole splits
  (or the profile's first windows), so the curves are not noisy.
* Every run initialises from its own seed; the official runs all shared one initialisation.

Model (:class:`GPT2`), written in plain torch so that ``torch.func.jvp`` works through it
(attention is computed explicitly: ``scaled_dot_product_attention`` has no forward-mode AD on CPU
in torch 2.13): learned token and position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention and a 4x GELU (tanh) MLP, final LayerNorm, and logits from the transposed token
embedding (tied). Initialisation as Hugging Face's GPT-2: normal(0, 0.02) weights, zero biases,
residual projections scaled by ``1/sqrt(2 n_layer)``; no dropout (the official model ran with
``train=False``). Configurations: ``"gpt2"`` (the paper's: 12 layers, width 768, 12 heads, 1,024
positions, about 93M parameters with the 10k vocabulary) and ``"gpt2-small-cpu"`` (2 layers,
width 128, 4 heads, 128 positions, about 1.7M parameters) for CPU profiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr.data.readers import FormatError, build_vocabulary, read_ptb_tokens
from adamqlr.data.store import DataStore
from adamqlr.profiles import Profile
from adamqlr.tasks._common import DataTask, first
from adamqlr.tasks.base import Split, TaskData, TaskProfile

__all__ = ["GPT2", "GPT_CONFIGS", "GPTConfig", "PennTreebank", "windows"]


# ------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2-style decoder.

    Attributes:
        vocab_size: Number of tokens.
        n_positions: Longest sequence (learned position embeddings).
        n_embd: Width.
        n_layer: Number of blocks.
        n_head: Attention heads (must divide ``n_embd``).
        layer_norm_eps: LayerNorm epsilon.
        init_std: Standard deviation of the initial weights.
    """

    vocab_size: int = 10_000
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide n_embd={self.n_embd}")


#: Named configurations (vocabulary size is set by the task).
GPT_CONFIGS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(),
    "gpt2-small-cpu": GPTConfig(n_positions=128, n_embd=128, n_layer=2, n_head=4),
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out (no fused kernel) for forward-mode AD."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, t, c = x.shape
        hd = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=-1)
        q, k, v = (z.reshape(b, t, self.n_head, hd).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """A GPT-2-style decoder: token ids ``(B, T)`` to next-token logits ``(B, T, vocab)``.

    Args:
        config: The shape.
        generator: Source of the initial weights (deterministic given its seed).
    """

    def __init__(self, config: GPTConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.n_layer)))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        std = config.init_std
        residual_std = std / math.sqrt(2 * config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("ln_"):
                    p.fill_(1.0)
                elif name.endswith("c_proj.weight"):
                    p.normal_(0.0, residual_std, generator=generator)
                else:
                    p.normal_(0.0, std, generator=generator)

    def forward(self, idx: Tensor) -> Tensor:  # noqa: D102
        if idx.dim() != 2:
            raise ValueError(f"GPT2 expects token ids of shape (B, T), got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.config.n_positions:
            raise ValueError(f"sequence length {t} exceeds n_positions={self.config.n_positions}")
        pos = torch.arange(t, device=idx.device)
        h = self.blocks(self.wte(idx) + self.wpe(pos))
        return self.ln_f(h) @ self.wte.weight.T


# ------------------------------------------------------------------------------------- data
def windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into consecutive windows and their next-token targets.

    Args:
        stream: Token ids, shape ``(n,)``.
        seq_len: Window length ``T``.

    Returns:
        ``(inputs, targets)`` of shape ``(N, T)`` with ``N = (n - 1) // T``; ``targets[i, j]`` is
        the token after ``inputs[i, j]``.

    Raises:
        ValueError: If the stream is shorter than one window plus one token.
    """
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"a stream of {len(stream)} tokens holds no window of {seq_len} + 1")
    inputs = stream[: n * seq_len].reshape(n, seq_len)
    targets = stream[1 : n * seq_len + 1].reshape(n, seq_len)
    return inputs, targets


_FILES = {s: f"penn-treebank/ptb.{s}.txt" for s in ("train", "valid", "test")}
_SMALL = "gpt2-small-cpu"


class PennTreebank(DataTask):
    """Penn Treebank next-word prediction with a GPT-2-style decoder (see the module docstring).

    Args:
        store: Data store (default: from the environment).
        vocab_size: Model vocabulary; the training file's vocabulary must fit (PTB: 10,000).
        seq_len: Window length (the official ``subsequence_length``, 70).

    Raises:
        ValueError: If ``vocab_size`` or ``seq_len`` is not a positive int.
    """

    name = "penn-treebank"
    title = "Penn Treebank"
    loss = "cross_entropy"
    classification = True
    PROFILES = {
        Profile.SMOKE: TaskProfile(
            batch_size=30,
            epochs=1,
            eval_every=1,
            train_size=60,
            val_size=30,
            test_size=30,
            model=_SMALL,
        ),
        Profile.QUICK: TaskProfile(
            batch_size=30,
            epochs=1,
            eval_every=5,
            train_size=600,
            val_size=60,
            test_size=60,
            model=_SMALL,
        ),
        Profile.PAPER: TaskProfile(batch_size=30, epochs=100, eval_every=100, model="gpt2"),
    }

    def __init__(
        self, store: DataStore | None = None, vocab_size: int = 10_000, seq_len: int = 70
    ) -> None:
        super().__init__(store)
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len

    def load_data(self, profile: str) -> TaskData:
        """Read the three files, build the vocabulary and cut the streams into windows.

        Raises:
            ValueError: If ``profile`` is unknown, the vocabulary exceeds ``vocab_size``, or a
                validation/test word is unknown and there is no ``<unk>``.
            adamqlr.data.DataError: If a file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        paths, prov = self._files(list(_FILES.values()))
        tokens = {s: read_ptb_tokens(paths[key]) for s, key in _FILES.items()}
        vocab = build_vocabulary(tokens["train"])
        if len(vocab) > self.vocab_size:
            raise FormatError(
                f"{paths[_FILES['train']]}: vocabulary of {len(vocab)} words exceeds the model's "
                f"vocab_size={self.vocab_size}"
            )
        unk = vocab.get("<unk>")
        streams = {}
        for s, toks in tokens.items():
            ids = [vocab.get(w, -1) for w in toks]
            if -1 in ids:
                if unk is None:
                    word = toks[ids.index(-1)]
                    raise FormatError(
                        f"{paths[_FILES[s]]}: word {word!r} is not in the training vocabulary "
                        "and there is no <unk> token"
                    )
                ids = [unk if i == -1 else i for i in ids]
            streams[s] = np.asarray(ids, dtype=np.int64)
        splits: dict[str, Split] = {}
        for s, n in (("train", n_train), ("valid", n_val), ("test", n_test)):
            x, y = windows(streams[s], self.seq_len)
            splits[s] = Split(torch.from_numpy(first(x, n)), torch.from_numpy(first(y, n)))
        return self._task_data(
            splits["train"],
            splits["valid"],
            splits["test"],
            profile,
            self.title,
            prov,
            classes=self.vocab_size,
            vocabulary_size=len(vocab),
            tokens={s: len(t) for s, t in tokens.items()},
            seq_len=self.seq_len,
            eos_id=vocab.get("<eos>"),
            unk_id=unk,
            layout="batch-major (B, T) windows; not the official code's time-major batches",
        )

    def make_model(self, seed: int, profile: str) -> nn.Module:
        """Return the profile's GPT-2 configuration with this task's vocabulary, from ``seed``.

        Raises:
            ValueError: If ``profile`` is unknown or its model name is not in :data:`GPT_CONFIGS`.
        """
        name = self.profile(profile).model
        if name not in GPT_CONFIGS:
            raise ValueError(f"unknown model {name!r}; expected one of {sorted(GPT_CONFIGS)}")
        base = GPT_CONFIGS[name]
        config = GPTConfig(
            vocab_size=self.vocab_size,
            n_positions=max(base.n_positions, self.seq_len),
            n_embd=base.n_embd,
            n_layer=base.n_layer,
            n_head=base.n_head,
            layer_norm_eps=base.layer_norm_eps,
            init_std=base.init_std,
        )
        return GPT2(config, torch.Generator().manual_seed(seed))
