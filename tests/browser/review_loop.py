"""The review loop in a real browser (Debian's headless Chromium, driven over WebDriver).

Run by tests/tests/browser.rs, which starts the real hub and agent and writes the
scenario as JSON: URLs, accounts, the clinic PIN, the exams it expects and where to put
screenshots. On any failure the script saves a screenshot and the page's HTML of every
open browser into the artefacts folder and exits non-zero with the step that failed.

    python review_loop.py scenario.json
"""

import json
import sys
import time
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1600",
    # The hub's certificate comes from the project's own CA and the clinic page's is
    # self-signed: this browser has neither in a trust store.
    "--ignore-certificate-errors",
]


class Failed(Exception):
    pass


def browser(s):
    o = webdriver.ChromeOptions()
    o.binary_location = s.get("chromium", "/usr/bin/chromium")
    for a in CHROMIUM_FLAGS:
        o.add_argument(a)
    o.add_argument("--user-data-dir=" + s["profile_dir"] + "/" + str(time.monotonic_ns()))
    d = webdriver.Chrome(service=Service(s.get("chromedriver", "/usr/bin/chromedriver")), options=o)
    d.set_page_load_timeout(60)
    return d


def wait_for(what, within, f, every=0.25):
    end = time.monotonic() + within
    last = None
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                return v
        except WebDriverException as e:
            last = e
        time.sleep(every)
    raise Failed(f"{what}: not within {within} s" + (f" (last error: {last.msg})" if last else ""))


def login_hub(d, s, account):
    d.get(s["hub_url"] + "/login")
    d.find_element(By.NAME, "username").send_keys(account["username"])
    d.find_element(By.NAME, "password").send_keys(account["password"])
    d.find_element(By.ID, "login-submit").click()


def rows(d):
    return d.find_elements(By.CSS_SELECTOR, "#worklist .case-row")


def specialist_reviews(d, s, log):
    login_hub(d, s, s["specialist"])
    wait_for("the worklist", 20, lambda: d.find_elements(By.ID, "worklist"))
    # Every expected exam is listed, the most severe flagged one first.
    want = s["expected_first_exam"]
    def listed():
        d.refresh()
        ids = [r.get_attribute("data-exam") for r in rows(d)]
        return ids if all(e in ids for e in s["expected_exams"]) else None
    ids = wait_for("every flagged exam on the worklist", 60, listed, every=1)
    if ids[0] != want:
        raise Failed(f"worklist order: first is {ids[0]}, expected the most severe {want}; all: {ids}")
    log("worklist: most severe flagged exam first")

    rows(d)[0].find_element(By.CSS_SELECTOR, "a.open-case").click()
    wait_for("the case page", 20, lambda: d.find_elements(By.ID, "verdict-form"))
    if want not in d.current_url:
        raise Failed(f"opened {d.current_url}, not exam {want}")
    case_url = d.current_url

    # The clip plays at its own frame rate: the video element's time advances.
    def clip():
        v = d.find_elements(By.ID, "clip")
        if not v:
            d.refresh()
        return v[0] if v else None
    video = wait_for("the clip on the case page", 90, clip, every=2)
    t = d.execute_script(
        "const v = arguments[0]; v.muted = true; return v.play().then(() => true, e => String(e));",
        video,
    )
    if t is not True:
        raise Failed(f"the clip does not play: {t}")
    wait_for("the video to advance", 20, lambda: d.execute_script("return arguments[0].currentTime", video) > 0.3)
    err = d.execute_script("return arguments[0].error && arguments[0].error.message", video)
    if err:
        raise Failed(f"video error: {err}")
    log("clip plays")

    # The activation map is an overlay the specialist can toggle.
    overlay = d.find_elements(By.CSS_SELECTOR, ".overlay")
    if not overlay:
        raise Failed("no activation-map overlay on the key frames")
    shown = lambda: overlay[0].is_displayed()
    before = shown()
    d.find_element(By.ID, "overlay-toggle").click()
    wait_for("the overlay to toggle", 5, lambda: shown() != before)
    d.find_element(By.ID, "overlay-toggle").click()
    wait_for("the overlay to toggle back", 5, lambda: shown() == before)
    log("overlay toggles")

    # Claimed first, so that no other specialist reads it at the same time.
    d.find_element(By.ID, "claim-button").click()
    wait_for("the claim", 10, lambda: "Claimed by you" in d.find_element(By.ID, "claim-status").text)
    form = d.find_element(By.ID, "verdict-form")
    form.find_element(By.CSS_SELECTOR, f"input[name=impression][value={s['verdict']['impression']}]").click()
    form.find_element(By.CSS_SELECTOR, f"input[name=recommendation][value={s['verdict']['recommendation']}]").click()
    form.find_element(By.NAME, "comment").send_keys(s["verdict"]["comment"])
    d.find_element(By.ID, "submit-verdict").click()
    wait_for("the verdict to be recorded", 20, lambda: d.find_elements(By.ID, "verdict-saved"))
    log("verdict submitted")
    return case_url


