"""The ``/playground`` page: its routes in-process (key, assets, headers), and the page itself
driven in a real headless Chromium (Debian's, through Playwright) against the live server on
vLLM: type a prompt, move a slider, run, read the ranked candidates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY
from in_process import API_KEY as FAST_KEY
from in_process import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get("IAMA_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "runs" / "test-artifacts")
)


@pytest.mark.inprocess
async def test_the_page_is_behind_the_api_key():
    async with serve() as s:
        anonymous = httpx.AsyncClient(transport=s.client._transport, base_url="http://iama")
        r = await anonymous.get("/playground")
        assert r.status_code == 401 and 'data-testid="api-key"' in r.text  # the key form
        assert (await anonymous.get("/playground/playground.js")).status_code == 401
        assert (await anonymous.get("/playground/key.js")).status_code == 200  # the form's own script
        bad = await anonymous.get("/playground", cookies={"iama_key": "wrong"})
        assert bad.status_code == 401
        for auth in ({"headers": {"Authorization": f"Bearer {FAST_KEY}"}}, {"cookies": {"iama_key": FAST_KEY}}):
            page = await anonymous.get("/playground", **auth)
            assert page.status_code == 200 and 'data-testid="run"' in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
            js = await anonymous.get("/playground/playground.js", **auth)
            assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
            assert (await anonymous.get("/playground/secrets.txt", **auth)).status_code == 404
        # the cookie opens the page only: /v1 takes the bearer header alone (no cross-site use)
        assert (await anonymous.get("/v1/models", cookies={"iama_key": FAST_KEY})).status_code == 401
        await anonymous.aclose()


@pytest.mark.inprocess
async def test_the_page_can_be_turned_off():
    async with serve(playground=False) as s:
        assert (await s.client.get("/playground")).status_code == 404


@pytest.mark.inprocess
async def test_the_page_loads_nothing_from_elsewhere():
    async with serve() as s:
        html = (await s.client.get("/playground")).text
        js = (await s.client.get("/playground/playground.js")).text
        for text in (html, js):
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


@pytest.mark.engine
@pytest.mark.tools
def test_playground_in_headless_chromium(tiny_server):
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium; scripts/install.sh dev does it as root)"
        )
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    rewards = httpx.get(f"{tiny_server.url}/v1/rewards", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    names = [r["name"] for r in rewards["data"]]
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{tiny_server.url}/playground")
            page.get_by_test_id("api-key").fill(API_KEY)
            page.get_by_test_id("key-submit").click()
            page.wait_for_selector("body[data-state=ready]", timeout=60_000)
            for name in names:  # a slider per served reward
                assert page.get_by_test_id(f"weight-{name}").count() == 1
            for name in names:
                page.get_by_test_id(f"weight-{name}").fill("0")
            page.get_by_test_id("weight-short").fill("0.8")
            assert page.get_by_test_id("weight-short-value").inner_text() == "0.80"
            page.get_by_test_id("prompt").fill("Tell me about your day")
            page.get_by_test_id("budget").fill("4")
            page.get_by_test_id("max-tokens").fill("16")
            page.get_by_test_id("seed").fill("7")
            page.get_by_test_id("run").click()
            page.wait_for_selector("body[data-state=done]", timeout=600_000)

            rows = page.get_by_test_id("candidate")
            assert rows.count() == 4
            chosen = page.locator("tr[data-testid=candidate][data-chosen=true]")
            assert chosen.count() == 1 and "★" in chosen.inner_text()
            scores = [float(x) for x in page.get_by_test_id("weighted").all_inner_texts()]
            assert scores == sorted(scores, reverse=True)  # ranked
            assert float(chosen.get_by_test_id("weighted").inner_text()) == max(scores)  # best-of-N
            assert page.get_by_test_id("weights-used").inner_text().endswith("short=0.8")
            assert "nats" in page.get_by_test_id("kl-bound").inner_text()
            assert page.locator("#chart rect.bar").count() == 4
            assert page.locator("#chart rect.bar.chosen").count() == 1
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

            page.get_by_test_id("algorithm").select_option("vote")  # a majority vote, its counts shown
            page.get_by_test_id("vote-regex").fill("[a-e]")
            page.get_by_test_id("run").click()
            page.wait_for_selector("body[data-state=done]", timeout=600_000)
            assert page.get_by_test_id("vote").inner_text().startswith("vote ")
            assert (
                ":" in page.get_by_test_id("vote").inner_text()
                or "no votes" in page.get_by_test_id("vote").inner_text()
            )
            page.get_by_test_id("algorithm").select_option("bon")

            page.get_by_test_id("add-rubric").click()  # a rubric written on the page, judged by the model
            page.get_by_test_id("rubric-1-name").fill("simple")
            page.get_by_test_id("rubric-1-text").fill("answers in few, simple words")
            page.get_by_test_id("rubric-1-weight").fill("1.5")
            page.get_by_test_id("weight-short").fill("0")
            page.get_by_test_id("run").click()
            page.wait_for_selector("body[data-state=done]", timeout=600_000)
            assert page.get_by_test_id("weights-used").inner_text().endswith("simple=1.5")
            assert "judge" in page.get_by_test_id("tokens").inner_text()
            assert "simple raw / norm" in page.locator("#candidates-head").inner_text()
            page.get_by_test_id("rubric-1-remove").click()
            assert page.get_by_test_id("rubrics").locator(".rubric").count() == 0
            page.get_by_test_id("weight-short").fill("0.8")

            page.get_by_test_id("weight-short").fill("0")  # nothing weighted: the page says so, no request
            page.get_by_test_id("run").click()
            page.wait_for_selector("body[data-state=error]")
            assert "at least one reward weight" in page.get_by_test_id("error").inner_text()
            page.get_by_test_id("weight-short").fill("1")
            page.get_by_test_id("budget").fill("999")  # over the server's limit: its 400, shown
            page.get_by_test_id("run").click()
            expect(page.get_by_test_id("error")).to_contain_text("400", timeout=60_000)  # no eval: the CSP forbids it
            assert "budget" in page.get_by_test_id("error").inner_text()
            assert errors == []
        finally:
            browser.close()
