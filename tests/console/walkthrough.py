"""The web console end to end, in a real headless Chromium, as a person would use it.

Signs in with the admin key; creates two workspaces; connects OpenAI (Integrations → All →
Connect OpenAI) with the mock provider's key and URL as its custom host; provisions it to both
workspaces with different budgets and rate limits; restricts its models to one, custom-priced;
creates a workspace service key with a budget, an alert threshold, a rate limit and two e-mail
recipients (chips); reads the secret shown once and sends chat completions through the real
`openai` SDK with it; checks the overview's "Spend today" against the analytics API, watches the
key's usage bar refresh by itself, exhausts the budget until the SDK gets 412, and finds the key
exhausted and the alert e-mails delivered on the Alerts page.

Every control is found by its label or role (get_by_label, get_by_role), so the test also proves
the labels are right. Every wait is for a condition, with a generous bound (a loaded 2-core
machine). Each page visited is saved as <TG_SCREENSHOTS>/<nn-name>.png and .html.

Env: TOLLGATE_URL (http://host:port), ADMIN_KEY, MOCK_URL (the mock provider's /v1 base),
PROVIDER_KEY (the credential the integration gets), TG_SCREENSHOTS.
Prints one line per step and a final `RESULT {json}` line with what the Rust side checks.
"""
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import openai
from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # noqa: E402  (tests/console/browser.py, beside this script)

URL = os.environ["TOLLGATE_URL"]
ADMIN = os.environ["ADMIN_KEY"]
MOCK = os.environ["MOCK_URL"]
PROVIDER_KEY = os.environ["PROVIDER_KEY"]
SHOTS = os.environ.get("TG_SCREENSHOTS", os.path.join("target", "console-screenshots"))

# The bound on every wait (ms). A condition that holds ends the wait at once; this only turns a
# broken console into a failure instead of a hang, far above what anything takes when loaded.
PATIENCE_MS = 60_000
# How often a condition that only a reload can show (a page not refreshed by itself) is looked at.
POLL_S = 0.25

SLUG = "mock-openai"
MODEL = f"@{SLUG}/gpt-4o-mini"
# The custom price of the model, US cents per token, in and out: the mock bills 12 + 7 tokens a
# chat, so a chat costs 19 cents and a $1 budget is used up by the sixth.
PRICE_CENTS = 1
CHAT_CENTS = Decimal(19)

expect.set_options(timeout=PATIENCE_MS)
visited = []
out = {}


def step(name):
    print("step:", name, flush=True)


def visit(page, name):
    """Saves the page as it is now: a full-page screenshot and its HTML."""
    name = f"{len(visited) + 1:02d}-{name}"
    browser.shot(page, name)
    with open(os.path.join(SHOTS, f"{name}.html"), "w", encoding="utf-8") as f:
        f.write(page.content())
    visited.append(name)


def wait_until(probe):
    """Calls probe() until it returns something truthy, which is returned; None after
    PATIENCE_MS. For what only a reload shows (a page that does not refresh by itself)."""
    deadline = time.monotonic() + PATIENCE_MS / 1000
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_S)


def nav(page, section):
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=section, exact=True).click()


def label(scope, text):
    return scope.get_by_label(text, exact=True)


def usd(cents):
    """A cost in cents as the console writes US dollars: "$0.19", "$1.14", "$0"."""
    return "$" + format((cents / 100).normalize(), "f")