def media_urls(d):
    urls = []
    for el in d.find_elements(By.CSS_SELECTOR, "img, video, source"):
        src = el.get_attribute("src")
        if src and "/media/" in src:
            urls.append(src)
    return urls


def clinic_sees_verdict(d, s, log):
    d.get(s["clinic_url"] + "/login")
    d.find_element(By.ID, "pin").send_keys(s["clinic_pin"])
    d.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
    wait_for("the clinic's scan list", 20, lambda: d.find_elements(By.ID, "scans"))
    def verdict():
        d.refresh()
        v = d.find_elements(By.CSS_SELECTOR, ".verdict .verdict-impression")
        return v[0].text if v else None
    text = wait_for("the specialist's verdict on the clinic page", 90, verdict, every=1)
    if s["verdict"]["impression_text"].lower() not in text.lower():
        raise Failed(f"clinic page shows impression {text!r}")
    log(f"clinic page shows the verdict: {text}")


def clinic_records_vitals(d, s, log):
    """Staff record a patient's vitals with the clinic page's form (still logged in from
    clinic_sees_verdict); the patient's summary then weighs them."""
    sections = wait_for("a patient with a vitals link", 20, lambda: [
        sec for sec in d.find_elements(By.CSS_SELECTOR, "section.patient")
        if sec.find_elements(By.CSS_SELECTOR, ".vitals-link")])
    patient = sections[0].find_element(By.CSS_SELECTOR, ".patient-id").text
    if sections[0].find_elements(By.CSS_SELECTOR, ".vitals-used"):
        raise Failed(f"patient {patient}'s summary weighs vitals before any were recorded")
    sections[0].find_element(By.CSS_SELECTOR, ".vitals-link").click()
    wait_for("the vitals form", 20, lambda: d.find_elements(By.ID, "vitals-form"))
    spo2 = d.find_element(By.ID, "spo2")
    spo2.clear()
    spo2.send_keys(str(s["vitals_spo2"]))
    d.find_element(By.ID, "vitals-save").click()
    wait_for("the scans page after saving vitals", 20, lambda: d.find_elements(By.ID, "scans"))
    if d.find_elements(By.ID, "vitals-error"):
        raise Failed("the vitals form refused SpO2 " + str(s["vitals_spo2"]))

    def used():
        for sec in d.find_elements(By.CSS_SELECTOR, "section.patient"):
            if sec.find_element(By.CSS_SELECTOR, ".patient-id").text == patient:
                return sec.find_elements(By.CSS_SELECTOR, ".patient-summary .vitals-used")
        return None
    wait_for(f"patient {patient}'s summary with the clinic's vitals", 10, used)
    log(f"clinic recorded vitals for {patient}; the summary weighs them")


def nobody_else_sees(s, case_url, media, log):
    """Another region's specialist, a ministry account and a logged-out browser: no case,
    no media, even with the exact URLs."""
    secrets = s["case_markers"]
    for who in [s["other_specialist"], s["ministry"], None]:
        d = browser(s)
        try:
            if who:
                login_hub(d, s, who)
                time.sleep(0.5)
                for r in rows(d):
                    if r.get_attribute("data-exam") in s["expected_exams"]:
                        raise Failed(f"{who['username']} sees exam {r.get_attribute('data-exam')} on the worklist")
            for url in [case_url] + media:
                d.get(url)
                body = d.page_source
                for m in secrets:
                    if m in body:
                        raise Failed(f"{who['username'] if who else 'logged out'}: {url} shows {m!r}")
                kind = d.execute_script("return document.contentType")
                if kind and (kind.startswith("image/") or kind.startswith("video/")):
                    raise Failed(f"{who['username'] if who else 'logged out'} got media from {url} ({kind})")
            log(f"{who['username'] if who else 'a logged-out browser'}: nothing")
        except Exception:
            shoot(d, s, "outsider")
            raise
        finally:
            d.quit()


