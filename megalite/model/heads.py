"""What the last pipeline stage computes from the final (normed) hidden states: the head a model is built with.

- ``LMHead`` (registered as ``output_layer``): logits over this rank's vocabulary shard, or with labels the
  per-token losses (vocab-parallel cross entropy, no vocabulary gather; with ``mean_logits`` also each
  token's mean logit, for trl's ``logits/*`` metrics; with ``entropy`` each position's entropy, for online
  RL's; logits divided by ``temperature`` first, as sampled tokens are scored; with ``labelled_only``,
  positions labelled ``IGNORE_INDEX`` skip the output layer and get zeros). Its weight is the output
  layer's own, or with tied embeddings the embedding's (which the model owns).
- ``ScoreHead`` (registered as ``score``, Hugging Face's name in ``...ForSequenceClassification``): one
  scalar per token, hidden -> 1 without bias, [batch, seq]. A reward model reads it at each row's last
  non-pad token (megalite.posttrain.reward). The weight is replicated over tensor-parallel ranks; with
  sequence parallelism each rank scores its slice of the sequence, the scores are gathered, and the weight's
  gradient is summed over the ranks like a norm's (``sequence_parallel``), so every rank takes the same step.

Both take a model's compact tokens when its rows share prefixes (megalite.model.shared_prefix) and give
the rows' outputs: the LM head computes at the labelled positions only, the score head at every one.

The run's stage picks one (megalite.training.stage: ``Stage.head``).
"""

from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megalite.config import ModelConfig
from megalite.errors import MegaliteError
from megalite.model.shared_prefix import SharedPrefix
from megalite.parallel import state
from megalite.parallel.cross_entropy import IGNORE_INDEX, vocab_parallel_cross_entropy, vocab_parallel_entropy
from megalite.parallel.init import mark
from megalite.parallel.layers import column_parallel_linear
from megalite.parallel.mappings import copy_to_tp, gather_from_sequence, gather_sequence_for_all


