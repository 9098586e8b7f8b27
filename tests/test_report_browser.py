"""report.html in a real browser: renders without console errors, images decode, not blank.

Needs selenium (pip extra "browser") and Chromium with its driver (Debian: chromium,
chromium-driver); skipped when either is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hptransfer.report import build_report

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2400",
)
MIN_PIXEL_STD = 10.0  # a blank page has 0; a page with text and figures has tens


@pytest.fixture
def driver(tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    drv = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    yield drv
    drv.quit()


def test_report_renders_in_chromium(driver, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from test_report import write_synthetic_sweep

    html_path, _ = build_report(write_synthetic_sweep(tmp_path / "sweep"))
    driver.get(html_path.resolve().as_uri())
    assert driver.find_element("id", "headline-table").is_displayed()
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    images = driver.find_elements("tag name", "img")
    assert len(images) >= 3
    widths = [
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im)
        for im in images
    ]
    assert all(w and w > 0 for w in widths), widths
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > MIN_PIXEL_STD
