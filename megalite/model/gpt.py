"""A decoder-only transformer (GPT / Llama / Mistral / Qwen2 / Qwen3 families), one pipeline stage at a time.

``GPTModel(cfg, pre_process, post_process, layers)`` builds the part of the model one
pipeline stage owns: the embedding if ``pre_process``, the given range of layers (named by
their global index, so checkpoints and initialisation do not depend on the split), and the
final norm + the head if ``post_process`` (megalite.model.heads: the language-modelling output,
or a reward model's score head). With everything on one stage it is the whole model. Tensors
are [seq, batch, hidden] inside; inputs and outputs are [batch, seq].
"""

from typing import Optional

import torch
from torch import nn

from megalite.config import Config, ModelConfig, attention_window, stage_layers
from megalite.errors import MegaliteError
from megalite.model.attention import SelfAttention
from megalite.model.heads import LMHead
from megalite.model.mlp import MLP
from megalite.model.norms import build_norm
from megalite.model.rotary import RotaryEmbedding
from megalite.model.shared_prefix import SharedPrefix
from megalite.parallel import state
from megalite.parallel.context import document_starts
from megalite.parallel.init import mark
from megalite.parallel.layers import VocabParallelEmbedding
from megalite.parallel.mappings import gather_from_tp, scatter_to_sequence
from megalite.parallel.random import SequenceDropout, recompute


class TransformerLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), dropout on both branches."""

    def __init__(self, cfg: ModelConfig, recompute_core: bool = False, window: Optional[int] = None):
        super().__init__()
        self.input_norm = build_norm(cfg, cfg.hidden_size)
        self.attention = SelfAttention(cfg, recompute_core, window)
        self.post_attention_norm = build_norm(cfg, cfg.hidden_size)
        self.mlp = MLP(cfg)
        self.dropout = SequenceDropout(cfg.hidden_dropout)

    def forward(self, x, rope=None, cache=None, cu_seqlens=None, shared=None):
        attended = self.dropout(self.attention(self.input_norm(x), rope, cache, cu_seqlens, shared))
        h, x = self.post_attention_norm(attended, residual=x)  # the residual add fused into the norm
        return x + self.dropout(self.mlp(h))


def document_boundaries(positions: torch.Tensor) -> Optional[torch.Tensor]:
    """flash-attn's ``cu_seqlens`` for rows [batch, seq] whose positions restart at 0 where a
    document begins (rows laid end to end); None when every row is one document, so plain
    causal attention (and its fastest kernels) applies."""
    flat = positions.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == positions.shape[0]:
        return None
    return torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)


class GPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig, pre_process: bool = True, post_process: bool = True,
                 layers: Optional[range] = None, recompute_granularity: Optional[str] = None, head=LMHead):
        super().__init__()
        self.cfg = cfg
        self.pre_process, self.post_process = pre_process, post_process
        self.recompute_full = recompute_granularity == "full"
        layers = range(cfg.num_layers) if layers is None else layers
        tied = not cfg.untie_embeddings_and_output_weights and head.reads_embedding
        if pre_process or (post_process and tied):
            # A tied last stage keeps its own copy of the embedding for the output layer; same
            # name, so same initial values (pipelining keeps the copies' gradients in sync).
            self.embedding = VocabParallelEmbedding(cfg.padded_vocab_size, cfg.hidden_size, cfg.init_method_std)
            self.embedding.weight.shared_embedding = tied and not (pre_process and post_process)
        if pre_process:
            if cfg.position_embedding_type == "learned_absolute":
                self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
                mark(self.position_embedding.weight, cfg.init_method_std)
            self.embedding_dropout = SequenceDropout(cfg.hidden_dropout)
        self.rotary = None
        if cfg.position_embedding_type == "rope":
            self.rotary = RotaryEmbedding(cfg.kv_channels, cfg)
        selective = recompute_granularity == "selective"
        self.layers = nn.ModuleDict({str(i): TransformerLayer(cfg, selective, attention_window(cfg, i))
                                     for i in layers})
        if post_process:
            self.final_norm = build_norm(cfg, cfg.hidden_size)
            self.head_name = head.name
            self.add_module(head.name, head(cfg, self.embedding if tied else None))

    def embed(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[batch, seq] ids -> [seq, batch, hidden] (this rank's slice of seq with sequence parallelism).
        ``positions`` ([batch, seq]) default to 0, 1, 2, ..."""
        x = self.embedding(tokens.t())
        if hasattr(self, "position_embedding"):
            if positions is None:
                x = x + self.position_embedding(torch.arange(tokens.shape[1], device=tokens.device))[:, None, :]
            else:
                x = x + self.position_embedding(positions.t())
        if state.get().sequence_parallel:
            x = scatter_to_sequence(x)
        return self.embedding_dropout(x)

    @property
    def head(self) -> nn.Module:
        return getattr(self, self.head_name)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and output layer: [seq, batch, hidden] -> [seq, batch, vocab / tp]."""
        return self.output_layer.logits(self.final_norm(x))

    def forward(self, tokens: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                hidden: Optional[torch.Tensor] = None, positions: Optional[torch.Tensor] = None,
                shared_prefix: Optional[SharedPrefix] = None) -> torch.Tensor:
        """Per-token loss [batch, seq] when ``labels`` are given, else logits [batch, seq, vocab / tp]
        (a score head: per-token scores [batch, seq]; a stage without the head: its hidden states).
        ``positions`` [batch, seq] describe packed rows: each restart at 0 begins a document that
        attends only to itself. ``shared_prefix``: rows repeating other rows' first tokens, which are
        computed once (megalite.model.shared_prefix; the whole model on one stage, no packing or CP)."""
        rope, cu_seqlens = None, None
        if shared_prefix is not None:
            if not (self.pre_process and self.post_process) or positions is not None or state.get().cp_size > 1:
                raise MegaliteError("shared prefixes need the whole model on one pipeline stage, unpacked rows and "
                                    "no context parallelism")
            every = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
            positions = shared_prefix.compact_rows(every)
            tokens = shared_prefix.compact_rows(tokens)
        elif positions is not None:  # context parallelism: where each token's document starts (ring attention's mask)
            cu_seqlens = document_starts(positions) if state.get().cp_size > 1 else document_boundaries(positions)
        x = self.embed(tokens, positions) if self.pre_process else hidden
        if self.rotary is not None:
            s = state.get()
            seq = x.shape[0] * (s.tp_size if s.sequence_parallel else 1)
            rope = self.rotary(torch.arange(seq, device=x.device) if positions is None else positions.t(), x.dtype)
        for layer in self.layers.values():
            if self.recompute_full and self.training:
                x = recompute(layer, x, rope, None, cu_seqlens, shared_prefix)
            else:
                x = layer(x, rope, cu_seqlens=cu_seqlens, shared=shared_prefix)
        if not self.post_process:
            return x
        return self.head(self.final_norm(x), labels, shared_prefix)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, cache,
                    hidden: Optional[torch.Tensor] = None, at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One incremental step for ``tokens`` [batch, new] at ``positions`` [batch, new], attending
        to what ``cache`` holds (its mask set by the caller) and adding to it: full-vocabulary
        logits [batch, new, vocab] on the last stage (with ``at`` [batch], only those of each
        row's position ``at``: [batch, 1, vocab], so a prefill skips the output layer elsewhere),
        else this stage's hidden states. The caller advances the cache once every stage has run."""
        x = self.embed(tokens, positions) if self.pre_process else hidden
        rope = self.rotary(positions.t(), x.dtype) if self.rotary is not None else None
        for name, layer in self.layers.items():
            cache.layer = name
            x = layer(x, rope, cache)
        if not self.post_process:
            return x
        if at is not None:
            x = x[at, torch.arange(x.shape[1], device=x.device)][None]
        return gather_from_tp(self.logits(x)).transpose(0, 1)


