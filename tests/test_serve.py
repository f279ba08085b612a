"""tools/serve.py's server (megalite.serve), started by the test on a free loopback port and
spoken to with the real `openai` client and httpx: the API subset, greedy answers equal to
tools/generate.py's, continuous batching, limits and errors, the chat page."""

import io
import json
import socket
import sys
import threading
import time

import pytest
import torch

from megalite.config import parse_config
from megalite.eval.generate import generate
from megalite.eval.sampling import Sampling
from megalite.serve import engine as eng
from megalite.serve.app import Served, build_app
from megalite.serve.loading import load_served
from megalite.training.trainer import pretrain
from tests.conftest import tiny_model_args
from tools import generate as generate_tool

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

PROMPT = "The module provides"
LEN = 160  # --max-model-len


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_corpus, one_thread):
    ck = tmp_path_factory.mktemp("serve") / "ck"
    # One step at a tiny learning rate from a wide initialisation: the weights stay near random, so
    # greedy replies are long and varied (a briefly trained model answers only newlines), and a
    # vocabulary not padded past the tokenizer's keeps every chosen id decodable.
    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(ck), train_iters=1, lr=1e-5, min_lr=1e-6,
                                          lr_warmup_iters=0, init_method_std=0.2, make_vocab_size_divisible_by=8)))
    return str(ck)


