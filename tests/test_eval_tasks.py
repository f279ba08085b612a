import csv
import json

import pytest
import torch

from megalite.config import parse_config
from megalite.eval.exams import Question, exam_prompt
from megalite.hf.convert import export_hf
from megalite.training.trainer import pretrain
from tests.conftest import run_tool, tiny_model_args

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("tasks")
    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(tmp / "ck"), train_iters=3,
                                          max_position_embeddings=512)))
    export_hf(str(tmp / "ck"), str(tmp / "hf"), dtype="fp32")
    return tmp


EXAM = {  # subject -> (dev rows, test rows): question, A, B, C, D, answer
    "python_keywords": (
        [["Which keyword defines a function?", "def", "fun", "lambda", "func", "A"],
         ["Which keyword leaves a loop?", "exit", "break", "stop", "end", "B"]],
        [["Which keyword starts a conditional?", "when", "case", "if", "cond", "C"],
         ["Which keyword handles exceptions?", "catch", "rescue", "except", "trap", "C"],
         ["Which keyword defines a class?", "class", "struct", "type", "object", "A"]]),
    "python_types": (
        [["What type is 1.5?", "int", "float", "str", "bool", "B"],
         ["What type is 'a'?", "str", "char", "bytes", "int", "A"]],
        [["What type is True?", "int", "str", "bool", "None", "C"],
         ["What type is []?", "tuple", "dict", "set", "list", "D"]]),
}


def test_mmlu_layout_exam_accuracy_counted_by_hand(trained):
    task_dir = trained / "exam"
    for subject, (dev, test) in EXAM.items():
        for split, rows in (("dev", dev), ("test", test)):
            (task_dir / split).mkdir(parents=True, exist_ok=True)
            with open(task_dir / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
    (task_dir / "mapping.json").write_text(json.dumps({"python_types": {"name": "Python types", "category": "STEM"}}))
    run_tool("eval_gpt.py", "--load", str(trained / "ck"), "--task", "mmlu_test", "--task-dir", str(task_dir),
             "--n-shot", "2", "--output-path", str(trained / "exam_out"))
    result = json.loads((trained / "exam_out" / "mmlu.json").read_text())

    q = Question("What type is True?", dict(zip("ABCD", ["int", "str", "bool", "None"])), "C")
    shots = [Question(r[0], dict(zip("ABCD", r[1:5])), r[5]) for r in EXAM["python_types"][0]]
    assert exam_prompt("Python types", shots, q) == (
        "The following are multiple choice questions (with answers) about Python types.\n\n"
        "What type is 1.5?\nA. int\nB. float\nC. str\nD. bool\nAnswer: B\n\n"
        "What type is 'a'?\nA. str\nB. char\nC. bytes\nD. int\nAnswer: A\n\n"
        "What type is True?\nA. int\nB. str\nC. bool\nD. None\nAnswer:")
    # count by hand with transformers on the export: the likeliest " X" after each prompt
    tok = transformers.AutoTokenizer.from_pretrained(str(trained / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(trained / "hf"), dtype=torch.float32).eval()
    correct_total = 0
    for subject, (dev, test) in EXAM.items():
        shots = [Question(r[0], dict(zip("ABCD", r[1:5])), r[5]) for r in dev]
        name = "Python types" if subject == "python_types" else "python keywords"
        correct = 0
        for row in test:
            q = Question(row[0], dict(zip("ABCD", row[1:5])), row[5])
            prompt = exam_prompt(name, shots, q)
            n_context = len(tok.encode(prompt, add_special_tokens=False))
            best, best_score = None, -float("inf")
            for letter in "ABCD":
                ids = tok.encode(prompt + " " + letter, add_special_tokens=False)
                with torch.no_grad():
                    logprobs = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
                score = sum(float(logprobs[t - 1, ids[t]]) for t in range(n_context, len(ids)))
                if score > best_score:
                    best, best_score = letter, score
            correct += best == q.answer
        assert result["subjects"][subject]["correct"] == correct
        assert result["subjects"][subject]["accuracy"] == pytest.approx(100 * correct / len(test))
        correct_total += correct
    assert result["subjects"]["python_types"]["category"] == "STEM"
    assert result["average"] == pytest.approx(100 * correct_total / 5)
