"""Helpers for the web console's browser tests: a headless system Chromium driven by Playwright.

The browser is Debian's /usr/bin/chromium (installed by scripts/test.sh; override with env
TG_CHROMIUM), never one of Playwright's own builds, which cannot be downloaded here. Use:

    from playwright.sync_api import sync_playwright
    import browser

    with sync_playwright() as p:
        b = browser.launch(p)
        page, errors = browser.new_page(b)
        page.goto(url)
        page.click("text=Save")
        browser.shot(page, "keys-saved")
        assert errors == [], errors  # no console errors, no CSP violations
        b.close()

Screenshots go to env TG_SCREENSHOTS (default ./target/console-screenshots).
"""

import os

# Flags this machine needs. Chromium's own background traffic (component updates, sync, QUIC
# probes) has nowhere to go on this closed network, so it is kept off; --no-sandbox because the
# tests run as root; --disable-dev-shm-usage so a small /dev/shm cannot crash the renderer.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def launch(playwright):
    """A headless Chromium. Playwright's launch() gives it a fresh temporary user data dir of its
    own (removed on close), so runs never share a profile."""
    return playwright.chromium.launch(
        executable_path=os.environ.get("TG_CHROMIUM", "/usr/bin/chromium"),
        headless=True,
        args=ARGS,
    )


def new_page(browser):
    """A page in a fresh context (no cookies shared with other pages), 1280x900, and the list its
    errors are collected into: console errors (CSP violations, failed loads), report-only CSP
    violations, and uncaught page exceptions.

    Chromium fetches /favicon.ico by itself, after the load event: a 404 there lands in `errors`
    at a time the test does not control, and `<link rel=icon href="data:,">` is a CSP violation
    under default-src 'self'. The console must answer /favicon.ico (any 2xx)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    errors = []

    def on_console(m):
        # Chromium logs a CSP violation as an error, "Refused to ..." in older versions and
        # "Executing inline script violates the following Content Security Policy directive ..."
        # in 156; a report-only policy's violations come at level info, hence the text match.
        if m.type == "error" or "Refused to" in m.text or "Content Security Policy" in m.text:
            # The URL says which resource a "Failed to load resource: ... 404" was about.
            errors.append(f"console {m.type}: {m.text} [{m.location.get('url', '')}]")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    return page, errors


def shot(page, name):
    """Saves a full-page PNG of `page` as <TG_SCREENSHOTS>/<name>.png and returns its path."""
    folder = os.environ.get("TG_SCREENSHOTS", os.path.join("target", "console-screenshots"))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path
