"""adapt3d studio in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

The server runs in a thread on a free loopback port with the tiny preset in slot A and a second tiny generator
(other weights, saved as an adapt3d checkpoint under the runs folder) for slot B. Screenshots of every step go to
``tests/artifacts/studio/`` (or ``$ADAPT3D_TEST_ARTIFACTS/studio``); ``ADAPT3D_STUDIO_README_SHOT=path`` also saves
the README screenshot there.

Without Chromium, chromedriver or selenium these tests FAIL, unless ADAPT3D_SKIP_BROWSER_TESTS=1 is set.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.models.triplane import build_generator
from adapt3d.studio.command import StudioConfig, build_server

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ADAPT3D_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "studio"


def _browser_or_fail():
    chromium = os.environ.get("ADAPT3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("ADAPT3D_CHROMEDRIVER") or shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
        missing = [n for n, v in (("chromium", chromium), ("chromedriver", driver)) if not v]
    except ImportError:
        missing = ["selenium (pip install -e '.[dev]')"]
    if missing:
        msg = (f"browser tests need {', '.join(missing)} (Debian: apt-get install -y chromium chromium-driver); "
               "set ADAPT3D_SKIP_BROWSER_TESTS=1 to skip them explicitly")
        if os.environ.get("ADAPT3D_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return chromium, driver


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("studio-browser")
    root = base / "runs"
    save_checkpoint(root / "adapted" / "final", build_generator("tiny", seed=1), metadata={"note": "test"})
    server = build_server(StudioConfig(preset="tiny", port=0, runs=root, device="cpu"), cwd=base).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def browser(studio):
    chromium, driver_path = _browser_or_fail()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,860", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout=30, message=""):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(cond, message)


def _shot(drv, name):
    drv.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _loaded(drv, img_id):
    return drv.execute_script(f"const i = document.getElementById('{img_id}');"
                              "return i.getAttribute('src') && i.complete && i.naturalWidth > 0 ? i.src : null;")


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def test_page_loads_with_the_tiny_generator(studio, browser):
    browser.get(studio.url)
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), message="page init")
    assert browser.title == "adapt3d studio"
    assert "tiny" in browser.find_element("id", "slot-a-status").text
    _wait(browser, lambda d: _loaded(d, "img-a"), message="first render of slot A")
    assert browser.execute_script("return document.getElementById('img-a').naturalWidth") == 64
    _shot(browser, "01_loaded")


def test_yaw_slider_changes_the_image_and_slot_b_compares(studio, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    before = _wait(browser, lambda d: _loaded(d, "img-a"))
    slider = browser.find_element("id", "yaw")
    slider.click()  # the thumb sits in the middle (0 degrees)
    slider.send_keys(Keys.ARROW_RIGHT * 25)
    after = _wait(browser, lambda d: (s := _loaded(d, "img-a")) and "yaw_deg=25" in s and s)
    assert after != before and browser.find_element("id", "yaw-out").text == "25"
    assert _get(after) != _get(before)  # the image itself changed, not only its URL
    _shot(browser, "02_yaw_moved")
    # slot B: the "adapted" checkpoint under the runs folder, same seed and camera, other weights
    Select(browser.find_element("id", "gen-b")).select_by_value("checkpoint:adapted/final")
    browser.find_element("id", "load-b").click()
    b = _wait(browser, lambda d: (s := _loaded(d, "img-b")) and "yaw_deg=25" in s and s, message="slot B render")
    assert "adapted/final" in browser.find_element("id", "slot-b-status").text
    assert _get(b) != _get(after)
    Select(browser.find_element("id", "view")).select_by_value("depth")
    depth = _wait(browser, lambda d: (s := _loaded(d, "img-a")) and "view=depth" in s and s)
    assert _get(depth) != _get(after)
    _shot(browser, "03_side_by_side_depth")
    Select(browser.find_element("id", "view")).select_by_value("image")
    _wait(browser, lambda d: (s := _loaded(d, "img-b")) and "view=image" in s)
    if os.environ.get("ADAPT3D_STUDIO_README_SHOT"):  # docs/studio.png
        browser.set_window_size(1000, 760)
        browser.save_screenshot(os.environ["ADAPT3D_STUDIO_README_SHOT"])
        browser.set_window_size(1200, 860)
    browser.find_element("id", "orbit-a").click()  # checked in test_orbit_video_and_mesh_download
    _wait(browser, lambda d: d.find_elements("css selector", "#explore-jobs a"), message="orbit job link")


def test_photo_upload_is_type_checked(studio, browser, tmp_path):
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "photo.png")
    (tmp_path / "fake.png").write_text("<script>alert(1)</script>")
    box = browser.find_element("id", "upload-file")
    box.send_keys(str(tmp_path / "photo.png"))
    status = _wait(browser, lambda d: (t := d.find_element("id", "upload-status").text).startswith("uploads/") and t)
    assert "40×30 PNG" in status
    _wait(browser, lambda d: _loaded(d, "upload-img"))
    box.send_keys(str(tmp_path / "fake.png"))
    status = _wait(browser, lambda d: "not a readable image" in (t := d.find_element("id", "upload-status").text) and t)
    assert browser.find_element("id", "upload-img").get_attribute("src") is None
    _shot(browser, "04a_upload_refused")


def _open_form(browser, command):
    from selenium.webdriver.support.ui import Select
    browser.find_element("id", "tab-jobs").click()
    Select(browser.find_element("id", "job-command")).select_by_value(command)
    _wait(browser, lambda d: d.find_elements("id", "f-trunc") and d.find_element("id", "f-seeds"))


def _set(browser, field, value):
    box = browser.find_element("id", f"f-{field}")
    box.clear()
    box.send_keys(value)


def test_invalid_form_values_show_their_errors_before_anything_starts(studio, browser):
    _open_form(browser, "render")
    jobs_before = sorted(studio.app.runs_root.rglob("studio_job.json"))
    _set(browser, "trunc", "5")
    browser.find_element("id", "job-start").click()
    err = _wait(browser, lambda d: d.find_element("id", "err-trunc").text, message="trunc error")
    assert "--trunc" in err and "[0, 2]" in err
    assert "invalid" in browser.find_element("id", "field-trunc").get_attribute("class")
    assert sorted(studio.app.runs_root.rglob("studio_job.json")) == jobs_before  # nothing started
    _shot(browser, "04_invalid_trunc")
    _set(browser, "trunc", "0.7")
    _set(browser, "batch_size", "many")
    browser.find_element("id", "job-check").click()
    err = _wait(browser, lambda d: d.find_element("id", "err-batch_size").text)
    assert "not an integer" in err and browser.find_element("id", "err-trunc").text == ""
    _set(browser, "batch_size", "4")
    browser.find_element("id", "job-check").click()
    _wait(browser, lambda d: "valid" in d.find_element("id", "job-message").text)


def test_a_tiny_job_runs_to_completion_with_its_grid_shown(studio, browser):
    _open_form(browser, "render")
    assert browser.find_element("id", "f-preset").get_attribute("value") == "tiny"
    _set(browser, "seeds", "0-3")
    browser.find_element("id", "job-start").click()
    msg = _wait(browser, lambda d: (t := d.find_element("id", "job-message").text).startswith("started") and t)
    job_id = msg.split()[-1]
    assert job_id.startswith("render-")
    _shot(browser, "05_job_started")
    card = f".job[data-id='{job_id}']"
    status = _wait(browser, lambda d: (e := d.find_elements("css selector", card)) and
                   e[0].get_attribute("data-status") in ("succeeded", "failed", "cancelled") and
                   e[0].get_attribute("data-status"), timeout=120, message="job end")
    log = browser.find_element("css selector", f"{card} pre.log").text
    assert status == "succeeded", log
    assert "adapt3d render: wrote" in log
    img = _wait(browser, lambda d: d.execute_script(
        "const i = document.querySelector(arguments[0]);"
        "return i && i.complete && i.naturalWidth > 0 && i.dataset.path",
        f"{card} img.job-image"), message="grid image")
    assert img == f"{job_id}/grid.png"
    assert browser.execute_script(f"return document.querySelector(\"{card} img.job-image\").naturalWidth") == 128
    _shot(browser, "06_job_done")
    browser.find_element("id", "tab-runs").click()
    row = _wait(browser, lambda d: d.find_elements("css selector", f"tr.run[data-id='{job_id}']"))
    row[0].click()
    _wait(browser, lambda d: d.find_elements("css selector", "#run-detail .gallery img"))
    assert "render.json" in browser.find_element("id", "run-detail").text
    _shot(browser, "07_run_folder")


def test_orbit_video_and_mesh_download(studio, browser):
    browser.find_element("id", "tab-explore").click()
    link = browser.find_element("css selector", "#explore-jobs a")
    job_id, folder = link.text, studio.app.runs_root / link.text
    assert job_id.startswith("explore-a-")
    job = studio.app.jobs.describe(folder)
    assert "--video orbit" in job["command_line"] and "--mesh ply" in job["command_line"]
    assert "--yaw-deg 25" in job["command_line"]
    _wait(browser, lambda d: studio.app.jobs.describe(folder)["status"] not in ("starting", "running"), timeout=120)
    assert studio.app.jobs.describe(folder)["status"] == "succeeded"
    link.click()  # opens the run in the Runs tab
    video = _wait(browser, lambda d: d.find_elements("css selector", "#run-detail video"), message="video")[0]
    assert video.get_attribute("src").endswith(f"{job_id}/orbit.mp4")
    mesh = browser.find_element("css selector", "#run-detail a[download]")
    with urllib.request.urlopen(mesh.get_attribute("href"), timeout=30) as r:
        assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
        assert r.read(3) == b"ply"
    _shot(browser, "09_orbit_run")


def test_path_traversal_is_refused(studio, browser):
    statuses = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const paths = ['/files/..%2f..%2f..%2fetc%2fpasswd', '/files/%2e%2e/%2e%2e/etc/passwd',
                       '/files/../../etc/passwd', '/files/%2Fetc%2Fpasswd',
                       '/files/adapted/final/..%2f..%2f..%2f..%2fetc%2fhostname'];
        Promise.all(paths.map(p => fetch(p).then(async r => [p, r.status, await r.text()])))
          .then(done, e => done(String(e)));""")
    assert isinstance(statuses, list), statuses
    for path, status, text in statuses:
        assert status in (403, 404) and "root:" not in text, (path, status)
    assert any(status == 403 for _, status, _ in statuses)
    browser.get(studio.url + "files/..%2f..%2f..%2fetc%2fpasswd")
    body = browser.find_element("tag name", "body").text
    assert "outside the runs folder" in body and "root:" not in body
    _shot(browser, "08_traversal_refused")
