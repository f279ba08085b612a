import pytest
import torch

from megalite.config import parse_config
from megalite.eval.generate import generate
from megalite.eval.loading import load_model
from megalite.eval.sampling import Sampling
from megalite.hf.convert import export_hf
from megalite.model.decoding import attention_mask, decode_step, new_cache, token_positions
from megalite.training.trainer import pretrain
from tests.conftest import tiny_model_args

transformers = pytest.importorskip("transformers")

GPT2 = {"normalization": "LayerNorm", "position_embedding_type": "learned_absolute", "swiglu": False,
        "disable_bias_linear": False, "group_query_attention": False, "num_query_groups": None,
        "max_position_embeddings": 128}


@pytest.fixture(scope="module", params=[{}, GPT2], ids=["llama-gqa", "gpt2"])
def trained(request, tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("gen")
    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(tmp / "ck"), train_iters=30, **request.param)))
    export_hf(str(tmp / "ck"), str(tmp / "hf"), dtype="fp32")
    model, _ = load_model(str(tmp / "ck"))
    return model, str(tmp / "hf")


PROMPTS = [[5, 17, 300, 42, 9, 77, 123], [88, 12, 400]]


def test_cached_uncached_alone_and_transformers_agree(trained):
    model, hf_dir = trained
    greedy = Sampling(stop_ids=[2])
    batched = generate(model, PROMPTS, 30, greedy)
    assert batched == generate(model, PROMPTS, 30, greedy, use_cache=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).float().eval()
    for prompt, ours in zip(PROMPTS, batched):
        assert generate(model, [prompt], 30, greedy)[0] == ours  # padding changes nothing
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=2,
                             pad_token_id=3)[0, len(prompt):].tolist()
        assert ours == theirs
    assert max(map(len, batched)) > 10


def test_greedy_generation_equals_transformers_where_every_token_depends_on_its_context(tmp_path):
    """The trained tiny models above settle on repeating one token; a random Llama with large weights
    changes its next token with its context, so batched, padded KV-cache decoding is compared with
    transformers' generate where a wrong position, mask or cache entry changes the tokens."""
    from megalite.hf.convert import import_hf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.3, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    import_hf(str(tmp_path / "hf"), str(tmp_path / "ck"))
    model, _ = load_model(str(tmp_path / "ck"))
    ours = generate(model, PROMPTS, 20, Sampling(), pad_id=0)
    for prompt, row in zip(PROMPTS, ours):
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert row == theirs[0, len(prompt):].tolist()
        assert len(set(row)) > 5  # not one repeated token


def test_sampling_options(trained):
    model, _ = trained
    a = generate(model, PROMPTS, 12, Sampling(temperature=1.0, top_p=0.9, seed=3))
    assert a == generate(model, PROMPTS, 12, Sampling(temperature=1.0, top_p=0.9, seed=3))
    assert generate(model, PROMPTS, 12, Sampling(temperature=0.7, top_k=1, seed=5)) == generate(model, PROMPTS, 12)
    penalised = generate(model, [PROMPTS[0]], 20, Sampling(repetition_penalty=100.0))[0]
    assert len(set(penalised)) == len(penalised)  # a huge penalty never repeats a token
    stopped = generate(model, [PROMPTS[0]], 20, Sampling(stop_ids=[generate(model, [PROMPTS[0]], 3)[0][2]]))[0]
    assert len(stopped) <= 3


