"""Train a byte-fallback BPE tokenizer (sentencepiece) on JSONL or text files.

    python data_tools/train_tokenizer.py --input corpus.jsonl --vocab-size 32000 \
        --output-dir tok/ [--special-tokens "<|im_start|>" "<|im_end|>"]

writes tok/tokenizer.model, which `--tokenizer-type SentencePieceTokenizer
--tokenizer-model tok/tokenizer.model` loads and which exports to Hugging Face as a Llama
tokenizer. Llama's settings: BPE, byte fallback (no unknown characters), digits split one by
one, identity normalisation so decode(encode(text)) == text; ids 0-3 are <unk> <s> </s> <pad>.

For mixed Chinese-English corpora: ``--character-coverage`` (the share of characters that get
their own piece; the rarest rest are spelled in bytes, so a CJK vocabulary of thousands of
characters need not crowd out words: 0.9995 is common), ``--max-piece-length`` (the longest
piece in characters; 16 by default, shorter keeps whole Chinese phrases from becoming
pieces), ``--no-split-digits`` and ``--no-byte-fallback``. After training it prints the
characters per token of each language in a sample of the input (a document's language by its
script: Chinese, Japanese, or other), and writes them as JSON to ``--report FILE``.
"""

import argparse
import json
import os
import re
from collections import defaultdict
from typing import Dict, Iterator, Optional, Sequence

from megalite.data.corpus import expand_inputs, iter_texts
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write, publish, temp_name
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
    character_coverage: float = 0.9999,
    byte_fallback: bool = True,
    split_digits: bool = True,
    max_piece_length: int = 16,
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
            byte_fallback=byte_fallback,
            split_digits=split_digits,
            max_sentencepiece_length=max_piece_length,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            character_coverage=character_coverage,
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


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LETTER = re.compile(r"[^\W\d_]")


def script_language(text: str) -> str:
    """``ja`` (kana), ``zh`` (mostly Han characters) or ``other``, by the text's letters."""
    han, kana = len(_HAN.findall(text)), len(_KANA.findall(text))
    if kana and kana * 20 >= han:
        return "ja"
    return "zh" if han * 2 >= len(_LETTER.findall(text)) else "other"


def chars_per_token(model_path: str, texts: Iterator[str]) -> Dict[str, dict]:
    """Per language (``script_language``): documents, characters, tokens and characters per token."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    totals = defaultdict(lambda: [0, 0, 0])
    for text in texts:
        t = totals[script_language(text)]
        t[0] += 1
        t[1] += len(text)
        t[2] += len(sp.encode(text))
    return {lang: {"documents": d, "chars": c, "tokens": n, "chars_per_token": round(c / max(n, 1), 3)}
            for lang, (d, c, n) in sorted(totals.items())}


def write_report(model_path: str, inputs: Sequence[str], json_key: str = "text", report_path: Optional[str] = None,
                 sample_bytes: int = 20_000_000) -> Dict[str, dict]:
    """Characters per token of each language in the first ``sample_bytes`` of the input,
    printed, and written to ``report_path`` as JSON when given."""
    report = chars_per_token(model_path, iter_texts(expand_inputs(inputs), json_key, sample_bytes))
    if report_path:
        with atomic_write(report_path, "w") as f:
            json.dump({"tokenizer": model_path, "chars_per_token": report}, f, indent=1)
    for lang, r in report.items():
        print(f"{lang:6s} {r['documents']:8,} docs {r['chars']:12,} chars {r['tokens']:12,} tokens "
              f"{r['chars_per_token']:6.2f} chars/token")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="JSONL/.txt/parquet files, folders or globs")
    p.add_argument("--json-key", default="text")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--special-tokens", nargs="*", default=[], help="extra tokens never split")
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="lines sampled for training")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--character-coverage", type=float, default=0.9999,
                   help="share of characters given pieces of their own; the rest are spelled in bytes")
    p.add_argument("--max-piece-length", type=int, default=16, help="longest piece, in characters")
    p.add_argument("--no-split-digits", dest="split_digits", action="store_false",
                   help="let pieces hold several digits (default: one digit per piece)")
    p.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false",
                   help="unknown characters become <unk> instead of their UTF-8 bytes")
    p.add_argument("--report", help="write the characters per token of each language here (JSON)")
    a = p.parse_args(argv)
    if not 0 < a.character_coverage <= 1:
        raise MegaliteError(f"--character-coverage must be in (0, 1], not {a.character_coverage}")
    if a.max_piece_length < 1:
        raise MegaliteError(f"--max-piece-length must be at least 1, not {a.max_piece_length}")
    path = train_tokenizer(a.input, a.output_dir, a.vocab_size, a.json_key, a.special_tokens,
                           a.max_sentences, seed=a.seed, character_coverage=a.character_coverage,
                           byte_fallback=a.byte_fallback, split_digits=a.split_digits,
                           max_piece_length=a.max_piece_length)
    print(f"wrote {path}")
    write_report(path, a.input, a.json_key, a.report)


if __name__ == "__main__":
    run_tool(main)
