"""Names from a knowledge base reach reports as text: nothing a subject is called can run (issue 20, item 7).

The knowledge base below names its subjects ``</script><script>...</script>`` and ``<img src=x onerror=...>``.
Every output context has its escape (``icr_interp.viz.escape``); the pages are checked as strings, and opened
in headless Chromium (network blocked) to prove that no script runs and the names show as text.
"""

import csv
import json

import pytest

from icr_interp import ICRecallTask, KnowledgeBase, build_model, viz
from icr_interp.viz import escape
from _browser import offline_chromium, open_offline

SCRIPT = "</script><script>document.title='pwned'</script>"
IMG = "<img src=x onerror=\"document.title='pwned by img'\">"
ATTR = "\"><svg onload=document.title='pwned by svg'>"
EVIL = (SCRIPT, IMG, ATTR)


def test_each_escape_handles_its_context():
    assert escape.text(SCRIPT) == "&lt;/script&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;"
    assert '"' not in escape.attr(ATTR) and "<" not in escape.attr(ATTR)
    js = escape.script_json({"tokens": [SCRIPT, "a\u2028b\u2029c", "<!--", "&amp;"]})
    assert not any(c in js for c in "<>&\u2028\u2029") and json.loads(js)["tokens"][0] == SCRIPT


@pytest.fixture(scope="module")
def evil_task(tmp_path_factory):
    rows = [(s, f"r{r}", f"ans{(i + r) % 4}") for i, s in enumerate([*EVIL, "plain", "other", "third"])
            for r in range(2)]
    path = tmp_path_factory.mktemp("kb") / "evil.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("subject", "relation", "answer"), *rows])
    return ICRecallTask(KnowledgeBase.from_csv(path), n_pairs=2)


@pytest.fixture(scope="module")
def pages(evil_task, tmp_path_factory):
    """The report and each view kind, on prompts whose every token is an evil name where possible."""
    task = evil_task
    model = build_model(task, n_heads=1)
    batch = task.sample(6, seed=0)
    out = tmp_path_factory.mktemp("pages")
    report = viz.save_report(out / "report.html", model, batch, vocab=task, title=f"report {SCRIPT}")
    views = [viz.attention_view(model, batch, example=i, vocab=task, kind=kind)
             for i in range(3) for kind in viz.VIEW_KINDS]
    (out / "views.html").write_text(viz.offline_html(views, title=IMG), encoding="utf-8")
    return task, batch, {"report": report, "views": out / "views.html"}


def test_names_reach_the_pages_only_escaped(pages):
    task, batch, paths = pages
    shown = {label for i in range(3) for label in viz.role_labels(task, batch, i)}
    assert any(name in label for name in EVIL for label in shown)  # the evil names are in the prompts shown
    for path in paths.values():
        page = path.read_text(encoding="utf-8")
        assert page.count("<script") == page.lower().count("<script")
        # The only script tags are ours: the bundle once and one render call per view; no raw names anywhere.
        for name in EVIL:
            assert name not in page
        assert "<img src=x" not in page and "<svg onload" not in page


@pytest.fixture(scope="module")
def browser():
    yield from offline_chromium()


@pytest.mark.parametrize("which", ["report", "views"])
def test_no_script_runs_and_the_names_show_as_text(browser, pages, which):
    task, batch, paths = pages
    open_offline(browser, paths[which])  # every view rendered; nothing fetched; no severe console error
    # A script that ran would have set the title to "pwned..."; it is still the (escaped, shown) page title.
    assert browser.execute_script("return document.title") == {"report": f"report {SCRIPT}", "views": IMG}[which]
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], svg[onload]').length") == 0
    text = browser.execute_script("return document.body.innerText")
    assert {"report": f"report {SCRIPT}", "views": IMG}[which] in text  # the heading, as text
    # The names are on the page as text, where the view draws them as DOM text.
    dom_text = browser.execute_script("return document.documentElement.textContent")
    assert any(name in dom_text for name in EVIL)