def analytics(metric, since):
    """The analytics API's graph `metric` from `since` to now, with the admin key (the API waits
    for the usage store to have every event logged before it answers)."""
    r = httpx.get(f"{URL}/v1/analytics/graphs/{metric}", headers={"x-portkey-api-key": ADMIN}, timeout=60, params={
        "time_of_generation_min": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "time_of_generation_max": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.999Z")})
    assert r.status_code == 200, (r.status_code, r.text)
    return json.loads(r.text, parse_float=Decimal)["summary"]


def today():
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def sign_in(page):
    step("sign in with the admin key")
    page.goto(f"{URL}/console")
    expect(page).to_have_url(f"{URL}/console/login")
    visit(page, "sign-in")
    label(page, "API key").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{URL}/console")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    visit(page, "overview-before")


def create_workspace(page, name, department):
    step(f"create workspace {name}")
    nav(page, "Workspaces")
    expect(page.get_by_role("heading", name="Workspaces", exact=True)).to_be_visible()
    label(page, "Name").fill(name)
    label(page, "Description").fill(f"the {name.lower()} team")
    label(page, "Default metadata (JSON object, e.g. the department)").fill(json.dumps({"department": department}))
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("heading", name=f"Workspace {name}")).to_be_visible()
    ws_id = page.url.rsplit("/", 1)[1]
    visit(page, f"workspace-{name.lower()}")
    return ws_id


def connect_openai(page):
    step("Integrations → All → Connect OpenAI (the mock's key and URL)")
    nav(page, "Integrations")
    page.get_by_role("navigation", name="Integration tabs").get_by_role("link", name="All", exact=True).click()
    visit(page, "integrations-all")
    page.get_by_role("link", name="Connect OpenAI", exact=True).click()
    expect(page.get_by_role("heading", name="Connect OpenAI")).to_be_visible()
    label(page, "Name").fill("Mock OpenAI")
    label(page, "Slug (optional)").fill(SLUG)
    label(page, "API key").fill(PROVIDER_KEY)
    label(page, "Custom host (optional)").fill(MOCK)
    label(page, "Owner").select_option(label="Organisation (shared with workspaces you provision)")
    visit(page, "integration-new")
    page.get_by_role("button", name="Create integration").click()
    expect(page.get_by_role("heading", name="Integration Mock OpenAI")).to_be_visible()
    expect(page).to_have_url(f"{URL}/console/integrations/{SLUG}")
    # The credential shown masked, only its end: never again in full.
    expect(page.get_by_text(re.compile(r"^sk-\*+" + PROVIDER_KEY[-4:] + "$"))).to_be_visible()


def provision(page, limits):
    step("provision to both workspaces, each with its budget and rate limit")
    for name, (budget, threshold, rpm) in limits.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        row.get_by_role("checkbox", name=f"Enable for {name}").check()
        row.get_by_text("Edit Budget & Rate Limits").click()
        label(row, "Add Budget Limit").check()
        label(row, "Limit on").select_option(label="Cost (USD)")
        label(row, "Budget limit").fill(str(budget))
        label(row, "Alert threshold").fill(str(threshold))
        label(row, "Periodic reset").select_option(label="Monthly (1st, 00:00 UTC)")
        label(row, "Add Rate Limit").check()
        label(row, "Limit").select_option(label="Requests")
        label(row, "Rate limit value").fill(str(rpm))
        label(row, "Per").select_option(label="minute")
    visit(page, "integration-provisioning-form")
    page.get_by_role("button", name="Save provisioning").click()
    expect(page.get_by_role("heading", name="Integration Mock OpenAI")).to_be_visible()
    for name, (budget, _, rpm) in limits.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        expect(row.get_by_role("checkbox", name=f"Enable for {name}")).to_be_checked()
        expect(row).to_contain_text(f"0 / {budget} USD")
        expect(row).to_contain_text(f"{rpm} requests per minute")


def restrict_models(page):
    step("models: untick Allow all models, add gpt-4o-mini at a custom price")
    allow = page.get_by_label("Allow all models (otherwise only the models enabled below)")
    expect(allow).to_be_checked()
    allow.uncheck()
    label(page, "Add a model").fill("gpt-4o-mini")
    expect(label(page, "Enable the new model")).to_be_checked()
    label(page, "Input price of the new model").fill(str(PRICE_CENTS))
    label(page, "Output price of the new model").fill(str(PRICE_CENTS))
    page.get_by_role("button", name="Save models").click()
    expect(page.get_by_role("heading", name="Integration Mock OpenAI")).to_be_visible()
    expect(page.get_by_label("Allow all models (otherwise only the models enabled below)")).not_to_be_checked()
    expect(label(page, "Enable gpt-4o-mini")).to_be_checked()
    expect(label(page, "Input price of gpt-4o-mini")).to_have_value(str(PRICE_CENTS))
    expect(label(page, "Output price of gpt-4o-mini")).to_have_value(str(PRICE_CENTS))
    visit(page, "integration-provisioned")


def create_key(page, workspace, recipients):
    step("create a workspace service key: budget, alert threshold, rate limit, two recipients")
    nav(page, "API keys")
    visit(page, "keys-before")
    page.get_by_role("link", name="Create API key").click()
    expect(page.get_by_role("heading", name="Create API key")).to_be_visible()
    label(page, "Name").fill("research-svc")
    label(page, "Description").fill("the research team's service")
    label(page, "Type").select_option(label="Workspace service key")
    label(page, "Workspace").select_option(label=workspace)
    expect(page.get_by_role("checkbox", name="completions.write", exact=True)).to_be_checked()
    budget_fields = label(page, "Budget limit")
    expect(budget_fields).to_be_hidden()  # the toggle shows its fields (console.js)
    label(page, "Add Budget Limit").check()
    label(page, "Limit on").select_option(label="Cost (USD)")
    budget_fields.fill("1")
    label(page, "Alert threshold").fill("0.5")
    label(page, "Add Rate Limit").check()
    label(page, "Rate limit value").fill("600")
    label(page, "Per").select_option(label="minute")
    label(page, "Email Notifications").check()
    chips = label(page, "Recipients (press Enter to add)")
    for r in recipients:
        chips.fill(r)
        chips.press("Enter")
        expect(page.get_by_role("button", name=f"Remove {r}")).to_be_visible()
        expect(chips).to_have_value("")
    visit(page, "key-new")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created")).to_be_visible()
    secret = page.get_by_role("status").locator("code").inner_text().strip()
    assert secret.startswith("tg_"), secret
    visit(page, "key-created")
    page.get_by_role("link", name="Open the key").click()
    expect(page.get_by_role("heading", name="API key research-svc")).to_be_visible()
    key_id = page.url.rsplit("/", 1)[1]
    assert secret not in page.content(), "the secret is shown once only"
    usage = page.locator("#usage")  # the live region console.js refreshes every 5 s
    expect(usage).to_contain_text("0 / 1 USD")
    expect(usage).to_contain_text("600 requests per minute")
    for r in recipients:
        expect(page.get_by_role("button", name=f"Remove {r}")).to_be_visible()
    visit(page, "key-fresh")
    return secret, key_id


def overview_spend(page, cents, name):
    """Opens the overview once (no reload, no wait: it reads the usage store only after the store
    has every event logged before, as the analytics API does) and checks its Spend today against
    the analytics API's cost since 00:00 UTC, which must be `cents`. Returns both."""
    since = today()
    nav(page, "Overview")
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    shown = page.locator("#spend-today").inner_text()
    visit(page, name)
    api = Decimal(analytics("cost", since)["total"])
    assert api == cents, (api, cents)
    assert shown == usd(api), f"the overview shows {shown}, the analytics API {usd(api)}"
    return shown, api


def status_of(page):
    """The Status fact of a key's page."""
    return page.locator("dl.facts dt", has_text="Status").locator("xpath=following-sibling::dd[1]")


def main():
    recipients = ["alice@example.com", "bob@example.com"]
    with sync_playwright() as p:
        b = browser.launch(p)
        page, errors = browser.new_page(b)
        page.set_default_timeout(PATIENCE_MS)

        sign_in(page)
        research = create_workspace(page, "Research", "research")
        marketing = create_workspace(page, "Marketing", "marketing")
        connect_openai(page)
        provision(page, {"Research": (10, 8, 300), "Marketing": (5, 4, 120)})
        restrict_models(page)
        secret, key_id = create_key(page, "Research", recipients)

        step("chat completions through the openai SDK with the new key")
        oa = openai.OpenAI(api_key=secret, base_url=f"{URL}/v1", max_retries=0)
        r = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from the mock!", r
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, 7), r.usage
        sent = 1
        try:
            oa.chat.completions.create(model=f"@{SLUG}/gpt-4o", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("a model not provisioned was served")
        except openai.PermissionDeniedError:
            pass

        step("the key's usage bar moves by itself (console.js refreshes #usage)")
        usage = page.locator("#usage")
        expect(usage).to_contain_text(f"{usd(CHAT_CENTS)[1:]} / 1 USD")
        visit(page, "key-used")

        step("the overview's Spend today is the analytics API's cost")
        overview_spend(page, CHAT_CENTS * sent, "overview-spend")

        step("exhaust the budget: chats until the SDK gets 412")
        ok = sent
        refused = None
        while refused is None:
            assert ok < 20, "the budget was never enforced"
            try:
                oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                ok += 1
            except openai.APIStatusError as e:
                assert e.status_code == 412, (e.status_code, e.response.text)
                refused = e.response.json()
        print("served", ok, "then 412:", refused, flush=True)

        step("the overview at once after the last chat: it reads its own writes, as the API does")
        spend_today, total = overview_spend(page, CHAT_CENTS * ok, "overview-after")
        requests_shown = int(page.locator("#requests").inner_text())
        assert requests_shown == ok, (requests_shown, ok)

        step("the key's page: exhausted, live and on reload")
        page.goto(f"{URL}/console/keys/{key_id}")
        expect(page.locator("#usage")).to_contain_text("exhausted")
        expect(status_of(page)).to_have_text("exhausted")
        visit(page, "key-exhausted")
        nav(page, "API keys")
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name="research-svc", exact=True))
        expect(row).to_contain_text("exhausted")
        visit(page, "keys-after")

        step("the Alerts page: threshold and exhaustion e-mailed to both recipients")
        nav(page, "Alerts")

        last = []

        def delivered():
            rows = page.get_by_role("table", name="Alert deliveries").get_by_role("row")
            texts = [t for t in rows.all_inner_texts() if "api_key:" in t]
            last[:] = rows.all_inner_texts()
            done = [t for t in texts if "delivered" in t.lower() and all(r in t for r in recipients)]
            kinds = {k for k in ("threshold_crossed", "exhausted") for t in done if k in t}
            if kinds == {"threshold_crossed", "exhausted"}:
                return texts
            page.reload()
            return None

        alert_rows = wait_until(delivered)
        visit(page, "alerts")
        assert alert_rows, f"both alerts were never shown delivered; the table: {last}"

        step("the other pages render without errors")
        for section, heading in [("Analytics", "Analytics"), ("Providers", "Providers"), ("Configs", "Configs"),
                                 ("Audit log", "Audit log")]:
            nav(page, section)
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            visit(page, section.lower().replace(" ", "-"))
        audit = page.get_by_role("table", name="Audit log")
        expect(audit).to_contain_text("research-svc")
        expect(audit).to_contain_text("Mock OpenAI")

        step("keyboard: the first Tab reaches Skip to content, then the sections")
        page.goto(f"{URL}/console")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Overview"

        step("on a phone (390 px): the overview and the key's page fit the screen's width")
        page.set_viewport_size({"width": 390, "height": 844})
        for path, name in [("/console", "phone-overview"), (f"/console/keys/{key_id}", "phone-key")]:
            page.goto(f"{URL}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, f"{path} is {width} px wide on a 390 px screen"
            visit(page, name)
        page.set_viewport_size({"width": 1280, "height": 900})

        step("no secret in any saved page but the one that shows it once")
        for name in visited:
            with open(os.path.join(SHOTS, f"{name}.html"), encoding="utf-8") as f:
                html = f.read()
            assert PROVIDER_KEY not in html, f"provider key in {name}"
            assert ADMIN not in html, f"admin key in {name}"
            assert (secret in html) == name.endswith("key-created"), f"secret in {name}"

        b.close()
        assert errors == [], errors

    out.update({
        "workspaces": {"Research": research, "Marketing": marketing},
        "integration": SLUG,
        "key_id": key_id,
        "served": ok,
        "refused": refused,
        "spend_today": spend_today,
        "cost_cents": str(total),
        "requests_shown": requests_shown,
        "alerts": alert_rows,
        "pages": visited,
    })
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
