"""Headless Chromium for the exit view: screenshots for the README and browser
tests. Needs Selenium (`pip install "spacy-earlyexit[browser]"`) and a
Chromium with its ChromeDriver (Debian: `apt-get install chromium
chromium-driver`); nothing is downloaded and no network is used.
"""

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from .outputs import check_output, replacing_file

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class BrowserUnavailable(RuntimeError):
    """Selenium, Chromium or ChromeDriver is missing."""


def find_browser(chromium: Optional[str] = None, chromedriver: Optional[str] = None):
    """Paths of the Chromium binary and of ChromeDriver, or BrowserUnavailable
    saying what to install."""
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = (
        chromedriver
        or shutil.which("chromedriver")
        or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    )
    if not chromium or not chromedriver:
        raise BrowserUnavailable(
            "Chromium and ChromeDriver are needed (on Debian: apt-get install chromium chromium-driver); "
            f"found chromium={chromium}, chromedriver={chromedriver}."
        )
    return chromium, chromedriver


@contextmanager
def chromium_driver(
    width: int = 1100, height: int = 800, chromium: Optional[str] = None, chromedriver: Optional[str] = None
) -> Iterator["object"]:
    """A headless Chromium WebDriver with a fresh profile, closed on exit."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise BrowserUnavailable(
            'Selenium is needed: pip install "spacy-earlyexit[browser]" (or pip install selenium).'
        ) from err
    chromium, chromedriver = find_browser(chromium, chromedriver)
    with tempfile.TemporaryDirectory(prefix="earlyexit-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def screenshot_page(driver, url: str, width: int = 1100) -> bytes:
    """Load `url` and return a PNG of the whole page (the window grown to fit it)."""
    driver.set_window_size(width, 600)
    driver.get(url)
    for _ in range(3):  # the window's frame may take some of its height: measure, then grow
        needed, inner, outer = driver.execute_script(
            "return [Math.ceil(document.documentElement.scrollHeight), window.innerHeight, window.outerHeight];"
        )
        if inner >= needed:
            break
        driver.set_window_size(width, int(needed) + int(outer) - int(inner))
    return driver.get_screenshot_as_png()


def screenshot_html(html: str, output: Union[str, Path], width: int = 1100) -> Path:
    """Render an HTML page in headless Chromium and save a PNG of it to
    `output`, a regular file (replaced once the new one is complete)."""
    output = check_output(output)  # before starting a browser
    with tempfile.TemporaryDirectory(prefix="earlyexit-page-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(html, encoding="utf8")
        with chromium_driver(width=width) as driver:
            png = screenshot_page(driver, page.as_uri(), width)
    with replacing_file(output) as partial:
        partial.write_bytes(png)
    return output
