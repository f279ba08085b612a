"""Rows whose first tokens repeat another row's, computed once (online RL's G completions of one prompt).

Under causal attention a token's hidden states depend only on the tokens before it, so the prompt
of G rows that share it has the same hidden states in all of them. ``SharedPrefix`` names, for each
row, a leader row holding the same first ``length`` tokens (a leader is its own). Inside the model
the rows become one compact sequence of T tokens, [T, 1] - every leader row whole, of the other
rows only the tokens after their shared prefix - so embeddings, norms, projections and the MLP run
on T tokens instead of seq x batch (a 32-token prompt before 128-token completions, G = 8: 17%
fewer). Attention gathers queries, keys and values back into the [seq, batch] rows (a follower
reads its prefix from its leader), runs the usual causal kernel and keeps the compact tokens'
outputs; autograd sums a prefix's gradients over the rows that read it. The heads read each row
position from the compact tokens. The numbers are the rows' own, up to rounding.

The compact order is sequence-first, as activations are; with sequence parallelism T is padded to
a multiple of the tensor-parallel size with copies of the first token, which nothing reads back.
"""

import torch


class SharedPrefix:
    def __init__(self, leader: torch.Tensor, length: torch.Tensor, seq: int, multiple_of: int = 1):
        """``leader`` [batch]: the row whose first ``length[i]`` tokens row i repeats (i itself for a
        leader, which must lead itself); ``seq``: the rows' length."""
        b, device = leader.numel(), leader.device
        if bool((leader[leader] != leader).any()):
            raise ValueError("a shared prefix's leader row must be its own leader")
        j = torch.arange(seq, device=device)[:, None]
        i = torch.arange(b, device=device)[None, :]
        borrowed = (leader[None, :] != i) & (j < length[None, :])  # [seq, batch]: read from the leader
        own = j * b + i  # the sequence-first index of every row position
        kept = own.flatten()[~borrowed.flatten()]
        at = torch.full((seq * b,), -1, dtype=torch.long, device=device)
        at[kept] = torch.arange(kept.numel(), device=device)
        self.seq, self.batch = seq, b
        self.expand_index = at[torch.where(borrowed, j * b + leader[None, :], own).flatten()]
        filler = -kept.numel() % multiple_of
        self.compact_index = torch.cat([kept, kept[:1].expand(filler)])

    @property
    def tokens(self) -> int:
        """T: the compact sequence's length (filler included)."""
        return self.compact_index.numel()

    def compact(self, x: torch.Tensor) -> torch.Tensor:
        """[seq, batch, ...] -> [T, 1, ...]."""
        return x.flatten(0, 1).index_select(0, self.compact_index).unsqueeze(1)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """[T, 1, ...] -> [seq, batch, ...]: every row position, a follower's prefix from its leader."""
        return x.squeeze(1).index_select(0, self.expand_index).view(self.seq, self.batch, *x.shape[2:])

    def compact_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[batch, seq] (token ids, positions) -> [1, T], batch-first as the model's inputs are."""
        return self.compact(rows.t()).t()


def group_leaders(keys: torch.Tensor) -> torch.Tensor:
    """[batch] -> each row's leader: the first row holding the same key (a prompt's index)."""
    same = keys[:, None] == keys[None, :]
    return same.int().argmax(1)


def common_prefixes(tokens: torch.Tensor, leader: torch.Tensor) -> torch.Tensor:
    """[batch]: how many first tokens of each row [batch, seq] its leader row also has (all of them for
    a leader): the prompt, and the completion's first tokens when they agree too."""
    return (tokens == tokens[leader]).int().cumprod(1).sum(1)