class LMHead(nn.Module):
    name = "output_layer"
    reads_embedding = True  # with tied embeddings: the last stage needs the embedding's weight

    def __init__(self, cfg: ModelConfig, embedding: Optional[nn.Module] = None):
        super().__init__()
        self.mean_logits = False  # with labels: [batch, seq, 2] = per-token loss and mean logit
        self.entropy = False  # with labels: [batch, seq, 2] = per-token loss and entropy (online RL's metric)
        self.temperature = 1.0  # logits are divided by it (online RL scores tokens as they were sampled)
        self.labelled_only = False  # skip positions labelled IGNORE_INDEX (stages whose rows mark them: SFT, RL)
        self._tied = (embedding,) if embedding is not None else ()  # a tuple: not registered (the model owns it)
        if embedding is None:
            tp = state.get().tp_size
            self.weight = mark(nn.Parameter(torch.empty(cfg.padded_vocab_size // tp, cfg.hidden_size)),
                               cfg.init_method_std, tp_dim=0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[seq, batch, hidden] -> [seq, batch, vocab / tp]."""
        return column_parallel_linear(x, self._tied[0].weight if self._tied else self.weight)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                shared: Optional[SharedPrefix] = None) -> torch.Tensor:
        if shared is not None:  # x holds compact tokens: each labelled row position is read from them
            if labels is None:
                raise MegaliteError("a model run on shared prefixes computes losses: labels are needed")
            return self._labelled_only(x, labels.t(), labels.t() != IGNORE_INDEX, shared).transpose(0, 1)
        if labels is not None and self.labelled_only:  # opt-in: finding the labelled rows waits for the device
            labelled = labels.t() != IGNORE_INDEX
            if not bool(labelled.all()):
                return self._labelled_only(x, labels.t(), labelled).transpose(0, 1)
        logits = self._scaled(self.logits(x))
        if labels is None:
            return logits.transpose(0, 1)
        return self._per_token(logits, labels.t()).transpose(0, 1)

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature if self.temperature != 1.0 else logits

    def _per_token(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each position's loss (and mean logit or entropy: [..., 2]) from its logits [..., vocab / tp]."""
        if self.mean_logits:
            return torch.stack(vocab_parallel_cross_entropy(logits, labels, mean_logits=True), -1)
        losses = vocab_parallel_cross_entropy(logits, labels)
        if self.entropy:
            return torch.stack([losses, vocab_parallel_entropy(logits)], -1)
        return losses

    def _labelled_only(self, x: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor,
                       shared: Optional[SharedPrefix] = None) -> torch.Tensor:
        """``_per_token`` [seq, batch(, 2)] computed at the labelled positions only (zeros elsewhere):
        online RL labels only the completions, so prompts and padding skip the output layer. With
        ``shared``, x holds its compact tokens."""
        x = gather_from_sequence(x) if state.get().sequence_parallel else copy_to_tp(x)
        rows = labelled.flatten().nonzero().squeeze(1)
        hidden = x.reshape(-1, x.shape[-1]).index_select(0, rows if shared is None else shared.expand_index[rows])
        logits = self._scaled(F.linear(hidden, self._tied[0].weight if self._tied else self.weight))
        scores = self._per_token(logits, labels.reshape(-1).index_select(0, rows))
        full = scores.new_zeros((labelled.numel(), *scores.shape[1:])).index_copy(0, rows, scores)
        return full.view(*labelled.shape, *scores.shape[1:])


def skip_unlabelled(model: nn.Module) -> None:
    """Let ``model``'s LM head skip the positions labelled IGNORE_INDEX (SFT's prompts and padding,
    online RL's): a stage whose rows mark them calls it (pretraining's never do, and its forward
    then never waits for the device to find them)."""
    for m in model.modules():
        if isinstance(m, LMHead):
            m.labelled_only = True


class ScoreHead(nn.Module):
    name = "score"
    reads_embedding = False

    def __init__(self, cfg: ModelConfig, embedding: Optional[nn.Module] = None):
        super().__init__()
        # normal(0, --init-method-std) from the seed by name, like HF's normal(0, initializer_range)
        self.weight = mark(nn.Parameter(torch.empty(1, cfg.hidden_size)), cfg.init_method_std)
        self.weight.sequence_parallel = state.get().sequence_parallel  # sees only a slice of the sequence

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                shared: Optional[SharedPrefix] = None) -> torch.Tensor:
        """[seq(/tp), batch, hidden] -> scores [batch, seq]; ``labels`` are not used. With ``shared``,
        x holds its compact tokens, [T(/tp), 1, hidden]."""
        scores = F.linear(x, self.weight).squeeze(-1)
        if state.get().sequence_parallel:
            scores = gather_sequence_for_all(scores)
        return (shared.expand(scores) if shared is not None else scores).t()


LM_ONLY = ("output_layer.weight", "embedding.weight")  # the LM output, and a last stage's copy of a tied embedding


class ScoreModelWeights(Mapping):
    """A checkpoint's weights (by name) as the start of a reward model whose own state is
    ``current``: what only a language model holds (its output layer, a last stage's copy of the
    tied embedding) is left out, and a score head the checkpoint lacks (a language model's or an
    imported HF model's) keeps its current, freshly initialised values."""

    def __init__(self, weights: Mapping, current: Mapping):
        self.weights = weights
        self.fresh = {k: v for k, v in current.items() if k == f"{ScoreHead.name}.weight" and k not in weights}
        self.left_out = {k for k in LM_ONLY if k not in current}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.fresh:
            return self.fresh[name]
        if name in self.left_out:
            raise KeyError(name)
        return self.weights[name]

    def __contains__(self, name) -> bool:
        return name in self.fresh or (name not in self.left_out and name in self.weights)

    def __iter__(self):
        yield from (k for k in self.weights if k not in self.left_out)
        yield from self.fresh

    def __len__(self) -> int:
        return sum(1 for _ in self)
