"""End to end: the web page in a real (headless) Chromium against uvicorn on loopback."""

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium executable on PATH")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, headless=True,
                                  args=["--no-sandbox", "--disable-gpu"])
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start here
            pytest.skip(f"chromium does not start: {exc}")
        yield b
        b.close()


def test_page_upload_box_and_results(browser, served_index):
    from skretrieval.serve import create_app, load_model

    path, root, names = served_index
    app = create_app(load_model(path), images_root=root)
    with ServerThread(app) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function(
            "document.querySelector('[data-testid=info]').textContent.includes('images')")
        assert page.text_content("[data-testid=info]").startswith(f"{len(names)} images")

        page.fill("[data-testid=k]", "4")
        page.set_input_files("[data-testid=file-input]", str(root / "img2.jpg"))
        page.wait_for_selector("[data-testid=results][data-state=done]", timeout=30_000)
        items = page.locator("[data-testid=result]")
        assert items.count() == 4
        first = items.nth(0)
        assert first.get_attribute("data-id") == "img2.jpg"
        assert first.get_attribute("data-rank") == "1"
        assert float(first.get_attribute("data-score")) == pytest.approx(1.0, abs=1e-4)
        assert page.text_content("#result-1 [data-testid=result-id]") == "img2.jpg"
        # the thumbnails are loaded from /images
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=result] img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")

        # drag a box on the image: a new search of that region
        box = page.locator("[data-testid=overlay]").bounding_box()
        assert box["width"] > 10
        page.mouse.move(box["x"] + 0.1 * box["width"], box["y"] + 0.1 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.7 * box["height"],
                        steps=5)
        page.mouse.up()
        page.wait_for_function(
            "document.querySelector('[data-testid=box]').textContent.startsWith('region')")
        page.wait_for_selector("[data-testid=results][data-state=done]", timeout=30_000)
        text = page.text_content("[data-testid=box]")
        x1, y1, x2, y2 = (int(v) for v in text.split("=")[1].split("(")[0].split(","))
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 72  # image pixels, not screen
        assert page.locator("[data-testid=result]").count() == 4

        # a file that is not an image: an error message, no results
        bad = root.parent / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("[data-testid=file-input]", str(bad))
        page.wait_for_selector("[data-testid=results][data-state=error]", state="attached",
                               timeout=30_000)
        assert "not an image" in page.text_content("[data-testid=status]")
        assert errors == []
        page.close()
