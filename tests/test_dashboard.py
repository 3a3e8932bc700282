"""The web dashboard in a real browser: Playwright for Python driving the system's Chromium
(Debian's ``chromium`` package; Playwright's own browser download is not used) against one
``tradeflow api`` server and worker for the whole module, on the real Redis and SQLite.

Each page is checked with axe-core (``tests/vendor/axe-core``) and photographed into
``artifacts/dashboard/`` (gitignored) for a reviewer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from api_support import Server, api_for_database, wait_until
from conftest import REPO_ROOT, settings_env
from otlp_receiver import OTLPReceiver

#: The browser the tests drive: ``TRADEFLOW_TEST_CHROMIUM``, else Debian's.
CHROMIUM = os.environ.get("TRADEFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

#: Where screenshots go (gitignored).
ARTIFACTS = REPO_ROOT / "artifacts" / "dashboard"

#: axe-core, injected into each page for the accessibility check.
AXE = REPO_ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"

#: Impacts that fail a page.
BLOCKING_IMPACTS = {"serious", "critical"}

sync_api = pytest.importorskip("playwright.sync_api")

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: .ci/run installs the chromium package")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def spans() -> Iterator[OTLPReceiver]:
    """Where the server's and worker's spans go (the part of Jaeger they talk to)."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module", params=["sqlite"])
def server(request, redis_url, tmp_path_factory, spans) -> Iterator[Server]:
    overrides = {
        "tracing_exporter": "otlp-http",  # each attempt records its trace id; the page links it
        "tracing_endpoint": spans.url,
        "dashboard_environment": "staging",
        "dashboard_jaeger_url": "http://127.0.0.1:16686",
        "api_max_payload_bytes": 262_144,  # the 500-step run's definition
        "api_bulk_batch": 4,
        "api_bulk_rate": 40,  # a bulk retry of 24 letters takes about half a second: its progress shows
        "workflow_lease_ms": 3_000,  # a running step learns of its run's cancel within a second
    }
    modules = ("tests.api_actors", "tests.dashboard_actors")
    with api_for_database(
        request, redis_url, tmp_path_factory.mktemp("dashboard"), overrides=overrides, modules=modules
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def login(request, browser, server):
    """``login(role)``: a browser context holding a session of ``role``'s key (opened over the
    API, as the login page does).  At the end each of its pages is photographed as the test left it."""
    contexts = []

    def open_context(role: str = "operator"):
        context = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 900})
        contexts.append(context)
        if role is not None:
            response = context.request.post(
                "/api/v1/session", headers={"Authorization": f"Bearer {server.tokens[role]}"}
            )
            assert response.status == 200, response.text()
        return context

    yield open_context
    name = request.node.name.removeprefix("test_").split("[")[0]
    for number, context in enumerate(contexts):
        for index, page in enumerate(context.pages):
            shoot(page, f"end-{name}-{number}-{index}")
        context.close()


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical violations of the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())  # evaluated by the browser's debugger: the page's CSP does not apply
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in BLOCKING_IMPACTS
    ]


def wait_live(page) -> None:
    page.wait_for_selector("#live-state[data-state='live']", timeout=10_000)


