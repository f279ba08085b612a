"""``--predict-with-generate``: answer every prompt of an SFT file and score the answers
against the references with BLEU-4 (sacrebleu) and ROUGE-1/2/L F1 (rouge-score), as
LLaMA-Factory's ``do_predict`` reports them (0-100).

Records are alpaca-style (``instruction`` [+ ``input``] -> ``output``, optional ``system``
and ``history`` of [user, assistant] pairs) or OpenAI-style ``messages`` whose last message
is the assistant's reference answer. Prompts are rendered with the chat template
(``--chat-template`` or the tokenizer's); alpaca records may also go without one.
Chinese text is scored on jieba words with rouge-chinese when both are installed, else on
characters; BLEU uses sacrebleu's Chinese tokenization for it.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from megalite.data.chat import render_chat
from megalite.data.tokenizer import Tokenizer
from megalite.errors import MegaliteError
from megalite.eval.generate import generate
from megalite.eval.sampling import Sampling, trim_stop_string
from megalite.eval.texts import read_jsonl

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass
class Example:
    messages: List[Dict[str, str]]  # the conversation up to the answer
    label: str


def read_sft_examples(path: str) -> List[Example]:
    out = []
    for line, r in read_jsonl(path):
        if isinstance(r.get("messages"), list) and r["messages"]:
            *prompt, last = r["messages"]
            if not isinstance(last, dict) or last.get("role") != "assistant" or not prompt:
                raise MegaliteError(f"{path} line {line}: the last of 'messages' must be the assistant's answer, "
                                    "after at least one message")
            out.append(Example([{"role": m["role"], "content": m["content"]} for m in prompt], last["content"]))
        elif isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str):
            messages = [{"role": "system", "content": r["system"]}] if r.get("system") else []
            for user, assistant in r.get("history") or []:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            query = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            out.append(Example(messages + [{"role": "user", "content": query}], r["output"]))
        else:
            raise MegaliteError(f"{path} line {line}: expected alpaca fields 'instruction' and 'output', or "
                                f"'messages' (found: {', '.join(r) or 'none'})")
    if not out:
        raise MegaliteError(f"{path}: no examples")
    return out


def render_prompt(example: Example, template: Optional[str], tok: Tokenizer) -> str:
    """The prompt text as training rendered it: the template sees the tokenizer's special tokens."""
    if template is not None:
        return render_chat(template, example.messages, add_generation_prompt=True, **tok.special_tokens)
    if len(example.messages) > 1:
        raise MegaliteError("conversations with a system prompt, history or several messages need a chat template "
                            "(--chat-template chatml, or a tokenizer that has one)")
    return example.messages[0]["content"]


def predict(model, tok: Tokenizer, examples: Sequence[Example], template: Optional[str], max_new_tokens: int = 256,
            batch_size: int = 8) -> List[Dict[str, str]]:
    """Greedy answers: [{"prompt", "predict", "label"}] in the file's order."""
    stops = ["<|im_end|>"] if template and "<|im_end|>" in template else []
    sampling = Sampling(stop_ids=[tok.eod], stop_strings=stops)
    pad = tok.pad if tok.pad is not None else tok.eod
    prompts = [render_prompt(e, template, tok) for e in examples]
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers = generate(model, [tok.encode(p) for p in batch], max_new_tokens, sampling, pad, decode=tok.decode)
        for prompt, ids, e in zip(batch, answers, examples[start : start + batch_size]):
            text = tok.decode([i for i in ids if i not in tok.special_ids and i < tok.vocab_size])
            out.append({"prompt": prompt, "predict": trim_stop_string(text, stops).strip(), "label": e.label})
    return out


def _is_chinese(texts: Sequence[str]) -> bool:
    return any(_CJK.search(t) for t in texts)


class _CharTokenizer:
    """Chinese characters one by one, other text by words: for rouge-score, whose own
    tokenizer keeps only a-z0-9."""

    def tokenize(self, text: str) -> List[str]:
        return re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+", text.lower())


def _rouge(predictions: Sequence[str], references: Sequence[str], chinese: bool) -> Dict[str, float]:
    if chinese:
        try:  # optional: Chinese words by jieba when it and rouge-chinese are installed
            import jieba
            from rouge_chinese import Rouge
        except ImportError:
            pass
        else:
            sums = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
            for p, r in zip(predictions, references):
                p, r = " ".join(jieba.cut(p)), " ".join(jieba.cut(r))
                if p.strip() and r.strip():
                    scores = Rouge().get_scores(p, r)[0]
                    for k in sums:
                        sums[k] += scores[k]["f"]
            return {k: 100 * v / len(predictions) for k, v in sums.items()}
    from rouge_score.rouge_scorer import RougeScorer  # optional dependency (the eval extra)

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_CharTokenizer() if chinese else None)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(predictions, references):
        scores = scorer.score(r, p)
        for k in sums:
            sums[k] += scores[k].fmeasure
    return {"rouge-1": 100 * sums["rouge1"] / len(predictions), "rouge-2": 100 * sums["rouge2"] / len(predictions),
            "rouge-l": 100 * sums["rougeL"] / len(predictions)}


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    """Corpus BLEU-4 and mean ROUGE-1/2/L F1 of ``predictions`` against ``references`` (0-100)."""
    import sacrebleu  # optional dependency (the eval extra)

    if not predictions or len(predictions) != len(references):
        raise MegaliteError(f"{len(predictions)} predictions for {len(references)} references")
    chinese = _is_chinese(references)
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize="zh" if chinese else "13a")
    return {"bleu-4": bleu.score, **_rouge(predictions, references, chinese), "examples": len(predictions)}
