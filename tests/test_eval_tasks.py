import csv
import json
import os

import pytest
import torch

from megalite.config import parse_config
from megalite.eval.exams import Question, exam_prompt
from megalite.hf.convert import export_hf
from megalite.training.trainer import pretrain
from tests.conftest import REPO, run_main, tiny_model_args

pytestmark = pytest.mark.usefixtures("one_thread")

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
    run_main("eval_gpt.py", "--load", str(trained / "ck"), "--task", "mmlu_test", "--task-dir", str(task_dir),
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


def test_bleu_and_rouge_on_known_strings():
    import sacrebleu

    from megalite.eval.predict import generation_metrics

    m = generation_metrics(["the cat sat on the mat"], ["the cat is on the mat"])
    # by hand: 5 of 6 words shared (F1 5/6), 3 of 5 bigrams, longest common subsequence 5 words
    assert (m["rouge-1"], m["rouge-2"], m["rouge-l"]) == pytest.approx((500 / 6, 60.0, 500 / 6))
    assert m["bleu-4"] == pytest.approx(sacrebleu.corpus_bleu(["the cat sat on the mat"],
                                                              [["the cat is on the mat"]]).score)
    assert generation_metrics(["a b c d e"], ["a b c d e"])["bleu-4"] == pytest.approx(100.0)
    two = generation_metrics(["the cat sat on the mat", "nothing alike"], ["the cat is on the mat", "zz"])
    assert two["rouge-1"] == pytest.approx(250 / 6)  # the mean over examples
    zh = generation_metrics(["今天天气很好"], ["今天天气不错"])
    try:  # jieba words 今天/天气/很/好 vs 今天/天气/不错: P 2/4, R 2/3; else 4 of 6 characters
        import jieba  # noqa: F401
        import rouge_chinese  # noqa: F401
        expected = 100 * 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
    except ImportError:
        expected = 100 * 4 / 6
    assert zh["rouge-1"] == pytest.approx(expected) and zh["bleu-4"] == pytest.approx(
        sacrebleu.corpus_bleu(["今天天气很好"], [["今天天气不错"]], tokenize="zh").score)


def test_predict_with_generate_writes_predictions_and_their_scores(trained):
    from megalite.eval.predict import generation_metrics

    records = [{"instruction": "Name a Python keyword.", "output": "The keyword is def."},
               {"instruction": "Continue:", "input": "A call always returns", "output": "some value."},
               {"messages": [{"role": "user", "content": "What is None?"},
                             {"role": "assistant", "content": "The null object."}]}]
    sft = trained / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in records))
    run_main("eval_gpt.py", "--load", str(trained / "ck"), "--predict-with-generate", "--text-file", str(sft),
             "--chat-template", "chatml", "--max-new-tokens", "8", "--output-path", str(trained / "pred"))
    rows = [json.loads(line) for line in open(trained / "pred" / "generated_predictions.jsonl")]
    assert [r["label"] for r in rows] == ["The keyword is def.", "some value.", "The null object."]
    assert rows[1]["prompt"] == "<|im_start|>user\nContinue:\nA call always returns<|im_end|>\n<|im_start|>assistant\n"
    metrics = json.loads((trained / "pred" / "predict_results.json").read_text())
    assert metrics == pytest.approx(generation_metrics([r["predict"] for r in rows], [r["label"] for r in rows]))


def test_bad_input_gives_one_clear_error(trained, tmp_path):
    from megalite.errors import MegaliteError
    from megalite.eval.cli import main

    proc = run_main("eval_gpt.py", "--load", str(tmp_path / "nothing"), "--perplexity", "--text-file", "x.txt",
                    check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: --load {tmp_path / 'nothing'}: no checkpoint found")
    ck = str(trained / "ck")
    (tmp_path / "no_text.jsonl").write_text('{"text": "fine"}\n{"content": "the text is elsewhere"}\n')
    with pytest.raises(MegaliteError, match=r"no_text.jsonl line 2: no text field 'text' \(fields: content\)"):
        main(["--load", ck, "--perplexity", "--text-file", str(tmp_path / "no_text.jsonl")])
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "broken.yaml").write_text('task: broken\ndoc_to_text: "{{x}}\n  - [unclosed\n')
    with pytest.raises(MegaliteError, match=r"broken.yaml: not a valid lm-eval task file \(while scanning"):
        main(["--load", ck, "--tasks", "broken", "--include-path", str(tmp_path / "tasks")])
    (tmp_path / "exam" / "test").mkdir(parents=True)
    (tmp_path / "exam" / "test" / "maths_test.csv").write_text("1+1?,1,2,3,4,B\n2+2?,1,2,3,4,four\n")
    with pytest.raises(MegaliteError, match=r"maths_test.csv row 2: answer 'four' is not one of A, B, C, D"):
        main(["--load", ck, "--task", "mmlu", "--task-dir", str(tmp_path / "exam"), "--n-shot", "0"])
    with pytest.raises(MegaliteError, match="--n-shot 5: maths has only 0 dev examples"):
        main(["--load", ck, "--task", "mmlu", "--task-dir", str(tmp_path / "exam")])
    (tmp_path / "sft.jsonl").write_text('{"prompt": "hi", "response": "hello"}\n')
    with pytest.raises(MegaliteError, match=r"sft.jsonl line 1: expected alpaca fields 'instruction' and 'output'"):
        main(["--load", ck, "--predict-with-generate", "--text-file", str(tmp_path / "sft.jsonl")])
    with pytest.raises(MegaliteError, match="choose exactly one of --perplexity, --tasks"):
        main(["--load", ck, "--perplexity", "--task", "mmlu"])


@pytest.mark.slow
def test_unknown_harness_task(trained):
    """Slow: an unknown name means indexing all of lm-eval's own tasks (~30 s)."""
    from megalite.errors import MegaliteError
    from megalite.eval.cli import main

    with pytest.raises(MegaliteError, match="unknown lm-eval task no_such_task: not among lm-eval's tasks or in"):
        main(["--load", str(trained / "ck"), "--tasks", "no_such_task", "--include-path",
              os.path.join(REPO, "examples", "eval_tasks")])


@pytest.mark.parametrize("template", ["llama2", "mistral", "alpaca"])
def test_evaluation_prompts_render_special_tokens_as_training_does(spm_model, template):
    """Generation metrics and lm-eval's chat path see the BOS / EOS texts a template emits."""
    from megalite.data.chat import BUILTIN, render_chat
    from megalite.data.tokenizer import build_tokenizer
    from megalite.eval.harness import MegaliteLM
    from megalite.eval.predict import Example, render_prompt

    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Why?"}]
    trained_as = render_chat(BUILTIN[template], chat, True, **tok.special_tokens)
    assert "</s>" in trained_as
    assert render_prompt(Example(chat, "x"), BUILTIN[template], tok) == trained_as
    lm = MegaliteLM(model=torch.nn.Linear(1, 1), tokenizer=tok, max_length=8, chat_template=BUILTIN[template])
    assert lm.apply_chat_template(chat) == trained_as
