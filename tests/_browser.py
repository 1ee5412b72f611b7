"""Headless Chromium (selenium, Debian's chromium + chromedriver) with the network blocked, for the view tests.

Skipped where chromium or chromedriver is absent (``apt-get install chromium chromium-driver``).
"""

import re
import shutil
import tempfile

import pytest

REMOTE = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']?(?:https?:)?//|\bfrom\s*["']https?://|import\(\s*["']https?://""",
                    re.IGNORECASE)
RENDERED = """
const views = [...document.querySelectorAll('div[id^="circuits-vis-"]')];
return views.length > 0 && views.every(v => v.children.length > 0);
"""
REMOTE_LOADS = "return performance.getEntriesByType('resource').map(e => e.name).filter(n => /^https?:/.test(n))"


def browser_paths():
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return chromium, shutil.which("chromedriver")


def offline_chromium():
    """A generator for a pytest fixture: a headless Chromium driver that cannot reach any host."""
    chromium, driver_path = browser_paths()
    if chromium is None or driver_path is None:
        pytest.skip("headless browser test needs chromium and chromedriver on PATH (CI installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="icr-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--window-size=1100,900", f"--user-data-dir={profile}",
                 # No network: every host name fails to resolve and any proxied request goes nowhere.
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)  # explicit driver: no Selenium Manager
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_offline(driver, path) -> None:
    """Load ``path``, wait until every circuitsvis view has rendered, and assert nothing was fetched or failed."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(RENDERED))
    assert driver.execute_script(REMOTE_LOADS) == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
