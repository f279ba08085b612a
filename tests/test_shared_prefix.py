"""Rows that share their first tokens (online RL's G completions of a prompt), computed once: the model's
outputs and every gradient equal those of the rows computed one by one, whatever the head, recomputation
or tensor-parallel layout."""

import pytest
import torch

from megalite.model.shared_prefix import SharedPrefix, common_prefixes, group_leaders
from megalite.parallel import state
from megalite.parallel.cross_entropy import IGNORE_INDEX
from tests.dist_utils import run_distributed
from tests.test_model import model_config

PROMPTS = [0, 0, 0, 1, 1, 2, 3, 3]  # each row's prompt: groups of 3, 2, 1 and 2 rows
PROMPT_LENGTHS = [4, 7, 3, 1]


def grouped_rows(seq: int = 12, seed: int = 0):
    """Rows of prompt + completion (random tokens, completions of random lengths, then padding), labels
    on the completions only as online RL's rows have them, and the rows' SharedPrefix arguments."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 128, (n,), generator=g) for n in PROMPT_LENGTHS]
    tokens = torch.zeros(len(PROMPTS), seq, dtype=torch.long)
    labels = torch.full((len(PROMPTS), seq), IGNORE_INDEX)
    for i, p in enumerate(PROMPTS):
        n = len(prompts[p])
        end = int(torch.randint(n + 1, seq + 1, (1,), generator=g))
        tokens[i, :n] = prompts[p]
        tokens[i, n:end] = torch.randint(1, 128, (end - n,), generator=g)
        labels[i, n - 1 : end - 1] = tokens[i, n:end]
    keys = torch.tensor(PROMPTS)
    return tokens, labels, group_leaders(keys), torch.tensor([PROMPT_LENGTHS[p] for p in PROMPTS])


def test_compact_tokens_expand_back_to_the_rows():
    tokens, _, leader, length = grouped_rows()
    assert leader.tolist() == [0, 0, 0, 3, 3, 5, 6, 6]
    shared = SharedPrefix(leader, length, tokens.shape[1], multiple_of=4)
    borrowed = 2 * 4 + 7 + 1  # followers' prefix tokens: 2 x 4, 1 x 7, 1 x 1
    assert shared.tokens == tokens.numel() - borrowed + (-(tokens.numel() - borrowed) % 4)
    assert torch.equal(shared.expand(shared.compact(tokens.t())), tokens.t())
    followers = torch.tensor([0, 0, 2, 2])
    rows = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 8], [1, 2, 3, 4], [1, 2, 3, 4]])
    assert common_prefixes(rows, followers).tolist() == [4, 2, 4, 4]
    with pytest.raises(ValueError, match="its own leader"):
        SharedPrefix(torch.tensor([1, 2, 2]), torch.tensor([2, 2, 2]), 5)


def outputs_and_gradients(model, tokens, labels, shared):
    model.zero_grad(set_to_none=True)
    out = model(tokens, labels=labels, shared_prefix=shared)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)  # every output counts differently
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    group = state.get().tp_group
    for n, p in model.named_parameters():  # a rank's share of a sequence-split sum: the sum is what counts
        if getattr(p, "sequence_parallel", False) and group is not None:
            torch.distributed.all_reduce(grads[n], group=group)
    return out.detach(), grads


def check_shared_equals_rows(model, multiple_of=1, device="cpu"):
    from megalite.model.heads import LMHead

    tokens, labels, leader, length = (t.to(device) for t in grouped_rows())
    for m in model.modules():
        if isinstance(m, LMHead):
            m.entropy, m.temperature, m.labelled_only = True, 0.7, True  # online RL's head
    ref, ref_grads = outputs_and_gradients(model, tokens, labels, None)
    got, grads = outputs_and_gradients(model, tokens, labels, SharedPrefix(leader, length, tokens.shape[1],
                                                                           multiple_of))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().sum() > 0
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("head,recompute,extra", [
    ("lm", None, {}),
    ("lm", "selective", {"qk_layernorm": True}),
    ("lm", "full", {"untie_embeddings_and_output_weights": True}),
    ("score", None, {}),
])
def test_shared_prefixes_give_the_rows_numbers(head, recompute, extra):
    from megalite.model import GPTModel
    from megalite.model.heads import LMHead, ScoreHead
    from megalite.parallel.init import initialize

    torch.manual_seed(0)
    model = GPTModel(model_config(**extra), recompute_granularity=recompute,
                     head=ScoreHead if head == "score" else LMHead)
    initialize(model, 3)
    check_shared_equals_rows(model)


# Qwen2.5-0.5B's config.json as published (qkv biases, tied embeddings, 7 query heads per key/value head,
# rope_theta 1e6, a 32k sliding-window setting that is off), with 2 of its 24 layers and a 1,024-word vocabulary.
QWEN2_5_0_5B = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
                "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
                "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
                "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 2, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
                "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
                "use_sliding_window": False, "vocab_size": 1024}


def test_shared_prefixes_on_a_published_config():
    """A model shaped by a published config.json, read by the HF importer's own conversion."""
    from megalite.hf.config import model_config as from_hf
    from megalite.model import GPTModel
    from megalite.parallel.init import initialize

    torch.manual_seed(0)
    model = GPTModel(from_hf(QWEN2_5_0_5B))
    initialize(model, 3)
    check_shared_equals_rows(model)


def test_a_split_model_refuses_shared_prefixes():
    from megalite.errors import MegaliteError
    from megalite.model import GPTModel

    tokens, labels, leader, length = grouped_rows()
    first = GPTModel(model_config(), post_process=False, layers=range(2))
    with pytest.raises(MegaliteError, match="one pipeline stage"):
        first(tokens, shared_prefix=SharedPrefix(leader, length, tokens.shape[1]))


def _tensor_parallel(rank, world, sequence_parallel, head):
    from megalite.model import GPTModel
    from megalite.model.heads import LMHead, ScoreHead
    from megalite.parallel.init import initialize

    state.initialize(tp=world, sequence_parallel=sequence_parallel)
    model = GPTModel(model_config(), head=ScoreHead if head == "score" else LMHead)
    initialize(model, 3)
    check_shared_equals_rows(model, multiple_of=world if sequence_parallel else 1)


@pytest.mark.dist
@pytest.mark.parametrize("sequence_parallel,head", [(False, "lm"), (True, "lm"), (True, "score")],
                         ids=["tp2", "tp2_sp", "tp2_sp_score"])
def test_shared_prefixes_under_tensor_parallelism(sequence_parallel, head):
    run_distributed(_tensor_parallel, 2, sequence_parallel, head)