def ministry_dashboard(s, log):
    """The ministry account lands on its dashboard: the curve, the completeness table with
    the test's clinic, small counts shown as suppressed (the scenario has three scans:
    every count is small) and no small number anywhere, on the page or in the CSV. A
    specialist and a logged-out browser do not get the dashboard."""
    d = browser(s)
    try:
        login_hub(d, s, s["ministry"])
        wait_for("the ministry dashboard after login", 20, lambda: d.find_elements(By.ID, "epicurve"))
        if "/ministry" not in d.current_url:
            raise Failed(f"the ministry landed on {d.current_url}")
        for sel in ["#curve-examinations-regions", "#curve-flagged-regions", "#review-share",
                    "#severity-regions", "#completeness", "#devices", "#suppression-note"]:
            if not d.find_elements(By.CSS_SELECTOR, sel):
                raise Failed(f"the dashboard lacks {sel}")
        clinic = d.find_elements(By.CSS_SELECTOR, f"#completeness tr.clinic-row[data-clinic='{s['clinic_id']}']")
        if not clinic:
            raise Failed(f"the completeness table does not list {s['clinic_id']}")
        reported = clinic[0].find_element(By.CSS_SELECTOR, "td.reported").text
        if reported != "yes":
            raise Failed(f"{s['clinic_id']} reported this week: {reported!r}")
        if not d.find_elements(By.CSS_SELECTOR, "#curve-examinations-regions td.suppressed"):
            raise Failed("three scans are not shown as suppressed")
        if not d.find_elements(By.CSS_SELECTOR, "#epicurve .suppressed-point"):
            raise Failed("the curve does not mark its suppressed weeks")
        for td in d.find_elements(By.CSS_SELECTOR, "table td.n"):
            t = td.text.strip()
            if t.isdigit() and 0 < int(t) < 5:
                raise Failed(f"a small count {t} is shown in {td.find_element(By.XPATH, './ancestor::table').get_attribute('id')}")
        csv = d.execute_async_script(
            "const done = arguments[0];"
            "fetch('/ministry/export.csv').then(r => r.text()).then(done, e => done('ERR ' + e));")
        if not csv.startswith("table,row,column,value"):
            raise Failed(f"the CSV export: {csv[:200]!r}")
        for line in csv.splitlines()[1:]:
            v = line.rsplit(",", 1)[-1]
            if v.isdigit() and 0 < int(v) < 5:
                raise Failed(f"the CSV shows a small count: {line!r}")
        if ",suppressed" not in csv:
            raise Failed("the CSV marks nothing suppressed")
        log("ministry: dashboard with curve, completeness, suppressed cells; CSV suppressed too")
    except Exception:
        shoot(d, s, "ministry")
        raise
    finally:
        d.quit()
    for who in [s["specialist"], None]:
        d = browser(s)
        try:
            if who:
                login_hub(d, s, who)
                wait_for("the worklist", 20, lambda: d.find_elements(By.ID, "worklist"))
            d.get(s["hub_url"] + "/ministry")
            if d.find_elements(By.ID, "epicurve") or "curve-examinations-regions" in d.page_source:
                raise Failed(f"{who['username'] if who else 'a logged-out browser'} sees the dashboard")
            if who is None and "/login" not in d.current_url:
                raise Failed(f"a logged-out browser is at {d.current_url}, not the login page")
            log(f"{who['username'] if who else 'a logged-out browser'}: no dashboard")
        except Exception:
            shoot(d, s, "not-ministry")
            raise
        finally:
            d.quit()


def shoot(d, s, name):
    try:
        d.save_screenshot(f"{s['artifacts']}/{name}.png")
        with open(f"{s['artifacts']}/{name}.html", "w") as f:
            f.write(d.page_source)
    except Exception:
        pass


def main():
    s = json.load(open(sys.argv[1]))
    log = lambda m: print(f"[browser] {m}", flush=True)
    d = browser(s)
    step = "specialist"
    try:
        case_url = specialist_reviews(d, s, log)
        media = media_urls(d)
        if not media:
            raise Failed("the case page links no media")
        step = "clinic"
        clinic_sees_verdict(d, s, log)
        step = "vitals"
        clinic_records_vitals(d, s, log)
        step = "outsiders"
        nobody_else_sees(s, case_url, media, log)
        step = "ministry"
        ministry_dashboard(s, log)
    except Exception as e:
        shoot(d, s, step)
        print(f"[browser] FAILED at {step}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        d.quit()
    log("review loop passed")


if __name__ == "__main__":
    main()
