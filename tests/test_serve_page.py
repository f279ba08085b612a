"""The chat page in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by selenium against the server on a loopback port."""

import shutil
import time

import pytest

from tests.test_serve import LEN, Server, checkpoint, load_served  # noqa: F401 (checkpoint is a fixture)

webdriver = pytest.importorskip("selenium.webdriver")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(checkpoint):  # noqa: F811
    srv = Server(load_served(checkpoint, max_batch_size=4, max_model_len=LEN, chat_template="chatml"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def settings(browser, temperature, max_tokens):
    browser.execute_script("document.getElementById('temperature').value = arguments[0];"
                           "document.getElementById('max-tokens').value = arguments[1];", temperature, max_tokens)


def reply_after(browser, text):
    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys("\n")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.find_element(By.ID, "send").is_displayed())
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")[-1]


def test_page_streams_the_greedy_reply_and_keeps_the_conversation(server, browser):
    import openai

    browser.get(server.url + "/")
    WebDriverWait(browser, 10).until(lambda b: "ck" in b.find_element(By.ID, "model").text)
    settings(browser, 0, 20)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    first = reply_after(browser, "Hello there")
    api = client.chat.completions.create(model="ck", messages=[{"role": "user", "content": "Hello there"}],
                                         max_tokens=20, temperature=0).choices[0].message.content
    assert first.text == api.strip() and api.strip()  # the page shows the reply as text (edges trimmed)
    second = reply_after(browser, "And then?")
    history = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": api.strip()},
               {"role": "user", "content": "And then?"}]
    api2 = client.chat.completions.create(model="ck", messages=history, max_tokens=20, temperature=0)
    assert second.text == api2.choices[0].message.content.strip()  # the conversation was kept
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2


def test_stop_button_and_readable_errors(server, browser, monkeypatch):
    engine = server.served.engine
    run = engine._run

    def slow_run(*args):  # 30 ms a step, so the reply is still streaming when Stop is pressed
        time.sleep(0.03)
        run(*args)

    monkeypatch.setattr(engine, "_run", slow_run)
    browser.get(server.url + "/")
    settings(browser, 0.8, LEN - 40)
    before = engine.finished["cancelled"]
    browser.find_element(By.ID, "input").send_keys("Tell me everything\n")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text) > 3)
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: "(stopped)" in b.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text)
    deadline = time.time() + 10
    while engine.finished["cancelled"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert engine.finished["cancelled"] == before + 1 and engine.open_slots == 0  # the server stopped too
    settings(browser, 0, LEN * 2)  # more than fits: the server's message is shown
    browser.find_element(By.ID, "input").send_keys("Hi\n")
    error = wait.until(lambda b: b.find_element(By.ID, "error").is_displayed() and b.find_element(By.ID, "error"))
    assert "max_tokens" in error.text and "--max-model-len" in error.text
