"""The operator console over real HTTP on loopback, driving a real monitor (no browser here:
the page's buttons post exactly these requests)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from efm.self_improve.console import Console
from efm.self_improve.monitor import FleetMonitor


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET")) as r:
        return json.loads(r.read())


def test_console_shows_actors_and_its_buttons_reach_the_fleet() -> None:
    monitor = FleetMonitor()
    monitor.round_started(2)
    monitor.status(0, {"policy_version": 2, "step": 7, "steps_to_go": 3.5, "steps_to_go_curve": [9.0, 6.0, 3.5],
                       "detected": False, "in_flight": 4})
    monitor.status(1, {"policy_version": 2, "step": 1, "steps_to_go": 0.5, "detected": True, "in_flight": 4})
    monitor.round_ended({"round": 1.0, "episodes": 70.0, "success_rate": 0.9, "mean_episode_length": 21.0})
    console = Console(monitor, "127.0.0.1", 0)
    try:
        assert console.url.startswith("http://127.0.0.1:")  # loopback
        with urllib.request.urlopen(console.url) as r:
            page = r.read().decode()
        assert "Self-Improvement fleet" in page and "/api/state" in page and "End episodes" in page
        state = call(console.url + "api/state")
        assert state["round"] == 2 and state["actors"]["0"]["steps_to_go_curve"] == [9.0, 6.0, 3.5]
        assert state["rounds"][0]["success_rate"] == 0.9
        call(console.url + "api/stop", {"actor": 1})  # "End episodes" on actor 1
        assert monitor.take_stop(1) and not monitor.take_stop(0)
        call(console.url + "api/stop", {})  # "End all episodes"
        assert monitor.take_stop(0) and monitor.take_stop(1)
        assert call(console.url + "api/pause", {"paused": True})["paused"] and monitor.paused()
        assert not call(console.url + "api/pause", {"paused": False})["paused"]
    finally:
        console.close()


def test_the_stop_button_ends_a_running_actors_episodes() -> None:
    """The monitor's stop is the episode loop's external stop in the one-process runtime too:
    pressed while the actor's episodes run, it ends them; pressed between rounds, it ends
    nothing (it used to end the next round's episodes at their first observation)."""
    import dataclasses
    import threading
    import time

    import jax
    import numpy as np

    from efm.config import debug_config
    from efm.self_improve.builder import FleetBuilder

    cfg = debug_config()
    cfg = cfg.replace(self_improve=dataclasses.replace(cfg.self_improve, num_envs=3))
    builder = FleetBuilder(cfg)
    inputs = {"observation/position": np.zeros((1, 2), np.float32), "goal/target": np.zeros((1, 2), np.float32)}
    params = builder.fns.init(jax.random.PRNGKey(0), inputs)
    fleet = builder.build(params, params)
    limit = float(cfg.env.max_episode_steps)  # fresh weights: every episode runs to it

    def stop_once_running() -> None:
        deadline = time.monotonic() + 60
        while fleet.view.snapshot()["actors"].get("0", {}).get("step", -1) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        fleet.view.request_stop(0)

    try:
        fleet.view.request_stop(0)  # before the round: no episode runs
        between = fleet.collect_round(params, 0, 3)
        _, params = fleet.learn_round(cfg.self_improve.learning_rate)  # empties the replay
        fleet.view.status(0, {})  # forget round 0's last step: the thread waits for round 1's
        pressing = threading.Thread(target=stop_once_running)
        pressing.start()
        running = fleet.collect_round(params, 1, 3)
        pressing.join()
    finally:
        fleet.close()
    assert [e["length"] for e in between] == [limit] * 3
    assert len(running) == 3 and all(0 < e["length"] < limit for e in running)


def test_console_in_a_headless_browser(tmp_path: Path) -> None:
    """The page in real headless Chromium (Debian's chromium + chromium-driver, Selenium):
    actors and rounds rendered from the monitor, and its buttons reaching the monitor."""
    import shutil

    import pytest

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver")
    monitor = FleetMonitor()
    monitor.round_started(3)
    monitor.status(0, {"policy_version": 3, "step": 5, "steps_to_go": 4.0, "steps_to_go_curve": [8.0, 6.0, 4.0],
                       "detected": False, "in_flight": 2})
    monitor.status(1, {"policy_version": 3, "step": 2, "steps_to_go": 0.5, "steps_to_go_curve": [2.0, 0.5],
                       "detected": True, "in_flight": 1})
    monitor.round_ended({"round": 2.0, "episodes": 64.0, "success_rate": 0.75, "mean_episode_length": 18.0,
                         "updates": 16.0})
    console = Console(monitor, "127.0.0.1", 0)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path / "profile"  # a fresh profile; no background traffic into a closed network
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(console.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#actors tbody tr")) == 2)
        rows = browser.find_elements(By.CSS_SELECTOR, "#actors tbody tr")
        assert [r.find_element(By.CLASS_NAME, "version").text for r in rows] == ["3", "3"]
        assert rows[0].find_elements(By.TAG_NAME, "polyline")  # the d(o, g) curve is drawn
        assert "yes" in rows[1].text and browser.find_element(By.ID, "round").text == "3"
        assert "0.75" in browser.find_element(By.ID, "rounds").text
        browser.find_element(By.CSS_SELECTOR, '#actors tr[data-actor="1"] .stop').click()  # end actor 1's episodes
        wait.until(lambda b: monitor.take_stop(1))
        browser.find_element(By.ID, "pause").click()
        wait.until(lambda b: b.find_element(By.ID, "state").text == "paused")
        assert monitor.paused()
        browser.find_element(By.ID, "resume").click()
        wait.until(lambda b: b.find_element(By.ID, "state").text == "running")
        assert not monitor.paused()
    finally:
        browser.quit()
        console.close()
