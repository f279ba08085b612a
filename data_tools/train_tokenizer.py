"""Train a byte-fallback BPE tokenizer (sentencepiece) on JSONL or text files.

    python data_tools/train_tokenizer.py --input corpus.jsonl --vocab-size 32000 \
        --output-dir tok/ [--special-tokens "<|im_start|>" "<|im_end|>"]

writes tok/tokenizer.model, which `--tokenizer-type SentencePieceTokenizer
--tokenizer-model tok/tokenizer.model` loads and which exports to Hugging Face as a Llama
tokenizer. Llama's settings: BPE, byte fallback (no unknown characters), digits split one by
one, identity normalisation so decode(encode(text)) == text; ids 0-3 are <unk> <s> </s> <pad>.
"""

import argparse
import os
from typing import Iterator, Optional, Sequence

from megalite.data.corpus import expand_inputs, iter_texts
from megalite.errors import MegaliteError
from megalite.utils.atomic import publish, temp_name
from megalite.utils.cli import run_tool

MAX_LINE_BYTES = 16384


def _lines(texts: Iterator[str]) -> Iterator[str]:
    """sentencepiece learns from lines; over-long ones are cut (4 bytes per char at most)."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line[:MAX_LINE_BYTES // 4] if len(line.encode()) > MAX_LINE_BYTES else line


def train_tokenizer(
    inputs: Sequence[str],
    output_dir: str,
    vocab_size: int,
    json_key: str = "text",
    special_tokens: Sequence[str] = (),
    max_sentences: int = 2_000_000,
    max_input_bytes: Optional[int] = None,
    seed: int = 1234,
) -> str:
    """Train and return the path of the written ``tokenizer.model``."""
    import sentencepiece as spm

    files = expand_inputs(inputs)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "tokenizer.model")
    tmp_prefix = temp_name(os.path.join(output_dir, "tokenizer"))
    try:
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(iter_texts(files, json_key, max_input_bytes)),
            model_prefix=tmp_prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            character_coverage=0.9999,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=MAX_LINE_BYTES,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            user_defined_symbols=list(special_tokens),
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise MegaliteError(f"tokenizer training failed: {e}") from e
    finally:
        if os.path.exists(tmp_prefix + ".vocab"):
            os.remove(tmp_prefix + ".vocab")
    publish(tmp_prefix + ".model", path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="JSONL/.txt/parquet files, folders or globs")
    p.add_argument("--json-key", default="text")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--special-tokens", nargs="*", default=[], help="extra tokens never split")
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="lines sampled for training")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    path = train_tokenizer(a.input, a.output_dir, a.vocab_size, a.json_key, a.special_tokens,
                           a.max_sentences, seed=a.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_tool(main)