class ModelChunks(nn.ModuleList):
    """The model chunks one pipeline stage holds with virtual stages (interleaved schedule).

    Parameters and state dicts carry the chunks' own global names (no chunk prefix), so
    initialisation, checkpoints and conversion see the same names as with one chunk.
    """

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for chunk in self:
            yield from chunk.named_parameters(prefix, recurse, remove_duplicate)

    def state_dict(self, *args, **kwargs):
        merged = {}
        for chunk in self:
            merged.update(chunk.state_dict(*args, **kwargs))
        return merged

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        mine = set()
        for chunk in self:
            names = chunk.state_dict().keys()
            mine |= set(names)
            chunk.load_state_dict({k: state_dict[k] for k in names if k in state_dict}, strict=strict, assign=assign)
        extra = set(state_dict) - mine
        if strict and extra:
            raise RuntimeError(f"Error(s) in loading state_dict:\n\tUnexpected key(s): {sorted(extra)[:5]}")


def build_stage_model(cfg: Config, recompute: Optional[str], head=LMHead):
    """This pipeline stage's part of the model: one GPTModel, or with virtual stages one
    chunk per virtual stage c * P + r (interleaved schedule), ending in ``head``."""
    m, p, s = cfg.model, cfg.parallel, state.get()
    per_chunk = p.num_layers_per_virtual_pipeline_stage
    if per_chunk is None:
        layers = stage_layers(m.num_layers, s.pp_size, s.pp_rank, p.decoder_first_pipeline_num_layers,
                              p.decoder_last_pipeline_num_layers)
        return GPTModel(m, s.is_first_stage, s.is_last_stage, layers, recompute_granularity=recompute, head=head)
    chunks = m.num_layers // (s.pp_size * per_chunk)
    vstages = [c * s.pp_size + s.pp_rank for c in range(chunks)]
    return ModelChunks(
        GPTModel(m, v == 0, v == chunks * s.pp_size - 1, range(v * per_chunk, (v + 1) * per_chunk),
                 recompute_granularity=recompute, head=head)
        for v in vstages)