def submit(server: Server, actor: str, *args, **kwargs) -> str:
    response = server.client("operator").post(
        "/api/v1/jobs", json={"actor": actor, "args": list(args), **kwargs}
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job_status(server: Server, job_id: str) -> str | None:
    response = server.client("viewer").get(f"/api/v1/jobs/{job_id}")
    return response.json()["status"] if response.status_code == 200 else None


def dead_job(server: Server, actor: str, key: str) -> str:
    job_id = submit(server, actor, key)
    wait_until(lambda: job_status(server, job_id) == "dead_letter", timeout=30, what=f"{actor} to die")
    return job_id


# -- log in, every page, accessibility ---------------------------------------------------------------


def test_login_then_every_page_has_no_serious_accessibility_violation(login, server):
    job_id = submit(server, "api_echo", "AXE")
    dead = dead_job(server, "api_flaky", f"{server.settings.namespace}:axe")
    run = server.client("operator").post(
        "/api/v1/workflows:run",
        json={
            "name": "axe_run",
            "inputs": {"user_id": "axe"},
            "steps": [
                {"name": "a", "actor": "dash_step", "args": ["a"], "compensate_with": "dash_undo"},
                {"name": "b", "actor": "dash_step", "args": ["b"], "depends_on": ["a"]},
            ],
        },
    )
    run_id = run.json()["run_id"]
    context = login(None)
    page = context.new_page()
    page.goto("/jobs?status=completed")
    assert page.url.startswith(f"{server.url}/login?next="), "a page without a session asks to log in"
    assert axe_violations(page) == []
    shoot(page, "login")
    page.fill("#key", "tf_not_a_key")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('Not logged in')")
    page.fill("#key", server.tokens["operator"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs?status=completed")
    assert page.locator(".env").inner_text().lower() == "staging"
    assert page.locator(".who").inner_text().startswith("test-operator")
    pages = {
        "overview": ("/", "#queues-table tbody tr[data-queue]"),
        "jobs": ("/jobs", f"tr[data-job='{job_id}']"),
        "job": (f"/jobs/{dead}", "pre.traceback"),
        "dead-letters": ("/dead-letters", "tr[data-fingerprint]"),
        "schedules": ("/schedules", "tr[data-schedule]"),
        "workflows": ("/workflows?input=user_id%3Daxe", f"tr[data-run='{run_id}']"),
        "run": (f"/workflows/{run_id}", "g.node[data-step='b']"),
        "queues": ("/queues", "#queues-table tbody tr[data-queue]"),
    }
    failures = {}
    for name, (path, ready) in pages.items():
        page.goto(path)
        page.wait_for_selector(ready, timeout=10_000)
        wait_live(page)
        if name == "dead-letters":
            page.click("tr[data-fingerprint] a")
            page.wait_for_selector(f"#letters-table tr[data-job='{dead}']")
        shoot(page, name)
        found = axe_violations(page)
        if found:
            failures[name] = found
    assert failures == {}
    page.goto("/workflows?input=user_id%3Dnobody")
    page.wait_for_selector("#runs-table td.empty")
    assert page.input_value("#filters input[name=input]") == "user_id=nobody"
    page.goto(f"/jobs/{dead}")
    page.wait_for_selector("#trace-link-row:not([hidden])")
    href = urllib.parse.urlsplit(page.get_attribute("#trace-link", "href"))
    assert href.netloc == "127.0.0.1:16686" and href.path == "/search"
    assert json.loads(urllib.parse.parse_qs(href.query)["tags"][0]) == {"messaging.message.id": dead}
    page.click("#logout")
    page.wait_for_url(f"{server.url}/login")
    page.goto("/")
    assert "/login" in page.url, "logging out ends the session"


# -- live: a job sent from the CLI shows up without a reload ------------------------------------------


def test_job_sent_with_tradeflow_send_appears_within_a_second_without_reload(login, server):
    context = login()
    page = context.new_page()
    page.goto("/jobs")
    wait_live(page)
    page.evaluate("() => { window.__sameDocument = true; }")
    tradeflow = str(Path(sys.executable).with_name("tradeflow"))
    symbol = f"LIVE{uuid.uuid4().hex[:6]}"
    sent = subprocess.run(
        [tradeflow, "send", "api_hold", "--args", json.dumps([symbol]), "-m", "tests.api_actors"],
        env=settings_env(server.settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip().split()[-1]
    started = time.monotonic()
    # waits longer than the promise, so that a miss reports by how much
    page.wait_for_selector(f"tr[data-job='{job_id}']", timeout=10_000)
    elapsed = time.monotonic() - started
    print(f"job on the page {elapsed:.3f} s after `tradeflow send` returned")
    assert page.evaluate("() => window.__sameDocument === true"), "the page was not reloaded"
    assert elapsed < 1.0, f"the job showed {elapsed:.2f} s after `tradeflow send` returned"


def test_cancel_all_jobs_matching_a_filter_after_typing_the_count(login, server):
    user = f"bulk-{uuid.uuid4().hex[:6]}"
    ids = [submit(server, "api_hold", f"H{i}", user_id=user) for i in range(5)]
    context = login()
    page = context.new_page()
    page.goto(f"/jobs?user={user}")
    for job_id in ids:  # the audit rows come in live
        page.wait_for_selector(f"tr[data-job='{job_id}']")
    assert page.input_value("#filters input[name=user]") == user, "the filter is read back from the URL"
    page.click("#cancel-matching")
    page.wait_for_selector("#confirm[open]")
    assert "Cancel 5 waiting or running jobs" in page.inner_text("#confirm-text")
    page.fill("#confirm-typed", "5")
    page.click("#confirm-ok")
    page.wait_for_selector("#bulk-text:has-text('Done: 5 cancelled')", timeout=15_000)
    wait_until(
        lambda: all(job_status(server, job_id) == "cancelled" for job_id in ids), timeout=15, what="5 cancels"
    )
    page.wait_for_selector(f"tr[data-job='{ids[0]}'] .st-cancelled", timeout=5_000)


def test_jobs_keyset_pages_keep_the_filter(login, server):
    user = f"pages-{uuid.uuid4().hex[:6]}"
    ids = [submit(server, "api_hold", f"P{i}", user_id=user) for i in range(3)]
    wait_until(lambda: all(job_status(server, job_id) for job_id in ids), timeout=10, what="audit rows")
    page = login().new_page()
    page.goto(f"/jobs?user={user}&limit=2")
    page.wait_for_selector("#jobs-table tbody tr[data-job]")
    first = page.locator("#jobs-table tbody tr[data-job]").evaluate_all(
        "rows => rows.map(r => r.dataset.job)"
    )
    assert len(first) == 2 and set(first) < set(ids)
    (rest,) = set(ids) - set(first)
    page.click("#next-page")
    page.wait_for_url("**cursor=**")
    assert f"user={user}" in page.url
    page.wait_for_selector(f"#jobs-table tbody tr[data-job='{rest}']")
    assert page.locator("#jobs-table tbody tr[data-job]").count() == 1
    assert page.is_hidden("#next-page") and page.is_visible("#first-page")


# -- dead letters: one by a click, a group in bulk with progress ---------------------------------------


def test_retry_a_dead_letter_by_clicking(login, server):
    key = f"{server.settings.namespace}:click:{uuid.uuid4().hex[:6]}"
    job_id = dead_job(server, "api_flaky", key)
    redis.Redis.from_url(server.settings.redis_url).set(f"{key}:fixed", 1)
    context = login()
    page = context.new_page()
    page.goto("/dead-letters")
    wait_live(page)
    group = page.locator("tr[data-fingerprint]", has_text="ValueError")
    group.locator("a").click()
    row = page.locator(f"#letters-table tr[data-job='{job_id}']")
    row.locator("button.retry-one").click()
    wait_until(lambda: job_status(server, job_id) == "completed", timeout=30, what="the retried job to run")
    page.wait_for_selector(f"#letters-table tr[data-job='{job_id}']", state="detached", timeout=5_000)


def test_bulk_retry_of_a_group_shows_progress_and_ends_with_the_count(login, server):
    key = f"{server.settings.namespace}:bulk:{uuid.uuid4().hex[:6]}"
    ids = [submit(server, "dash_flaky", key) for _ in range(24)]
    wait_until(
        lambda: all(job_status(server, job_id) == "dead_letter" for job_id in ids),
        timeout=30,
        what="24 jobs to die",
    )
    redis.Redis.from_url(server.settings.redis_url).set(f"{key}:fixed", 1)
    context = login()
    page = context.new_page()
    page.goto("/dead-letters?queue=api_work")
    wait_live(page)
    group = page.locator("tr[data-fingerprint]", has_text="RuntimeError")
    assert group.locator("td.count").inner_text() == "24"
    group.locator("button.retry-group").click()
    page.wait_for_selector("#confirm[open]")
    dialog = page.locator("#confirm")
    assert "24 dead letters" in dialog.locator("#confirm-text").inner_text(), "the preview count"
    dialog.locator("#confirm-ok").click()
    page.wait_for_selector("#bulk-progress:not([hidden])")
    # the progress bar moves before the end (the operation is throttled to 40 a second)
    page.wait_for_function(
        "() => { const b = document.querySelector('#bulk-bar');"
        " return b.value > 0 && b.value < 24 && b.max === 24; }",
        timeout=5_000,
    )
    page.wait_for_selector("#bulk-text:has-text('Done: 24 retried')", timeout=15_000)
    assert page.evaluate("() => document.querySelector('#bulk-bar').value") == 24
    wait_until(
        lambda: all(job_status(server, job_id) == "completed" for job_id in ids),
        timeout=30,
        what="retried jobs",
    )
    page.wait_for_selector("tr[data-fingerprint]:has-text('RuntimeError')", state="detached", timeout=5_000)


def test_admin_purges_a_group_after_typing_its_count(login, server):
    key = f"{server.settings.namespace}:purge:{uuid.uuid4().hex[:6]}"
    ids = [submit(server, "dash_flaky", key) for _ in range(3)]
    wait_until(lambda: all(job_status(server, i) == "dead_letter" for i in ids), timeout=30, what="3 deaths")
    context = login("admin")
    page = context.new_page()
    page.goto("/dead-letters?queue=api_work")
    group = page.locator("tr[data-fingerprint]", has_text="RuntimeError")
    group.locator("button.purge-group").click()
    page.wait_for_selector("#confirm[open]")
    ok = page.locator("#confirm-ok")
    assert ok.is_disabled(), "a purge waits for the typed count"
    page.fill("#confirm-typed", "2")
    assert ok.is_disabled()
    page.fill("#confirm-typed", "3")
    ok.click()
    page.wait_for_selector("#bulk-text:has-text('Done: 3 purged')", timeout=15_000)
    letters = (
        server.client("viewer").get("/api/v1/dead-letters", params={"queue": "api_work"}).json()["items"]
    )
    assert not set(ids) & {letter["job_id"] for letter in letters}


def test_retry_a_dead_job_with_edited_arguments(login, server):
    broken = f"{server.settings.namespace}:broken:{uuid.uuid4().hex[:6]}"
    fixed = f"{server.settings.namespace}:fixed:{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(server.settings.redis_url).set(f"{fixed}:fixed", 1)
    job_id = dead_job(server, "api_flaky", broken)
    page = login().new_page()
    page.goto(f"/jobs/{job_id}")
    page.wait_for_selector("pre.traceback")
    assert json.loads(page.input_value("#retry-args")) == {"args": [broken], "kwargs": {}}
    page.click("#retry-box summary")
    page.fill("#retry-args", json.dumps({"args": [fixed]}))
    page.click("#job-retry")
    wait_until(lambda: job_status(server, job_id) == "completed", timeout=30, what="the edited retry to run")
    page.wait_for_selector("#job-facts .st-completed", timeout=5_000)  # live, no reload
    assert json.loads(page.inner_text("#job-args"))["args"] == [fixed]


def test_job_page_shows_each_attempt_with_traceback_worker_timings_and_trace_link(login, server, spans):
    key = f"{server.settings.namespace}:third:{uuid.uuid4().hex[:6]}"
    job_id = submit(server, "api_third_time", key)
    wait_until(lambda: job_status(server, job_id) == "completed", timeout=30, what="the third attempt")
    detail = server.client("viewer").get(f"/api/v1/jobs/{job_id}").json()
    page = login("viewer").new_page()
    page.goto(f"/jobs/{job_id}")
    page.wait_for_selector("section.attempt[data-attempt='3']")
    sections = page.locator("section.attempt")
    assert sections.count() == 3
    for number, attempt in enumerate(detail["attempts"], 1):
        section = page.locator(f"section.attempt[data-attempt='{number}']")
        text = section.inner_text()
        assert f"Attempt {number}" in text and f"pid {attempt['worker_pid']}" in text
        assert attempt["worker_host"] in text and "ms" in text  # how long it took
        assert section.locator("time").count() == 2  # started, finished
        link = section.locator("a.trace-link")
        assert link.get_attribute("href") == f"http://127.0.0.1:16686/trace/{attempt['trace_id']}"
        if number < 3:
            assert f"ValueError: attempt {number}" in section.locator("pre.error").inner_text()
            traceback = section.locator("pre.traceback")
            assert (
                traceback.is_visible() and 'raise ValueError(f"attempt {attempt}")' in traceback.inner_text()
            )
        else:
            assert section.locator("pre.traceback").count() == 0 and "completed" in text
    # the retries continue the first attempt's trace: one trace, which reached the collector
    trace_ids = {attempt["trace_id"] for attempt in detail["attempts"]}
    assert len(trace_ids) == 1 and len(trace_ids.pop()) == 32
    spans.wait_for(
        lambda got: any(span.trace_id == detail["attempts"][0]["trace_id"] for span in got), timeout=15
    )
    assert axe_violations(page) == []


def test_api_docs_render_styled_under_the_strict_csp(login, server):
    context = login(None)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.add_init_script(
        "window.violations = []; document.addEventListener('securitypolicyviolation', (e) =>"
        " window.violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`));"
    )
    response = page.goto("/api/docs")
    csp = response.headers["content-security-policy"]
    assert "style-src 'self';" in csp and "script-src 'self';" in csp and "unsafe" not in csp
    page.wait_for_selector(".opblock-summary-method")  # Swagger UI rendered the OpenAPI 3.1 schema
    page.locator(".opblock-summary").first.click()
    page.locator(".execute").first.click()  # try it out: a request and its highlighted response
    page.wait_for_selector(".responses-wrapper .live-responses-table", timeout=10_000)
    styles = page.evaluate(
        """() => {
          const style = (selector, name) => getComputedStyle(document.querySelector(selector))[name];
          return {
            method: style(".opblock-summary-method", "backgroundColor"),
            title: style(".info .title", "fontSize"),
            rules: Array.from(document.styleSheets).reduce((n, sheet) => n + sheet.cssRules.length, 0),
          };
        }"""
    )
    assert styles["method"] not in ("rgba(0, 0, 0, 0)", "transparent"), styles
    assert float(styles["title"].removesuffix("px")) >= 30, styles
    assert styles["rules"] > 1_000, "swagger-ui.css applied"
    assert page.evaluate("window.violations") == [] and problems == []
    shoot(page, "api-docs")


def test_pause_a_queue_and_disable_and_run_a_schedule(login, server):
    viewer = server.client("viewer")
    page = login().new_page()
    page.goto("/queues")
    row = page.locator("#queues-table tr[data-queue='maintenance']")
    row.locator("button.pause").click()
    row.locator("button.resume").wait_for()
    assert next(q for q in viewer.get("/api/v1/queues").json() if q["name"] == "maintenance")["paused"]
    row.locator("button.resume").click()
    row.locator("button.pause").wait_for()
    assert not next(q for q in viewer.get("/api/v1/queues").json() if q["name"] == "maintenance")["paused"]
    page.goto("/schedules")
    schedule = page.locator("tr[data-schedule='cleanup_tasks']")
    assert "3:00" in schedule.inner_text() or "03:00" in schedule.inner_text(), "the cron in plain words"
    schedule.locator("button", has_text="Disable").click()
    schedule.locator("button", has_text="Enable").wait_for()
    listed = {s["name"]: s for s in viewer.get("/api/v1/schedules").json()}
    assert listed["cleanup_tasks"]["enabled"] is False
    schedule.locator("button", has_text="Enable").click()
    schedule.locator("button", has_text="Disable").wait_for()
    schedule.locator("button", has_text="Run now").click()
    page.wait_for_selector("#flash:has-text('cleanup_tasks: sent job')")
    job_id = page.inner_text("#flash").split()[-1]
    wait_until(lambda: job_status(server, job_id) is not None, timeout=15, what="the job run now")


# -- workflows: cancel a running run, compensations in reverse on the graph -----------------------------


def test_cancel_a_running_workflow_and_watch_compensations_run_in_reverse(login, server):
    undo = {"actor": "dash_step", "compensate_with": "dash_undo"}
    steps = [
        {"name": "reserve", "args": ["reserve"], **undo},
        {"name": "quote_aapl", "args": ["quote_aapl"], "depends_on": ["reserve"], **undo},
        {"name": "quote_msft", "actor": "dash_step", "args": ["quote_msft"], "depends_on": ["reserve"]},
        {"name": "place", "args": ["place"], "depends_on": ["quote_aapl", "quote_msft"], **undo},
        {"name": "settle", "actor": "dash_wait", "args": ["settle"], "depends_on": ["place"]},
    ]
    run = server.client("operator").post("/api/v1/workflows:run", json={"name": "basket", "steps": steps})
    run_id = run.json()["run_id"]
    context = login()
    page = context.new_page()
    page.goto(f"/workflows/{run_id}")
    wait_live(page)
    # the graph follows the run live: settle starts running without a reload
    page.wait_for_selector("g.node[data-step='settle'][data-status='running']", timeout=15_000)
    for name in ("reserve", "quote_aapl", "quote_msft", "place"):
        assert page.get_attribute(f"g.node[data-step='{name}']", "data-status") == "succeeded"
    assert page.locator("path.edge:not(.comp)").count() == 5
    compensation_edges = [
        (edge.get_attribute("data-from"), edge.get_attribute("data-to"))
        for edge in page.locator("path.edge.comp").all()
    ]
    assert compensation_edges == [("place", "quote_aapl"), ("quote_aapl", "reserve")]
    shoot(page, "run-running")
    # record, as the page redraws, the order in which steps turn compensating and compensated
    page.evaluate(
        """() => {
          window.__seen = [];
          const note = () => document.querySelectorAll('g.node').forEach((n) => {
            const mark = n.dataset.step + ':' + n.dataset.status;
            const fresh = !window.__seen.includes(mark);
            if (n.dataset.status.startsWith('compensat') && fresh) window.__seen.push(mark);
          });
          const graph = document.querySelector('#graph');
          new MutationObserver(note).observe(graph, {childList: true, subtree: true});
        }"""
    )
    page.click("#run-cancel")
    page.wait_for_selector("#confirm[open] ol.plan")
    plan = page.locator("#confirm-text ol.plan li").all_inner_texts()
    assert plan == ["dash_undo (undoes place)", "dash_undo (undoes quote_aapl)", "dash_undo (undoes reserve)"]
    page.click("#confirm-ok")
    page.wait_for_selector("#run[data-status='cancelled']", timeout=30_000)
    seen = page.evaluate("() => window.__seen")
    compensating = [mark.split(":")[0] for mark in seen if mark.endswith(":compensating")]
    compensated = [mark.split(":")[0] for mark in seen if mark.endswith(":compensated")]
    assert compensating == ["place", "quote_aapl", "reserve"], seen
    assert compensated == ["place", "quote_aapl", "reserve"], seen
    undone = redis.Redis.from_url(server.settings.redis_url).lrange(
        f"{server.settings.namespace}:dash:undone", 0, -1
    )
    assert [item.decode() for item in undone][-3:] == ["place", "quote_aapl", "reserve"]
    assert page.get_attribute("g.node[data-step='quote_msft']", "data-status") == "succeeded", (
        "no compensation"
    )
    events = page.locator("#timeline li").all_inner_texts()
    assert any("compensat" in event for event in events)
    shoot(page, "run-compensated")


def test_a_500_step_run_stays_usable(login, server):
    steps = [{"name": "root", "actor": "dash_step", "args": ["root"]}]
    for group in range(10):
        for index in range(50):
            name = f"g{group}s{index}"
            before = "root" if group == 0 else f"g{group - 1}s{index}"
            steps.append(
                {
                    "name": name,
                    "actor": "dash_idle",
                    "args": [name],
                    "depends_on": [before],
                    "group": f"g{group}",
                }
            )
    response = server.client("operator").post(
        "/api/v1/workflows:run", json={"name": "wide", "steps": steps[:500]}
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    context = login("viewer")
    page = context.new_page()
    started = time.monotonic()
    page.goto(f"/workflows/{run_id}")
    page.wait_for_selector("#steps-table tr[data-step='g9s48']")
    loaded = time.monotonic() - started
    assert page.is_checked("#collapse-groups"), "a big run starts with its groups collapsed"
    assert page.locator("g.node").count() == 11  # root and ten groups
    started = time.monotonic()
    page.uncheck("#collapse-groups")
    page.wait_for_function("() => document.querySelectorAll('g.node').length === 500")
    expanded = time.monotonic() - started
    print(f"500-step run: page with its graph in {loaded:.2f} s, all 500 nodes drawn in {expanded:.2f} s")
    assert loaded < 5 and expanded < 2, (loaded, expanded)
    # the page still answers: the keyboard help opens at once
    page.focus("#graph")
    page.keyboard.press("?")
    page.wait_for_selector("#help[open]", timeout=1_000)


# -- roles -----------------------------------------------------------------------------------------------


def test_a_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(login, server):
    dead = dead_job(server, "api_flaky", f"{server.settings.namespace}:viewer")
    run_id = (
        server.client("operator")
        .post(
            "/api/v1/workflows:run",
            json={"name": "viewer_run", "steps": [{"name": "a", "actor": "dash_step", "args": ["a"]}]},
        )
        .json()["run_id"]
    )
    context = login("viewer")
    page = context.new_page()
    checks = {
        "/jobs": ("#jobs-table tbody tr", ["#cancel-matching", "#cancel-selected", "#select-all"]),
        f"/jobs/{dead}": ("pre.traceback", ["#job-cancel", "#job-retry", "#job-delete"]),
        "/dead-letters": ("tr[data-fingerprint]", [".retry-group", ".purge-group"]),
        f"/workflows/{run_id}": ("g.node", ["#run-cancel", "#run-resume", "#run-fork"]),
        "/queues": ("#queues-table tbody tr[data-queue]", ["button.pause", "button.resume"]),
        "/schedules": ("tr[data-schedule]", ["tr[data-schedule] button"]),
    }
    for path, (ready, absent) in checks.items():
        page.goto(path)
        page.wait_for_selector(ready)
        for selector in absent:
            assert page.locator(selector).count() == 0, f"{path}: a viewer has no {selector}"
    forged = page.evaluate(
        """async () => {
          const r = await fetch('/api/v1/queues/api_work/pause', {method: 'POST'});
          return [r.status, (await r.json()).type];
        }"""
    )
    assert forged == [403, "urn:tradeflow:problem:forbidden"]
    queues = server.client("viewer").get("/api/v1/queues").json()
    assert not next(q for q in queues if q["name"] == "api_work")["paused"]


# -- display ---------------------------------------------------------------------------------------------


def test_dark_mode_and_time_zone_persist_across_reloads(login, server):
    submit(server, "api_echo", "TIME")
    context = login()
    page = context.new_page()
    page.emulate_media(color_scheme="light")
    page.goto("/jobs")
    page.wait_for_selector("#jobs-table tbody time")
    assert page.get_attribute("html", "data-theme") == "light"
    assert page.locator("#jobs-table tbody time").first.inner_text().endswith(" UTC")
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.click("#theme-toggle")
    page.click("#time-toggle")
    assert not page.locator("#jobs-table tbody time").first.inner_text().endswith(" UTC")
    page.reload()
    page.wait_for_selector("#jobs-table tbody time")
    assert page.get_attribute("html", "data-theme") == "dark"
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") != background
    assert not page.locator("#jobs-table tbody time").first.inner_text().endswith(" UTC")
    assert page.locator("#time-toggle").inner_text() == "Local time"
    assert axe_violations(page) == [], "the dark theme keeps its contrast"
    shoot(page, "jobs-dark")


def test_keyboard_shortcuts_live_pause_and_hidden_tab(login, server):
    for symbol in ("K1", "K2", "K3"):
        submit(server, "api_hold", symbol)
    context = login()
    page = context.new_page()
    page.goto("/jobs")
    wait_live(page)
    # connected and nothing happening: the list is not polled
    listed = []
    page.on("request", lambda request: listed.append(request.url) if "/api/v1/jobs" in request.url else None)
    page.wait_for_timeout(1_500)
    assert listed == []
    page.keyboard.press("j")
    page.keyboard.press("j")
    rows = page.locator("#jobs-table tbody tr")
    assert "selected" in rows.nth(1).get_attribute("class")
    page.keyboard.press("k")
    assert "selected" in rows.nth(0).get_attribute("class")
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.name") == "args"
    page.keyboard.press("Escape")
    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    page.keyboard.press("Escape")
    # paused: a new job does not appear; resumed: it does (caught up after the pause)
    page.click("#live-toggle")
    page.wait_for_selector("#live-state[data-state='paused']")
    job_id = submit(server, "api_hold", "PAUSED")
    page.wait_for_timeout(800)
    assert page.locator(f"tr[data-job='{job_id}']").count() == 0
    page.click("#live-toggle")
    page.wait_for_selector(f"tr[data-job='{job_id}']", timeout=3_000)
    # a hidden tab closes its stream and catches up when shown again
    set_hidden = """(hidden) => {
      Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});
      document.dispatchEvent(new Event('visibilitychange'));
    }"""
    page.evaluate(set_hidden, True)
    page.wait_for_selector("#live-state[data-state='hidden']")
    hidden_job = submit(server, "api_hold", "HIDDEN")
    page.wait_for_timeout(800)
    assert page.locator(f"tr[data-job='{hidden_job}']").count() == 0
    page.evaluate(set_hidden, False)
    page.wait_for_selector(f"tr[data-job='{hidden_job}']", timeout=3_000)
    wait_live(page)
