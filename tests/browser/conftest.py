"""A real headless Chromium (Debian's chromium + chromium-driver) driving the console on a live
server, with every request the browser makes recorded: a page may load nothing from another host."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlparse

import pytest

from tests.conftest import wait_for

INSTALL_HINT = "apt-get install chromium chromium-driver"
PASSWORD = "console-password"


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    problem = None
    if not chromium or not driver:
        problem = f"no headless browser for the console tests: {INSTALL_HINT}"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            problem = "selenium is not installed: pip install -r requirements-dev.txt"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem + " (CI=true: a missing browser is a failure)")
        pytest.skip(problem)
    return chromium, driver


@pytest.fixture(scope="session")
def chrome():
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900",
                     "--disable-gpu", "--disable-extensions", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-default-apps", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # Network.* events (CDP)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Browser:
    """The driver, the live server's address, and the URL of every request the pages made."""

    def __init__(self, driver, base_url: str):
        self.driver, self.base_url = driver, base_url.rstrip("/")
        self.host = urlparse(self.base_url).netloc
        self.requests: list[str] = []

    def visit(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.collect()

    def collect(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
        return self.requests

    def foreign_requests(self) -> list[str]:
        self.collect()
        return [url for url in self.requests
                if urlparse(url).scheme not in ("data", "blob", "about") and urlparse(url).netloc != self.host]

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        """The text of the first match, or "" (the live fragment may be swapped while we read)."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        try:
            found = self.css(selector)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            return ""
        except WebDriverException as exc:  # Chromium's word for the same swap, at another moment
            if "does not belong to the document" in str(exc):
                return ""
            raise

    def wait_text(self, selector: str, expected, timeout: float = 20) -> str:
        """Wait until the element's text is (or, for a callable, satisfies) `expected`."""
        check = expected if callable(expected) else (lambda text: text == expected)
        return wait_for(lambda: (t := self.text(selector)) and check(t) and t, timeout, 0.1,
                        f"{selector} to read {expected!r} (it reads {self.text(selector)!r})")

    def click(self, selector: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked():
            try:
                self.css(selector)[0].click()
                return True
            except (StaleElementReferenceException, IndexError):
                return False
        wait_for(clicked, 10, 0.1, f"{selector} to be clickable")
        self.collect()

    def fill(self, selector: str, value: str) -> None:
        element = self.css(selector)[0]
        element.clear()
        element.send_keys(value)

    def select(self, selector: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.css(selector)[0]).select_by_value(value)

    def log_in(self, username: str, password: str = PASSWORD) -> None:
        self.driver.delete_all_cookies()
        self.visit("/console/")
        assert "/admin/login/" in self.driver.current_url
        self.fill("#id_username", username)
        self.fill("#id_password", password)
        self.click("input[type=submit]")
        wait_for(lambda: urlparse(self.driver.current_url).path == "/console/", 30, 0.1,
                 f"the console after login (at {self.driver.current_url})")


@pytest.fixture
def operator(django_user_model):
    """A superuser (staff, with the permission to retry dead letters)."""
    return django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)


@pytest.fixture
def browser(chrome, live_server, transactional_db, operator):
    """A logged-in console session; after the test, no page may have asked another host for anything."""
    session = Browser(chrome, live_server.url)
    session.log_in(operator.username)
    yield session
    foreign = session.foreign_requests()
    chrome.get("about:blank")  # the page's refresh stops with the test
    assert foreign == []
