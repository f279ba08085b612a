"""The tokenizers the tokenization-equality tests (SFT, DPO, KTO, RM) run with, all built here from a
few sentences (no download), because megalite's ids must equal transformers' and trl's for the kinds
of tokenizer users bring, not for one:

- ``bytelevel``: a GPT-2-style byte-level BPE (``tokenizer.json``) whose post-processor adds ``<s>``,
  with ChatML and Llama-3 header tokens as special tokens and a ChatML template;
- ``llama``: a Llama-2 / Mistral-style ``tokenizer.json``: Metaspace pre-tokenizer (prepend scheme
  "first"), BPE over the 256 byte-fallback pieces ``<0x00>``..``<0xFF>``, a TemplateProcessing
  post-processor adding ``<s>``, a ``LlamaTokenizer`` config with bos / eos / unk / pad and
  ``add_bos_token``, and a Mistral-style template that itself emits ``bos_token`` at the start and
  ``eos_token`` after each assistant turn;
- ``sentencepiece``: a ``.model`` trained by sentencepiece with its defaults (unigram, ``nmt_nfkc``
  normalization, ``<s>`` / ``</s>`` control pieces) and ``<|im_start|>`` / ``<|im_end|>`` as
  user-defined symbols; megalite reads it as ``--tokenizer-type SentencePieceTokenizer``,
  transformers and trl read the Hugging Face folder megalite exports from it.

Every vocabulary stays under the 384 ids of the tiny test models.
"""

import functools
import io
import json
import os
from dataclasses import dataclass

import pytest

WORDS = ("the sky is blue and the grass is green while water flows down the river to the sea where "
         "fish swim under boats and birds fly over clouds").split()
CORPUS = [" ".join(WORDS), "Be brief.", "Hello there", "Hi, how are you?", "What is the capital of France?",
          "Paris. Grüße!", "### Instruction:\n", "### Response:\n", "[INST] [/INST] <<SYS>>"]
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Mistral-style: the template writes BOS itself, so a tokenizer that adds one too must not double it.
MISTRAL_STYLE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                 "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}"
                 "{{ ' ' + m['content'] + eos_token }}{% else %}{{ m['content'] + '\\n\\n' }}{% endif %}{% endfor %}")


@dataclass
class ZooTokenizer:
    """One tokenizer as megalite's flags name it and as the HF folder transformers / trl load."""
    name: str
    tokenizer_type: str
    tokenizer_model: str
    hf_dir: str
    template: str  # its own chat template (the HF folder's too)
    adds_bos: bool  # does ``tokenizer(text)`` add a BOS (its post-processor)?

    @functools.cached_property
    def megalite(self):
        from megalite.data.tokenizer import build_tokenizer

        return build_tokenizer(self.tokenizer_type, self.tokenizer_model)

    @functools.cached_property
    def hf(self):
        import transformers

        return transformers.AutoTokenizer.from_pretrained(self.hf_dir)


def _write_config(folder, **config) -> None:
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)


def bytelevel(folder) -> ZooTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    _write_config(folder, tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>",
                  pad_token="</s>", chat_template=CHATML)
    return ZooTokenizer("bytelevel", "HuggingFaceTokenizer", str(folder), str(folder), CHATML, True)


def llama(folder) -> ZooTokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]
    # Pieces learned word by word (a piece starts with the marker, never spans two words)...
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    trained.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(vocab_size=110, special_tokens=specials))
    learned = json.loads(trained.to_str())["model"]
    # ...laid out as Llama's: the specials, the byte pieces, then the learned pieces.
    vocab = {p: i for i, p in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    _write_config(folder, tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                  pad_token="<unk>", add_bos_token=True, add_eos_token=False, legacy=False,
                  chat_template=MISTRAL_STYLE)
    return ZooTokenizer("llama", "HuggingFaceTokenizer", str(folder), str(folder), MISTRAL_STYLE, True)


def sentencepiece(folder) -> ZooTokenizer:
    import sentencepiece as spm

    from megalite.hf.tokenizer import export_tokenizer
    from tests.conftest import english_documents

    os.makedirs(folder, exist_ok=True)
    model = io.BytesIO()
    # Defaults but the size, and full character coverage with the tests' rarer characters in the
    # corpus: without byte fallback (the default) a character unseen in training is <unk>.
    rare = "\u00a33bn, \u6771\u4eac \U0001f600 \u2014 \u201cquoted\u201d \u2026"
    spm.SentencePieceTrainer.train(sentence_iterator=iter((CORPUS + [rare]) * 10 + english_documents()[:300]),
                                   model_writer=model, vocab_size=300, character_coverage=1.0,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2)
    path = os.path.join(folder, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    template = "{{ bos_token }}" + CHATML
    zoo = ZooTokenizer("sentencepiece", "SentencePieceTokenizer", path, os.path.join(folder, "hf"), template, False)
    export_tokenizer(zoo.megalite, zoo.hf_dir, template)
    return zoo


BUILDERS = {"bytelevel": bytelevel, "llama": llama, "sentencepiece": sentencepiece}


@pytest.fixture(scope="session", params=list(BUILDERS))
def zoo(request, tmp_path_factory) -> ZooTokenizer:
    """Each tokenizer of the zoo in turn (built once a session)."""
    return BUILDERS[request.param](tmp_path_factory.mktemp(f"zoo_{request.param}"))