def test_decoding_api_steps_a_padded_batch_like_a_full_forward(trained):
    """What a server builds on (megalite.model.decoding): left-padded rows, prompt in one step, then
    one token per step; each row's logits are those of a plain forward pass over that row alone."""
    model, _ = trained
    b, longest = len(PROMPTS), max(map(len, PROMPTS))
    extra = [[7, 8], [9, 10]]
    tokens = torch.zeros((b, longest + 2), dtype=torch.long)
    valid = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, e) in enumerate(zip(PROMPTS, extra)):
        tokens[i, longest - len(p):] = torch.tensor(p + e)
        valid[i, longest - len(p):] = True
    cache = new_cache(model, b, longest + 2, torch.device("cpu"))
    start = 0
    with torch.no_grad():
        for end in (longest, longest + 1, longest + 2):
            positions = token_positions(valid[:, :end])[:, start:end]
            logits = decode_step(model, tokens[:, start:end], positions, cache, attention_mask(valid[:, :end], start))
            for i, (p, e) in enumerate(zip(PROMPTS, extra)):
                alone = model(torch.tensor([(p + e)[: len(p) + end - longest]]))[0, -1]
                torch.testing.assert_close(logits[i], alone, rtol=1e-4, atol=1e-4)
            start = end


def test_chat_template_renders_like_transformers(tmp_path, spm_model):
    from megalite.data.chat import CHATML, render_chat
    from megalite.data.tokenizer import build_tokenizer
    from megalite.hf.tokenizer import export_tokenizer

    export_tokenizer(build_tokenizer("SentencePieceTokenizer", spm_model), str(tmp_path / "tok"), CHATML)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"}]
    for gen in (True, False):
        assert render_chat(CHATML, messages, gen) == hf.apply_chat_template(messages, tokenize=False,
                                                                             add_generation_prompt=gen)


def test_interactive_chat(tmp_path, trained):
    import subprocess
    import sys

    from tests.conftest import REPO

    _, hf_dir = trained
    ck = hf_dir[: -len("hf")] + "ck"  # the fixture's checkpoint, next to its export
    proc = subprocess.run([sys.executable, "tools/generate.py", "--load", ck, "--chat", "--chat-template", "chatml",
                           "--max-new-tokens", "8"], input="hello\nand again\n", cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant> ") == 2


def test_draw_samples_the_distribution_with_one_generator_per_row():
    """The inverse-CDF draw: frequencies follow the probabilities (zero-probability tokens never
    come), and with a generator per row a row's draws do not depend on its batch-mates."""
    from megalite.eval.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).expand(20000, -1)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=6).float() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    assert counts.tolist() == pytest.approx(probs[0].tolist(), abs=0.015)  # 3 standard errors at p = 0.5
    mixed = torch.softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(1)), -1)
    together = draw(mixed, [torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = torch.cat([draw(mixed[i:i + 1], [torch.Generator().manual_seed(s)]) for i, s in enumerate((7, 8, 9))])
    assert together.tolist() == alone.tolist()


def test_repeated_prompts_are_prefilled_once_and_decode_as_alone():
    """Copies of a prompt (online RL's G completions of each) share one prefill; every row still
    decodes as it does alone, greedy or sampled from its own seed, with the cache or without."""
    from megalite.model import GPTModel
    from megalite.parallel.init import initialize
    from tests.test_model import model_config

    # random weights, large: every token depends on its context (a trained tiny model repeats one token)
    model = GPTModel(model_config(init_method_std=0.5, padded_vocab_size=512, max_position_embeddings=64)).eval()
    initialize(model, 0)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], [3] + PROMPTS[1], PROMPTS[0]]  # [3, ...]: starts with the pad id
    seeds = [11, 12, 13, 14, 15]
    for sampling in (Sampling(), Sampling(temperature=1.0, top_k=20)):
        together = generate(model, prompts, 10, sampling, pad_id=3, row_seeds=seeds)
        alone = [generate(model, [p], 10, sampling, pad_id=3, row_seeds=[s])[0] for p, s in zip(prompts, seeds)]
        assert together == alone
        assert generate(model, prompts, 10, sampling, pad_id=3, row_seeds=seeds, use_cache=False) == together
        assert len({tuple(t) for t in together}) > 1 + (sampling.temperature == 0)  # context matters
    assert together[0] != together[2]  # the copies sampled their own completions
