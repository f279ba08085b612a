"""MMLU-style exams from local files (MMLU, C-Eval, CMMLU layouts), scored as LLaMA-Factory's
``eval --task mmlu_test --n_shot 5`` reports them: accuracy per subject, per category and
averaged over all questions.

Layout of ``--task-dir``: one CSV per subject and split, ``dev/<subject>_dev.csv`` (the
few-shot examples) and ``test/<subject>_test.csv`` (or ``val/<subject>_val.csv``). Rows are
question, A, B, C, D, answer -- without a header (MMLU) or with one naming the columns
(C-Eval's id/question/A/B/C/D/answer/..., CMMLU's Question/A/B/C/D/Answer). An optional
``mapping.json`` gives each subject a display name and category:
``{"abstract_algebra": {"name": "abstract algebra", "category": "STEM"}}``.

Each question follows ``n_shot`` dev examples of its subject; the model's answer is the choice
letter whose continuation after "Answer:" it finds most likely.
"""

import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from megalite.data.tokenizer import Tokenizer
from megalite.errors import MegaliteError
from megalite.eval.scoring import model_positions, token_logprobs

HEADERS = {
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "Answer:", " "),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "答案：", ""),
}
CHINESE_EXAMS = ("ceval", "cmmlu")
SPLIT_FOLDERS = {"test": ("test",), "validation": ("val", "validation", "dev_val"), "val": ("val", "validation"),
                 "dev": ("dev",)}


@dataclass
class Question:
    text: str
    choices: Dict[str, str]  # letter -> choice text
    answer: str


def parse_task(task: str) -> Tuple[str, str]:
    """'mmlu_test' -> ('mmlu', 'test'); 'ceval_validation' -> ('ceval', 'validation'); 'mmlu' -> test."""
    name, _, split = task.rpartition("_")
    if name and split in SPLIT_FOLDERS:
        return name, split
    return task, "test"


def read_questions(path: str) -> List[Question]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except UnicodeDecodeError:
        raise MegaliteError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise MegaliteError(f"{path}: no questions")
    header = [c.strip() for c in rows[0]]
    lowered = [c.lower() for c in header]
    if "question" in lowered and "answer" in lowered:
        q, a = lowered.index("question"), lowered.index("answer")
        letters = [(c, i) for i, c in enumerate(header) if len(c) == 1 and c.isupper()]
        rows, first_line = rows[1:], 2
    else:
        q, a, letters, first_line = 0, len(header) - 1, [(c, i + 1) for i, c in enumerate("ABCD")], 1
    if len(letters) < 2:
        raise MegaliteError(f"{path}: expected choice columns A, B, C, D")
    out = []
    for line, row in enumerate(rows, first_line):
        if len(row) <= max(q, a, *(i for _, i in letters)):
            raise MegaliteError(f"{path} row {line}: expected question, {', '.join(c for c, _ in letters)} and answer "
                                f"columns, found {len(row)} columns")
        answer = row[a].strip()
        if answer not in dict(letters):
            raise MegaliteError(f"{path} row {line}: answer {answer!r} is not one of "
                                f"{', '.join(c for c, _ in letters)}")
        out.append(Question(row[q].strip(), {c: row[i].strip() for c, i in letters}, answer))
    return out


def format_question(q: Question, lang: str, with_answer: bool) -> str:
    _, answer_word, space = HEADERS[lang]
    text = q.text + "".join(f"\n{c}. {choice}" for c, choice in q.choices.items()) + "\n" + answer_word
    return text + (f"{space}{q.answer}\n\n" if with_answer else "")


def exam_prompt(subject: str, shots: List[Question], q: Question, lang: str = "en") -> str:
    """The header, ``shots`` answered, then ``q`` up to "Answer:"."""
    return (HEADERS[lang][0].format(subject=subject) + "".join(format_question(s, lang, True) for s in shots)
            + format_question(q, lang, False))


def _subject_files(folder: str, split: str) -> Dict[str, str]:
    return {name[: -len(f"_{split}.csv")]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.endswith(f"_{split}.csv")}


