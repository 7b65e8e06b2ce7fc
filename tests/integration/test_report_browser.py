"""`align report` on a real run, opened in headless Chromium: every section and every plot renders, the
samples browser filters, and the page logs no console error (offline: no network is needed or used).

Needs Debian's chromium and chromium-driver (``apt-get install -y chromium chromium-driver``, as .ci/run
does) and selenium from PyPI (the dev extra); skipped with the reason when either is missing. A screenshot
of the page is saved in the test's tmp dir (report.png)."""

import importlib.util
import shutil
import time
from pathlib import Path

import pytest

from tests.support import reset_accelerate_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs chromium and chromedriver (apt-get install -y chromium chromium-driver)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("selenium") is None, reason="needs selenium (pip install selenium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("plotly") is None, reason="needs plotly (pip install plotly)"
    ),
    pytest.mark.usefixtures("fresh_accelerate_state", "one_torch_thread"),
]


def _grpo_run(out: Path, model: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "recipe_grpo_math_report", ROOT / "recipes" / "grpo_math.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.main(["--model_name_or_path", str(model), "--output_dir", str(out), "--eval_limit", "2",
                 "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_new_tokens", "8",
                 "--max_steps", "2", "--log_completions", "8", "--skip_zero_std_groups", "false",
                 "--disable_progress_bar", "true"])  # fmt: skip
    reset_accelerate_state()


@pytest.fixture
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_report_renders_in_chromium(tmp_path, tiny_model_dir, driver):
    from selenium.webdriver.common.by import By

    from align.report import write_report

    run = tmp_path / "grpo_tiny"
    _grpo_run(run, tiny_model_dir)
    page = write_report([run], tmp_path / "report.html")

    driver.get(page.as_uri())
    # Every figure draws: plotly puts an SVG (and WebGL canvas for gl traces) into each .plotly-graph-div.
    deadline = time.monotonic() + 30
    while True:
        divs = driver.find_elements(By.CSS_SELECTOR, ".plotly-graph-div")
        drawn = driver.execute_script(
            "return Array.from(document.querySelectorAll('.plotly-graph-div'))"
            ".filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg')).length"
        )
        if divs and drawn == len(divs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert divs and drawn == len(divs), f"{drawn} of {len(divs)} figures drew"
    # Curves: the traces have drawn paths, not only empty axes.
    assert (
        driver.execute_script(
            "return document.querySelectorAll('.plotly-graph-div .scatterlayer .trace').length"
        )
        > 0
    )

    sections = {s.get_attribute("id") for s in driver.find_elements(By.TAG_NAME, "section")}
    assert {"runs", "curves", "monitors", "samples"} <= sections
    for sid in sections:
        assert driver.find_element(By.ID, sid).is_displayed()
    assert driver.find_elements(By.CSS_SELECTOR, "#curves .plotly-graph-div")

    # The samples browser: typing a word hides the rows without it; clearing shows them all again.
    rows = driver.find_elements(By.CSS_SELECTOR, "#samples tbody tr")
    assert len(rows) >= 4
    word = rows[0].find_element(By.CSS_SELECTOR, ".completion").text.split()[0].lower()
    box = driver.find_element(By.ID, "sample-filter")
    box.send_keys(word)
    visible = [r for r in rows if r.is_displayed()]
    assert 0 < len(visible) < len(rows) and all(word in r.text.lower() for r in visible)
    assert driver.find_element(By.ID, "sample-count").text == f"{len(visible)} of {len(rows)} rows"
    box.send_keys("zzz-no-such-text")
    assert not any(r.is_displayed() for r in rows)
    box.clear()
    box.send_keys(" ")  # an input event with an empty filter
    assert all(r.is_displayed() for r in rows)

    driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
