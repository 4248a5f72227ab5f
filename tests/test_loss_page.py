"""The interactive page loss_field.html in a real headless Chromium (selenium + chromedriver).

Skipped unless Debian's chromium and chromium-driver are installed
(``apt-get install chromium chromium-driver``) and selenium is importable.
"""

import shutil
import time
from importlib import resources
from pathlib import Path

import pytest
import torch

from blackgrad import losses as L

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ENABLE = "install Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"no chromium/chromedriver; to run this test {ENABLE}", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

PAGE = resources.files("blackgrad.experiments").joinpath("loss_field.html")


@pytest.fixture(scope="module")
def driver():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1400,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium must not try to download one
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


@pytest.fixture
def page(driver):
    """The page loaded afresh, paused (``?paused``): it draws only on input or ``stepAnimation``."""
    with resources.as_file(PAGE) as path:
        driver.get(Path(path).resolve().as_uri() + "?paused")
    assert driver.execute_script("return window.fieldState().paused")
    return driver


def checksum(driver):
    return driver.execute_script("return window.fieldChecksum()")


def test_page_is_self_contained():
    html = PAGE.read_text()
    assert "<script src" not in html and "http://" not in html and "https://" not in html


def test_page_loads_without_console_errors(page):
    assert [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"] == []


def test_pause_checkbox_starts_and_stops_the_animation(page):
    pause = page.find_element("id", "paused")
    pause.click()
    deadline = time.monotonic() + 10
    while page.execute_script("return window.fieldState().time") <= 0:
        assert time.monotonic() < deadline, "the animation never started"
        time.sleep(0.05)
    pause.click()
    stopped = page.execute_script("return window.fieldState().time")
    time.sleep(0.2)
    assert page.execute_script("return window.fieldState().time") == stopped


def test_mouse_moves_the_target_and_changes_the_field(page):
    before = checksum(page)
    assert checksum(page) == before  # paused: the picture is stable
    canvas = page.find_element("id", "field")
    # fully in view, so that offsets are from the canvas centre (not its visible part's)
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(page).move_to_element_with_offset(canvas, -160, 80).perform()
    target = page.execute_script("return window.fieldState().target")
    # 640 px canvas for [-2, 2]²: 160 px left, 80 px down of the centre is (−1, −0.5)
    assert target == pytest.approx([-1.0, -0.5], abs=0.02)
    after = checksum(page)
    assert after != before
    ActionChains(page).move_to_element_with_offset(canvas, 100, -120).perform()
    assert checksum(page) not in (before, after)


def test_every_loss_draws_a_different_field(page):
    select = Select(page.find_element("id", "loss"))
    options = [o.get_attribute("value") for o in select.options]
    assert options == list(L.LOSSES)
    sums = {}
    for name in options:
        select.select_by_value(name)
        assert page.execute_script("return window.fieldState().loss") == name
        sums[name] = checksum(page)
    assert len(set(sums.values())) == len(sums), sums


def test_controls_change_the_field(page):
    page.execute_script("window.stepAnimation(5)")  # time > 0: colour and noise speeds matter
    Select(page.find_element("id", "loss")).select_by_value("gen_sim_loss")
    page.find_element("id", "noise").send_keys(Keys.RIGHT * 4)  # noise on: its controls matter
    for control in ("alpha", "grid", "amplitude", "noise", "noiseSpace", "noiseTime",
                    "motionLength", "colourSpeed"):
        before = checksum(page)
        page.find_element("id", control).send_keys(Keys.RIGHT)  # a real key press: one step
        assert checksum(page) != before, control
    for control, value in (("mode", "arrows"), ("mode", "particles"), ("colour", "loss")):
        before = checksum(page)
        Select(page.find_element("id", control)).select_by_value(value)
        assert checksum(page) != before, (control, value)


def _mean_particle_step(driver):
    """Mean displacement of the particles over one animation frame (respawned ones left out)."""
    before = driver.execute_script("return window.fieldState().particles")
    driver.execute_script("window.stepAnimation(1)")
    after = driver.execute_script("return window.fieldState().particles")
    moves = [((a["p"][0] - b["p"][0]) ** 2 + (a["p"][1] - b["p"][1]) ** 2) ** 0.5
             for a, b in zip(after, before) if a["age"] == b["age"] + 1]
    assert len(moves) > 0.5 * len(before)
    return sum(moves) / len(moves)


def test_motion_speed_sets_the_particle_speed(page):
    speed = page.find_element("id", "motionSpeed")
    speed.send_keys(Keys.HOME)  # 0: the particles stand still
    assert _mean_particle_step(page) == 0
    speed.send_keys(Keys.RIGHT * 4)  # 0.2
    slow = _mean_particle_step(page)
    speed.send_keys(Keys.RIGHT * 4)  # 0.4
    assert slow > 0 and _mean_particle_step(page) == pytest.approx(2 * slow, rel=0.2)


def test_page_losses_match_the_library(page):
    gen = torch.Generator().manual_seed(3)
    for name, loss in L.LOSSES.items():
        for _ in range(5):
            x = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
            y = torch.randn(2, dtype=torch.float64, generator=gen)
            alpha = float(torch.rand(1, generator=gen, dtype=torch.float64) * 2)
            value = loss(x[None], y[None], **({"alpha": alpha} if name == "gen_sim_loss" else {}))
            (grad,) = torch.autograd.grad(value, x)
            on_page = page.execute_script(
                "return window.lossAndGradient(...arguments)", name, x.tolist(), y.tolist(), alpha)
            assert on_page["value"] == pytest.approx(value.item(), rel=1e-9, abs=1e-12), name
            assert on_page["grad"] == pytest.approx(grad.tolist(), rel=1e-9, abs=1e-12), name
