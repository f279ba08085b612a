"""Scoring text with a trained reward model: a megalite checkpoint (``dpo_gpt.py --pref-method rm``) or its
Hugging Face export (a ``...ForSequenceClassification`` folder), in one process.

The model is built and run in a one-process layout held only while it works (megalite.parallel.state.planning),
so a training job with its own layout (rl_gpt.py's reward model) keeps its parallel state. Records are
tokenized as training tokenized them (megalite.data.preference.sequence_ids: text with EOS
appended to the completion, messages through the chat template the run stored) and each sequence's score
is read at its last non-pad token. A record is one of

- ``{"prompt": ..., "completion": ...}`` (strings, or message lists): ``score``;
- ``{"text": "..."}``: the text tokenized as it is (``tokenizer(text)``): ``score``;
- a preference pair ``{"prompt", "chosen", "rejected"}``: ``score_chosen``, ``score_rejected`` and
  ``chosen_wins``; the pairs' accuracy is the share where chosen scores higher.
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megalite.checkpoint.layout import find_checkpoint, saved_settings
from megalite.checkpoint.load import load_model_state
from megalite.config import Config
from megalite.data.chat import resolve_template
from megalite.data.preference import check_pair, sequence_ids
from megalite.data.reward import pad_id_of, score_index
from megalite.data.sft_formats import read_records
from megalite.data.tokenizer import HuggingFaceTokenizer
from megalite.errors import MegaliteError
from megalite.model import GPTModel
from megalite.model.heads import ScoreHead, ScoreModelWeights
from megalite.parallel import state
from megalite.posttrain.lora_io import full_model_state
from megalite.posttrain.stage import is_hf_folder
from megalite.training.data import build_tokenizer_from
from megalite.utils.atomic import atomic_write


def one_process():
    """The single-process parallel layout, for as long as the context lasts."""
    return state.planning(tp=1, pp=1, tp_rank=0, pp_rank=0)


class RewardScorer:
    """``score(sequences)``: one float per token-id sequence, from a megalite checkpoint or an HF folder,
    on ``device`` (the CPU when None)."""

    def __init__(self, load: str, batch_size: int = 16, device=None):
        self.batch_size, self.device = batch_size, torch.device(device or "cpu")
        if os.path.isdir(load) and is_hf_folder(load):
            self._load_hf(load)
        else:
            with one_process():
                self._load_megalite(load)
        self.model.to(self.device)

    def _load_megalite(self, load: str) -> None:
        folder = find_checkpoint(load)
        if folder is None:
            raise MegaliteError(f"--load {load}: neither a megalite checkpoint nor a Hugging Face model folder")
        cfg = Config.from_dict(saved_settings(folder))
        if cfg.dpo.pref_method != "rm":
            raise MegaliteError(f"--load {load}: not a reward model (train one with dpo_gpt.py --pref-method rm)")
        weights, _ = full_model_state(folder)  # a LoRA run's adapters merged in
        model = GPTModel(cfg.model, head=ScoreHead)
        current = model.state_dict()
        load_model_state(model, {"model": weights}, folder, lambda w: ScoreModelWeights(w, current))
        self.model, self.hf = model.eval(), False
        self.tokenizer = build_tokenizer_from(cfg)
        self.template = resolve_template(cfg.chat.chat_template, self.tokenizer)
        self.pad_id = pad_id_of(self.tokenizer)
        learned = cfg.model.position_embedding_type == "learned_absolute"  # RoPE has no hard limit
        self.max_length = cfg.model.max_position_embeddings if learned else None

    def _load_hf(self, folder: str) -> None:
        import transformers  # optional dependency: only for scoring a Hugging Face folder

        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        if self.model.config.num_labels != 1:
            raise MegaliteError(f"--load {folder}: has {self.model.config.num_labels} labels; a reward model has one")
        self.hf, self.tokenizer = True, HuggingFaceTokenizer(folder)
        self.template = resolve_template(None, self.tokenizer)
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            self.pad_id = pad_id_of(self.tokenizer)
        self.max_length = getattr(self.model.config, "n_positions", None)  # GPT-2's learned positions

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]]) -> List[float]:
        out = []
        for start in range(0, len(sequences), self.batch_size):
            part = sequences[start:start + self.batch_size]
            tokens = torch.full((len(part), max(map(len, part))), self.pad_id, dtype=torch.int64)
            mask = torch.zeros_like(tokens)
            for b, ids in enumerate(part):
                tokens[b, :len(ids)], mask[b, :len(ids)] = torch.as_tensor(ids), 1
            tokens, mask = tokens.to(self.device), mask.to(self.device)
            if self.hf:  # HF finds each row's last non-pad token itself
                out += self.model(tokens, attention_mask=mask).logits[:, 0].tolist()
            else:
                where = torch.tensor([score_index(ids, self.pad_id) for ids in part], device=self.device)
                with one_process():
                    scores = self.model(tokens)
                out += scores[torch.arange(len(part), device=self.device), where].float().tolist()
        return out

    def ids(self, prompt, completion) -> List[int]:
        return sequence_ids(self.tokenizer, self.template, prompt, completion)


def _sequences(scorer: RewardScorer, record: Dict) -> List[List[int]]:
    """The token ids a record is scored by (one, or chosen and rejected)."""
    if not isinstance(record, dict):
        raise MegaliteError("a record must be a JSON object")
    if "chosen" in record or "rejected" in record:
        pair = {k: record.get(k) for k in ("prompt", "chosen", "rejected")}
        check_pair(pair)
        return [scorer.ids(pair["prompt"], pair[k]) for k in ("chosen", "rejected")]
    if "completion" in record:
        prompt, completion = record.get("prompt"), record["completion"]
        if not all(isinstance(x, str) for x in (prompt, completion)) and \
                not all(isinstance(x, list) for x in (prompt, completion)):
            raise MegaliteError("'prompt' and 'completion' must both be strings or both message lists")
        return [scorer.ids(prompt, completion)]
    if isinstance(record.get("text"), str):
        return [scorer.tokenizer.encode_text(record["text"])]
    raise MegaliteError("expected 'prompt' + 'completion', 'text', or a pair 'prompt' / 'chosen' / 'rejected'")


def score_records(scorer: RewardScorer, records: Sequence[Dict],
                  where: str = "input") -> Tuple[List[Dict], Optional[float]]:
    """(records with their scores, the pairs' accuracy or None without pairs)."""
    per_record = []
    for i, record in enumerate(records):
        try:
            seqs = _sequences(scorer, record)
        except MegaliteError as e:
            raise MegaliteError(f"{where}: record {i}: {e}") from None
        too_long = [len(s) for s in seqs if scorer.max_length and len(s) > scorer.max_length]
        if too_long:
            raise MegaliteError(f"{where}: record {i}: {too_long[0]} tokens, more than the model's "
                                f"{scorer.max_length} positions")
        per_record.append(seqs)
    flat = [s for seqs in per_record for s in seqs]
    scores = iter(scorer.score(flat))
    out, wins = [], []
    for record, seqs in zip(records, per_record):
        if len(seqs) == 2:
            chosen, rejected = next(scores), next(scores)
            wins.append(chosen > rejected)
            out.append({**record, "score_chosen": chosen, "score_rejected": rejected, "chosen_wins": chosen > rejected})
        else:
            out.append({**record, "score": next(scores)})
    return out, (sum(wins) / len(wins) if wins else None)


def score_file(load: str, input_path: str, output_path: str, batch_size: int = 16) -> Dict:
    """Score every record of ``input_path`` (JSONL / JSON) into ``output_path`` (JSONL, written
    whole or not at all); returns ``{"records", "pairs", "accuracy"}``."""
    records = read_records(input_path)
    if not records:
        raise MegaliteError(f"{input_path}: holds no records")
    scored, accuracy = score_records(RewardScorer(load, batch_size), records, input_path)
    with atomic_write(output_path, "w") as f:
        for r in scored:
            f.write(json.dumps(r) + "\n")
    return {"records": len(scored), "pairs": sum("chosen_wins" in r for r in scored), "accuracy": accuracy}