class Server:
    """A uvicorn server for ``served`` on a free loopback port, in a thread of this process."""

    def __init__(self, served: Served):
        self.served = served
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(build_app(served), port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.uvicorn.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)

    def close(self):
        self.uvicorn.should_exit = True
        self.thread.join(10)
        self.served.engine.stop()


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = Server(load_served(checkpoint, max_batch_size=8, max_model_len=LEN, max_queue=32, chat_template="chatml"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def tool_output(capsys, monkeypatch, *args, stdin=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    generate_tool.main(list(args))
    return capsys.readouterr().out


def test_greedy_completion_equals_generate_tool(server, client, checkpoint, capsys, monkeypatch):
    out = client.completions.create(model="ck", prompt=PROMPT, max_tokens=24, temperature=0)
    printed = tool_output(capsys, monkeypatch, "--load", checkpoint, "--prompt", PROMPT, "--max-new-tokens", "24")
    assert printed == f"--- {PROMPT!r} ->\n{PROMPT}{out.choices[0].text}\n"
    assert len(out.choices[0].text) > 20
    tok = server.served.tokenizer
    alone = generate(server.served.engine.model, [tok.encode(PROMPT)], 24, Sampling(stop_ids=[tok.eod]))[0]
    assert out.usage.prompt_tokens == len(tok.encode(PROMPT))
    assert out.usage.completion_tokens == len([t for t in alone if t != tok.eod])
    assert client.models.list().data[0].id == "ck"


def test_chat_equals_generate_tool_chat(client, checkpoint, capsys, monkeypatch):
    reply = client.chat.completions.create(model="ck", messages=[{"role": "user", "content": "Hello there"}],
                                           max_tokens=30, temperature=0)
    printed = tool_output(capsys, monkeypatch, "--load", checkpoint, "--chat", "--chat-template", "chatml",
                          "--max-new-tokens", "30", stdin="Hello there\n")
    assert printed.strip() == f"assistant> {reply.choices[0].message.content.strip()}"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("stop", "length")


def test_streaming_chunks_reassemble(client):
    whole = client.completions.create(model="ck", prompt=PROMPT, max_tokens=40, temperature=0)
    chunks = list(client.completions.create(model="ck", prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 5  # token by token, not at once
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a module?"}]
    chat = client.chat.completions.create(model="ck", messages=messages, max_tokens=40, temperature=0)
    streamed = client.chat.completions.create(model="ck", messages=messages, max_tokens=40, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content


def test_n_seed_and_top_p(client):
    def texts(**kw):
        out = client.completions.create(model="ck", prompt=PROMPT, max_tokens=16, n=3, temperature=1.0, **kw)
        assert [c.index for c in out.choices] == [0, 1, 2]
        return [c.text for c in out.choices]

    first = texts(seed=11)
    assert texts(seed=11) == first  # a seed makes sampling repeatable
    assert len(set(first)) > 1  # the n choices are sampled separately
    assert texts(seed=12) != first
    narrow = client.completions.create(model="ck", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=1e-6,
                                       seed=1)
    greedy = client.completions.create(model="ck", prompt=PROMPT, max_tokens=16, temperature=0)
    assert narrow.choices[0].text == greedy.choices[0].text  # top_p that keeps one token is greedy


def test_stop_strings(client):
    greedy = client.completions.create(model="ck", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    words = greedy.split()
    stop = " " + words[len(words) // 2]
    expected = greedy[: greedy.find(stop)]
    out = client.completions.create(model="ck", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "zzzq"])
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="ck", prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_logprobs(client, server):
    out = client.completions.create(model="ck", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) == pytest.approx(logprob) and top[token] == pytest.approx(logprob)
        assert logprob < 0
    chat = client.chat.completions.create(model="ck", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                          temperature=0.8, seed=3, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= t.top_logprobs[0].logprob + 1e-5 for t in content)


def test_bad_requests_get_openai_errors(server, client):
    def post(body, path="/v1/completions"):
        data = body if isinstance(body, str) else json.dumps(body)
        r = httpx.post(server.url + path, content=data, headers={"Content-Type": "application/json"}, timeout=30)
        return r.status_code, r.json()["error"]["message"] if r.status_code != 200 else r.json()

    assert post("{not json")[0] == 400
    status, message = post({"model": "gpt-4", "prompt": "x"})
    assert status == 404 and "gpt-4" in message
    status, message = post({"prompt": "x", "max_tokens": -3})
    assert status == 400 and "max_tokens" in message
    assert post({"prompt": "x", "max_tokens": 10**9})[0] == 400
    assert post({"prompt": "x", "temperature": "hot"})[0] == 400
    assert post({"prompt": ["a", 3]})[0] == 400
    assert post({"messages": "hi"}, "/v1/chat/completions")[0] == 400
    assert post({"messages": [{"role": "wizard", "content": "x"}]}, "/v1/chat/completions")[0] == 400
    status, message = post({"prompt": "word " * LEN})
    assert status == 413 and str(LEN) in message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    assert client.completions.create(model="ck", prompt=PROMPT, max_tokens=3, temperature=0).choices[0].text


def test_concurrent_clients_get_their_own_greedy_answers(server, client, checkpoint):
    """16 clients at once, prompts and lengths all different: each gets what its prompt gives
    alone, and the decode loop really ran them together."""
    tok, model = server.served.tokenizer, server.served.engine.model
    prompts = [" ".join(["The function returns"] + ["a value"] * (i % 5) + [str(i)]) for i in range(16)]
    lengths = [5 + 3 * i for i in range(16)]
    server.served.engine.batch_sizes.clear()
    results = [None] * 16

    def ask(i):
        results[i] = client.completions.create(model="ck", prompt=prompts[i], max_tokens=lengths[i], temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop = Sampling(stop_ids=[tok.eod])
    for i in range(16):
        alone = generate(model, [tok.encode(prompts[i])], lengths[i], stop)[0]
        assert results[i].choices[0].text == tok.decode([t for t in alone if t != tok.eod])
    assert max(server.served.engine.batch_sizes) > 1
    assert server.served.engine.open_slots == 0


def test_a_request_joins_mid_decode(server):
    """A short request submitted while a long one decodes is answered before the long one ends."""
    e = server.served.engine
    order, got = [], {"long": 0}

    def emit(name):
        def f(event):
            if isinstance(event, eng.Token):
                got[name] = got.get(name, 0) + 1
            else:
                order.append((name, event.reason, got["long"]))
        return f

    tok = server.served.tokenizer
    long = eng.Request(tok.encode(PROMPT), LEN - 20, emit("long"))
    e.submit([long])
    while got["long"] < 5:
        time.sleep(0.001)
    e.submit([eng.Request(tok.encode("A short one"), 4, emit("short"))])
    deadline = time.time() + 30
    while len(order) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert order[0][:2] == ("short", "length") and order[0][2] < LEN - 20  # the long one was still going
    assert order[1][:2] == ("long", "length")


def test_disconnect_frees_the_slot_and_full_queue_gets_429(checkpoint, server):
    served = server.served
    before = served.engine.finished["cancelled"]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": PROMPT, "max_tokens": LEN - 20, "stream": True}) as r:
        assert next(r.iter_lines()).startswith("data: ")
    deadline = time.time() + 10
    while served.engine.open_slots and time.time() < deadline:
        time.sleep(0.01)
    assert served.engine.open_slots == 0 and served.engine.finished["cancelled"] == before + 1
    # a one-slot engine with a one-request queue: a third request is refused with Retry-After
    small = Served(eng.Engine(served.engine.model, served.tokenizer.decode, 1, LEN, max_queue=1).start(),
                   served.tokenizer, "ck", LEN)
    busy = [eng.Request([5, 6, 7], LEN - 10, lambda ev: None) for _ in range(2)]
    small.engine.submit(busy[:1])
    while not small.engine.open_slots:
        time.sleep(0.001)
    small.engine.submit(busy[1:])
    other = Server(small)
    try:
        r = httpx.post(other.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1" and "busy" in r.json()["error"]["message"]
    finally:
        for b in busy:
            small.engine.cancel(b)
        other.close()


def test_chat_page_is_served(server):
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "<textarea" in page.text and "/static/chat.js" in page.text
    script = httpx.get(server.url + "/static/chat.js", timeout=10).text
    assert "/v1/chat/completions" in script
    for asset in ("chat.js", "chat.css"):  # nothing fetched from elsewhere
        assert "https://" not in httpx.get(f"{server.url}/static/{asset}", timeout=10).text
    assert "https://" not in page.text


def test_slot_cache_rows_decode_like_alone(server):
    """SlotKVCache: rows at different lengths in one step give each row's solo logits."""
    model = server.served.engine.model
    from megalite.model.decoding import decode_step, new_cache, slot_mask
    from megalite.model.kv_cache import SlotKVCache

    cache = new_cache(model, 3, 32, torch.device("cpu"), kind=SlotKVCache)
    prompts = {0: [5, 17, 300, 42], 2: [88, 12, 400, 9, 9, 31, 2]}
    with torch.no_grad():
        for slot, p in prompts.items():
            before = cache.select([slot], len(p))
            decode_step(model, torch.tensor([p]), before[:, None] + torch.arange(len(p)), cache,
                        slot_mask(cache, before, len(p)))
        before = cache.select([0, 2], 1)
        logits = decode_step(model, torch.tensor([[7], [8]]), before[:, None], cache, slot_mask(cache, before, 1))
        for row, (p, nxt) in enumerate(zip(prompts.values(), (7, 8))):
            torch.testing.assert_close(logits[row], model(torch.tensor([p + [nxt]]))[0, -1], rtol=1e-4, atol=1e-4)


def test_load_mixed_good_bad_and_disconnecting_clients(server):
    """~300 requests, 24 at a time, a third malformed and a sixth dropped mid-stream: the server
    stays up, every good request gets its greedy answer, and every slot comes back."""
    import asyncio

    tok, model = server.served.tokenizer, server.served.engine.model
    cases = [(f"Case {k}: the value of", 3 + 2 * k) for k in range(8)]
    stop = Sampling(stop_ids=[tok.eod])
    expected = [tok.decode([t for t in generate(model, [tok.encode(p)], n, stop)[0] if t != tok.eod])
                for p, n in cases]
    bad = ['{"prompt": ', {"prompt": "x", "max_tokens": -1}, {"model": "other", "prompt": "x"},
           {"prompt": "word " * LEN}, {"prompt": 5}]
    outcomes = {"good": 0, "bad": 0, "dropped": 0}
    cancelled = server.served.engine.finished["cancelled"]

    async def one(i, http, gate):
        async with gate:
            if i % 3 == 1:
                body = bad[i % len(bad)]
                r = await http.post("/v1/completions", content=body if isinstance(body, str) else json.dumps(body),
                                    headers={"Content-Type": "application/json"})
                assert r.status_code in (400, 404, 413) and r.json()["error"]["message"], r.text
                outcomes["bad"] += 1
            elif i % 6 == 2:
                body = {"prompt": PROMPT, "max_tokens": LEN - 20, "stream": True, "temperature": 0}
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            break  # hang up after the first chunk
                outcomes["dropped"] += 1
            else:
                k = i % len(cases)
                body = {"prompt": cases[k][0], "max_tokens": cases[k][1], "temperature": 0, "stream": i % 2 == 0}
                r = await http.post("/v1/completions", json=body)
                while r.status_code == 429:  # hang-ups the server has not noticed yet may fill the queue
                    await asyncio.sleep(float(r.headers["Retry-After"]))
                    r = await http.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                if i % 2 == 0:
                    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
                    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
                else:
                    text = r.json()["choices"][0]["text"]
                assert text == expected[k], f"request {i} {cases[k]}: {text!r} != {expected[k]!r}"
                outcomes["good"] += 1

    async def main():
        gate = asyncio.Semaphore(24)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            await asyncio.gather(*(one(i, http, gate) for i in range(300)))

    asyncio.run(asyncio.wait_for(main(), 120))
    assert outcomes == {"good": 150, "bad": 100, "dropped": 50}
    deadline = time.time() + 10
    while (server.served.engine.open_slots or server.served.engine.waiting) and time.time() < deadline:
        time.sleep(0.02)
    assert server.served.engine.open_slots == 0 and server.served.engine.waiting == 0
    # hang-ups free their slots early (under heavy load a few may reach their 140 tokens first)
    assert server.served.engine.finished["cancelled"] - cancelled >= 40, server.served.engine.finished
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"


def test_hf_folder_with_peft_adapter(checkpoint, tmp_path, capsys):
    """--load HF_DIR --load-adapter DIR: the folder is imported as sft_gpt.py imports one, and the
    greedy answers are those of transformers + peft on the same folder and adapter."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from megalite.hf.convert import export_hf

    hf_dir, adapter = str(tmp_path / "hf"), str(tmp_path / "my_adapter")
    export_hf(checkpoint, hf_dir, dtype="fp32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(hf, config).eval()
    theirs.save_pretrained(adapter)
    srv = Server(load_served(hf_dir, adapter, max_batch_size=2, max_model_len=64))
    try:
        assert httpx.get(srv.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "my_adapter"
        tok = srv.served.tokenizer
        for prompt in ([5, 17, 300, 42, 9], [88, 12]):
            with torch.no_grad():
                ids = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                      eos_token_id=tok.eod, pad_token_id=tok.eod)[0, len(prompt):].tolist()
            r = httpx.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0},
                           timeout=30).json()
            assert r["choices"][0]["text"] == tok.decode([i for i in ids if i != tok.eod])
            with torch.no_grad(), theirs.disable_adapter():
                base = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                       eos_token_id=tok.eod, pad_token_id=tok.eod)[0, len(prompt):].tolist()
            assert base != ids  # the adapter changes the answer, so the test would see it missing
    finally:
        srv.close()
    capsys.readouterr()
    load_served(hf_dir, max_batch_size=1, max_model_len=8).engine.stop()
    assert "importing" not in capsys.readouterr().out  # a restart reuses the import


def test_without_a_chat_template_chat_says_so_and_completions_work(server, tmp_path):
    from fastapi.testclient import TestClient

    from tests.conftest import run_tool

    bare = Served(server.served.engine, server.served.tokenizer, "ck", LEN, None,
                  "the tokenizer has no chat template; pass --chat-template chatml (or a file)")
    http = TestClient(build_app(bare))
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "--chat-template" in r.json()["error"]["message"]
    assert http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}).json()["usage"]["completion_tokens"]
    proc = run_tool("tools/serve.py", "--load", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --load") and "Traceback" not in proc.stderr



def test_ragged_and_chunked_prefill_decode_like_alone(server):
    """Prompts of different lengths prefilled in one step (rows padded to the longest, the padding
    never stored), two of them in two chunks, then decoded together: each row's logits are its
    solo ones; and an engine that prefills in small chunks answers as generate does."""
    from megalite.model.decoding import new_cache
    from megalite.model.kv_cache import SlotKVCache
    from megalite.serve.engine import forward_slots

    model, tok = server.served.engine.model, server.served.tokenizer
    prompts = [[5, 17, 300, 42, 7, 9], [88, 12], [400, 9, 31, 2, 6]]
    cache = new_cache(model, 4, 16, torch.device("cpu"), kind=SlotKVCache)
    with torch.no_grad():
        first = forward_slots(model, cache, [0, 1, 3], torch.tensor([[5, 17, 300], [88, 12, 0], [400, 9, 31]]),
                              [3, 2, 3])
        rest = forward_slots(model, cache, [0, 3], torch.tensor([[42, 7, 9], [2, 6, 0]]), [3, 2])
        step = forward_slots(model, cache, [0, 1, 3], torch.tensor([[7], [8], [9]]), 1)
        torch.testing.assert_close(first[1], model(torch.tensor([prompts[1]]))[0, -1], rtol=1e-4, atol=1e-4)
        for row, p in enumerate((prompts[0], prompts[2])):
            torch.testing.assert_close(rest[row], model(torch.tensor([p]))[0, -1], rtol=1e-4, atol=1e-4)
        for row, (p, nxt) in enumerate(zip(prompts, (7, 8, 9))):
            torch.testing.assert_close(step[row], model(torch.tensor([p + [nxt]]))[0, -1], rtol=1e-4, atol=1e-4)
    assert cache.lengths.tolist() == [7, 3, 0, 6]
    small = eng.Engine(model, tok.decode, 4, LEN, max_prefill_tokens=6).start()
    texts = [f"Case {k}: the value of the function is" for k in range(3)]
    done = threading.Semaphore(0)

    def emit(event):
        if isinstance(event, eng.Finished):
            done.release()

    requests = [eng.Request(tok.encode(t), 6, emit, Sampling(stop_ids=[tok.eod])) for t in texts]
    small.submit(requests)
    for _ in requests:
        assert done.acquire(timeout=30)
    small.stop()
    for r, t in zip(requests, texts):
        assert r.tokens == [i for i in generate(model, [tok.encode(t)], 6, Sampling(stop_ids=[tok.eod]))[0]
                            if i != tok.eod]
    assert max(len(tok.encode(t)) for t in texts) > 6  # the prompts needed several chunks


@pytest.mark.dist
def test_tensor_parallel_server_answers_as_one_process(client, checkpoint):
    """tools/serve.py on 2 tensor-parallel ranks, started as torchrun starts them, the TP=1
    checkpoint cut again for them: concurrent greedy requests (more than its 4 slots; completions,
    streamed, chat) get the one-process server's answers, and Ctrl-C (SIGINT to the process group,
    as a terminal sends it) stops both ranks cleanly."""
    import os
    import signal
    import subprocess

    from tests.conftest import REPO
    from tests.dist_utils import free_port

    port, master = free_port(), free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "tools/serve.py", "--load", checkpoint, "--tensor-model-parallel-size", "2", "--port",
             str(port), "--max-batch-size", "4", "--max-model-len", str(LEN), "--chat-template", "chatml"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            process_group=0 if rank == 0 else procs[0].pid))
    try:
        tp = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.time() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert all(p.poll() is None for p in procs), procs[0].stderr.read() + procs[1].stderr.read()
                assert time.time() < deadline, "the tensor-parallel server did not start"
                time.sleep(0.2)
        asks = [dict(prompt=f"Case {k}: the value of" + " the function" * (k % 3), max_tokens=4 + 2 * k)
                for k in range(5)]
        asks.append(dict(prompt=PROMPT, max_tokens=12, stream=True))
        chat = dict(messages=[{"role": "user", "content": "Hello there"}], max_tokens=8)
        answers = {}

        def ask(name, c, k):
            if k == "chat":
                reply = c.chat.completions.create(model="ck", temperature=0, **chat)
                answers[name, k] = reply.choices[0].message.content
            elif asks[k].get("stream"):
                chunks = c.completions.create(model="ck", temperature=0, **asks[k])
                answers[name, k] = "".join(x.choices[0].text for x in chunks)
            else:
                answers[name, k] = c.completions.create(model="ck", temperature=0, **asks[k]).choices[0].text

        threads = [threading.Thread(target=ask, args=(name, c, k)) for name, c in (("tp", tp), ("one", client))
                   for k in [*range(len(asks)), "chat"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for k in [*range(len(asks)), "chat"]:
            assert answers["tp", k] == answers["one", k] and answers["one", k], k
        tp.close()
    finally:
        os.killpg(procs[0].pid, signal.SIGINT)
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("Traceback" in err for _, err in outs), outs
    assert "tensor-parallel over 2 ranks" in outs[0][0]
