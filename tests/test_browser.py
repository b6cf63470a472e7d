"""The web page in a real headless Chromium: a cat picked, a dog dropped, labels and heatmaps shown."""

import base64
import io
import os

from PIL import Image

from conftest import photo

CAT, DOG = ("test", "cats", 4200), ("test", "dogs", 4200)

# A real drop event carrying a file, as a desktop browser sends it when a photo is dragged in.
DROP = """
const [data, name, type] = arguments;
const transfer = new DataTransfer();
transfer.items.add(new File([Uint8Array.from(atob(data), c => c.charCodeAt(0))], name, {type}));
const zone = document.getElementById("drop-zone");
for (const kind of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: transfer}));
}
"""

# Alpha values of a loaded <img>, drawn into a canvas.
ALPHA_RANGE = """
const image = arguments[0];
const canvas = document.createElement("canvas");
canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(image, 0, 0);
const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
let low = 255, high = 0;
for (let i = 3; i < pixels.length; i += 4) { low = Math.min(low, pixels[i]); high = Math.max(high, pixels[i]); }
return [low, high];
"""


def test_page_labels_a_cat_and_a_dog_and_overlays_their_heatmaps(browser, lite0_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = lite0_server
    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model-info").text)
    assert "cats, dogs" in browser.find_element(By.ID, "model-info").text

    cat, dog = photo(*CAT), photo(*DOG)
    browser.find_element(By.ID, "file-input").send_keys(str(cat))  # picked
    browser.execute_script(DROP, base64.b64encode(dog.read_bytes()).decode(), dog.name, "image/jpeg")  # dropped
    browser.execute_script(DROP, base64.b64encode(b"not a photo").decode(), "notes.txt", "text/plain")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card:not([data-state="pending"])')) == 3)
    cards = {card.find_element(By.CLASS_NAME, "name").text: card for card in browser.find_elements(By.CLASS_NAME, "card")}

    error = cards["notes.txt"]
    assert error.get_attribute("data-state") == "error"
    assert "not an image" in error.find_element(By.CLASS_NAME, "error").text
    assert not error.find_element(By.CLASS_NAME, "photo").is_displayed()  # nothing to show

    for path, label in ((cat, "cats"), (dog, "dogs")):
        card = cards[path.name]
        assert card.get_attribute("data-state") == "done"
        assert card.find_element(By.CLASS_NAME, "label").text.startswith(f"{label} ")
        predicted_bar = card.find_element(By.CSS_SELECTOR, ".bar-row.predicted")
        assert predicted_bar.find_element(By.CLASS_NAME, "class").text == label
        assert float(predicted_bar.find_element(By.CLASS_NAME, "value").text.rstrip("%")) > 50
        assert len(card.find_elements(By.CLASS_NAME, "bar-row")) == 2

        image = card.find_element(By.CLASS_NAME, "image")
        heatmap = card.find_element(By.CLASS_NAME, "heatmap")
        assert not heatmap.is_displayed()
        card.find_element(By.CLASS_NAME, "show-heatmap").click()
        wait.until(lambda d: heatmap.is_displayed() and d.execute_script("return arguments[0].naturalWidth", heatmap))
        assert heatmap.rect == image.rect  # laid exactly over the photo
        low, high = browser.execute_script(ALPHA_RANGE, heatmap)
        assert high - low > 50  # hot and cold regions, not a flat tint
    cards[cat.name].find_element(By.CLASS_NAME, "show-heatmap").click()  # toggled off again
    assert not cards[cat.name].find_element(By.CLASS_NAME, "heatmap").is_displayed()

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith((url, "blob:", "data:")) for r in resources), resources
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "/predict" not in entry["message"]]  # the refused text file is expected
    assert not errors, errors

    if os.environ.get("CATSDOGS_SCREENSHOT"):  # how docs/serve-screenshot.png is made
        browser.set_window_size(1000, 1040)
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        screenshot.quantize(256).save(os.environ["CATSDOGS_SCREENSHOT"], optimize=True)

    browser.set_window_size(390, 844)  # a phone
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    width = cards[dog.name].rect["width"]
    assert 300 < width <= 390  # one card per line, full width


def test_page_says_neither_a_cat_nor_a_dog_for_a_car(browser, lite0_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from conftest import unknown_photo

    url, _ = lite0_server
    browser.get(url + "/")
    car = unknown_photo("cars", "00029.jpg")
    browser.find_element(By.ID, "file-input").send_keys(str(car))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '.card:not([data-state="pending"])'))
    card = browser.find_element(By.CLASS_NAME, "card")
    assert card.get_attribute("data-state") == "unknown"
    assert card.find_element(By.CLASS_NAME, "label").text == "Neither a cat nor a dog"
    assert "none of the photos this model learned from" in card.find_element(By.CLASS_NAME, "note").text