def find_subjects(task_dir: str, split: str) -> Dict[str, Tuple[Optional[str], str]]:
    """{subject: (dev file or None, file of the evaluated split)}."""
    if not os.path.isdir(task_dir):
        raise MegaliteError(f"--task-dir {task_dir}: no such folder")
    for folder in SPLIT_FOLDERS.get(split, (split,)):
        path = os.path.join(task_dir, folder)
        if os.path.isdir(path) and _subject_files(path, folder):
            evaluated = _subject_files(path, folder)
            break
    else:
        folder = SPLIT_FOLDERS.get(split, (split,))[0]
        raise MegaliteError(f"--task-dir {task_dir}: no {split} questions (expected {folder}/<subject>_{folder}.csv)")
    dev = _subject_files(os.path.join(task_dir, "dev"), "dev") if os.path.isdir(os.path.join(task_dir, "dev")) else {}
    return {s: (dev.get(s), f) for s, f in evaluated.items()}


def _read_mapping(task_dir: str) -> Dict:
    path = os.path.join(task_dir, "mapping.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MegaliteError(f"{path}: not valid JSON ({e.msg})") from None


def _choice_scores(model, tok: Tokenizer, prompts: List[str], letters: List[List[str]], space: str,
                   max_length: int, batch_size: int) -> List[Dict[str, float]]:
    """Log-probability of each choice letter after each prompt (prompts cut from the left to fit)."""
    requests = []  # (prompt index, letter, tokens, continuation length)
    for p, (prompt, options) in enumerate(zip(prompts, letters)):
        context = tok.encode(prompt)
        for letter in options:
            whole = tok.encode(prompt + space + letter)
            n = max(len(whole) - len(context), 1)
            requests.append((p, letter, whole[-(max_length + 1):], n))
    pad = tok.pad if tok.pad is not None else tok.eod
    scores: List[Dict[str, float]] = [{} for _ in prompts]
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        for (p, letter, _, n), (logprobs, _) in zip(batch, token_logprobs(model, [r[2] for r in batch], pad)):
            scores[p][letter] = float(logprobs[-n:].sum())
    return scores


def run_exam(model, tok: Tokenizer, task_dir: str, task: str = "mmlu_test", n_shot: int = 5, batch_size: int = 8,
             limit: Optional[int] = None, max_length: Optional[int] = None, lang: Optional[str] = None) -> Dict:
    """Accuracy (in %) per subject, per category and on average over every question."""
    name, split = parse_task(task)
    lang = lang or ("zh" if name in CHINESE_EXAMS else "en")
    max_length = max_length or model_positions(model)
    mapping = _read_mapping(task_dir)
    subjects, correct_by_category, total_by_category = {}, {}, {}
    for subject, (dev_file, test_file) in find_subjects(task_dir, split).items():
        shots = read_questions(dev_file)[:n_shot] if dev_file and n_shot > 0 else []
        if n_shot > len(shots):
            raise MegaliteError(f"--n-shot {n_shot}: {subject} has only {len(shots)} dev examples "
                                f"({dev_file or 'no dev file'})")
        questions = read_questions(test_file)[:limit]
        info = mapping.get(subject, {})
        display = info.get("name", subject.replace("_", " "))
        prompts = [exam_prompt(display, shots, q, lang) for q in questions]
        scores = _choice_scores(model, tok, prompts, [list(q.choices) for q in questions], HEADERS[lang][2],
                                max_length, batch_size)
        picked = [max(s, key=s.get) for s in scores]
        correct = sum(p == q.answer for p, q in zip(picked, questions))
        category = info.get("category", "Other")
        subjects[subject] = {"accuracy": 100.0 * correct / len(questions), "correct": correct,
                             "total": len(questions), "category": category, "predictions": picked}
        correct_by_category[category] = correct_by_category.get(category, 0) + correct
        total_by_category[category] = total_by_category.get(category, 0) + len(questions)
    categories = {c: 100.0 * correct_by_category[c] / total_by_category[c] for c in sorted(total_by_category)}
    average = 100.0 * sum(correct_by_category.values()) / sum(total_by_category.values())
    return {"task": name, "split": split, "n_shot": n_shot, "average": average, "categories": categories,
            "subjects": subjects}
