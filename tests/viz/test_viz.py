"""Views: role labels, circuitsvis views that render offline, the HTML report (in headless Chromium), figures."""

import base64
import html
import io
import json
import os
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from beartype import beartype
from circuitsvis.utils import render as cv_render
from jaxtyping import jaxtyped
from PIL import Image

from icr_interp import ICRecallTask, KnowledgeBase, build_model, viz
from icr_interp.task.prompts import Layout
from _browser import REMOTE, offline_chromium, open_offline


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def task():
    return ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=2)


@pytest.fixture(scope="module")
def model(task):
    return build_model(task, n_heads=2)


@pytest.fixture(scope="module")
def batch(task):
    return task.sample(8, seed=0)


@pytest.fixture(scope="module")
def patterns(model, batch):
    _, cache = model.run_with_cache(batch.tokens)
    return cache["blocks.0.attn.hook_pattern"]  # [batch head query key]


def reordered(batch, i: int):
    """``batch`` with example ``i``'s two context pairs physically swapped, layout following them."""
    tokens, lay = batch.tokens.clone(), batch.layout
    s, a = lay.subject_end.clone(), lay.answer_end.clone()
    p0, p1 = [s[i, 0].item(), a[i, 0].item()], [s[i, 1].item(), a[i, 1].item()]
    tokens[i, p0 + p1] = batch.tokens[i, p1 + p0]
    s[i] = s[i].flip(0)
    a[i] = a[i].flip(0)
    return replace(batch, tokens=tokens, layout=Layout(s, a, lay.query_end.clone(), lay.bos_pos.clone()))


def checked(fn):
    """``fn`` with its jaxtyping annotations checked at run time."""
    return jaxtyped(typechecker=beartype)(fn)


def view_props(fragment: str, element: str) -> dict:
    """The JSON props of a ``CircuitsVis.render(..., CircuitsVis.<element>, {...})`` call."""
    m = re.search(r"CircuitsVis\." + element + r",\s*(\{.*\})\s*\)", fragment, re.DOTALL)
    assert m, f"no render call for {element}"
    return json.loads(m.group(1))


# ------------------------------------------------------------------ labels
def test_role_labels_name_every_role(task, batch):
    names = task.vocab.names
    for i in range(len(batch)):
        t = batch.tokens[i].tolist()
        expected = ["<bos>", f"s1:{names[t[1]]}", f"a1:{names[t[2]]}", f"s2:{names[t[3]]}", f"a2:{names[t[4]]}",
                    f"query:{names[t[5]]}"]
        assert viz.role_labels(task, batch, i) == expected
        assert viz.role_labels(task.vocab, batch, i) == expected
    assert viz.role_labels(None, batch, 0)[1] == f"s1:{batch.tokens[0, 1].item()}"


def test_role_labels_follow_each_examples_layout(task, batch):
    swapped = reordered(batch, 1)
    assert viz.role_labels(task, swapped, 0) == viz.role_labels(task, batch, 0)
    labels = viz.role_labels(task, swapped, 1)
    original = viz.role_labels(task, batch, 1)
    # Pair 1 now sits at positions 3-4 and is still called s1/a1.
    assert labels[3:5] == original[1:3] and labels[1:3] == original[3:5]
    assert viz.slot_labels(batch) == ["<bos>", "s1", "a1", "s2", "a2", "query"]


def test_query_attention_gathers_each_examples_own_positions(model, batch, patterns):
    swapped = reordered(batch, 1)
    rows, labels = checked(viz.query_attention)(model, swapped)
    _, cache = model.run_with_cache(swapped.tokens)
    pat = cache["blocks.0.attn.hook_pattern"]
    lay = swapped.layout
    for b in range(len(swapped)):
        pos = [0, lay.subject_end[b, 0], lay.answer_end[b, 0], lay.subject_end[b, 1], lay.answer_end[b, 1],
               lay.query_end[b]]
        expected = pat[b, :, lay.query_end[b], torch.tensor(pos)]
        torch.testing.assert_close(rows[b], expected)
    assert labels == viz.slot_labels(batch)
    torch.testing.assert_close(rows.sum(-1), torch.ones(len(batch), model.cfg.n_heads))  # no other positions


# --------------------------------------------------------------- circuitsvis
def test_attention_view_shows_the_models_pattern_with_role_labels(task, model, batch, patterns):
    view = viz.attention_view(model, batch, example=3, vocab=task)
    assert isinstance(view, cv_render.RenderedHTML)
    props = view_props(viz.offline.fragment(view), "AttentionHeads")
    assert props["tokens"] == viz.role_labels(task, batch, 3)
    np.testing.assert_allclose(props["attention"], patterns[3].numpy(), rtol=1e-6)
    assert props["attentionHeadNames"] == ["L0H0", "L0H1"]


def test_other_view_kinds_escape_tokens_they_insert_as_html(task, model, batch, patterns):
    labels = viz.role_labels(task, batch, 0)
    props = view_props(viz.offline.fragment(viz.attention_view(model, batch, vocab=task, kind="patterns")),
                       "AttentionPatterns")
    assert props["tokens"][0] == "&lt;bos&gt;" and props["tokens"][1:] == labels[1:]
    np.testing.assert_allclose(props["attention"], patterns[0].numpy(), rtol=1e-6)
    props = view_props(viz.offline.fragment(viz.attention_view(model, batch, vocab=task, kind="query")), "ColoredTokensMulti")
    np.testing.assert_allclose(props["values"], patterns[0, :, -1, :].T.numpy(), rtol=1e-6)
    assert props["labels"] == ["L0H0", "L0H1"]


def test_attention_view_rejects_bad_arguments(model, batch):
    with pytest.raises(ValueError, match="kind"):
        viz.attention_view(model, batch, kind="bogus")
    with pytest.raises(ValueError, match="layer"):
        viz.attention_view(model, batch, layer=1)
    with pytest.raises(IndexError):
        viz.attention_view(model, batch, example=len(batch))


def test_views_render_in_notebooks_without_the_network(monkeypatch, model, batch):
    def no_network():
        raise AssertionError("rendering must not check the network")

    monkeypatch.setattr(cv_render, "internet_on", no_network)
    view = viz.attention_view(model, batch)
    for src in (view._repr_html_(), str(view), view.__html__()):
        assert "unpkg" not in src and "https://" not in src.split("CircuitsVis.render")[-1]
        assert "var CircuitsVis=" in src  # the bundle, inlined


# ------------------------------------------------------------ offline html
def test_offline_html_inlines_the_bundle_once_and_loads_nothing(model, batch):
    views = [viz.attention_view(model, batch), viz.attention_view(model, batch, example=1, kind="query")]
    page = viz.offline_html(views, title="two views")
    assert not REMOTE.search(page)
    assert "unpkg.com" not in page and "sourceMappingURL" not in page
    bundle = viz.offline.script_safe(viz.offline.bundle())
    assert len(bundle) > 100_000 and page.count(bundle) == 1
    assert page.count("var CircuitsVis=") == 1
    outside = page.replace(bundle, "")
    assert outside.count("<script") == outside.count("</script>") == 3  # bundle + one render call per view
    assert page.count("CircuitsVis.render(") == 2
    assert not re.search(r'<div id="circuits-vis-[^>]*/>', page)  # containers are closed properly


def test_offline_html_converts_circuitsvis_objects_and_cdn_strings(model, batch, patterns):
    import circuitsvis.attention

    plain = circuitsvis.attention.attention_heads(attention=patterns[0], tokens=[str(i) for i in range(6)])
    for view in (plain, str(plain)):  # circuitsvis's own object; its CDN string
        page = viz.offline_html(view)
        assert not REMOTE.search(page) and "unpkg" not in page
        assert view_props(page, "AttentionHeads")["tokens"] == [str(i) for i in range(6)]


def test_script_safe_keeps_the_script_element_closed():
    js = 'a="</script><script>alert(1)</script>";b="<!--"'
    safe = viz.offline.script_safe(js + "\n//# sourceMappingURL=x.js.map\n")
    assert "</script" not in safe.lower() and "<!--" not in safe and "sourceMappingURL" not in safe


# ------------------------------------------------------------------ report
def png_images(page: str) -> list[Image.Image]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        images.append(Image.open(io.BytesIO(base64.b64decode(data))))
        images[-1].load()
    return images


@pytest.fixture(scope="module")
def scores(model, batch):
    templates = pytest.importorskip("icr_interp.analysis.scoring.templates")
    return templates.score_templates(model, batch).to_dict()


PATCHING = {
    "relation": {"values": [[0.5, -1.0, 0.0], [0.25, 0.0, -0.5]], "row_labels": ["resid_pre", "attn_out"],
                 "col_labels": ["s1", "a1", "query"], "metric": "logit_diff"},
    "head": [0.1, -0.2],
}


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, task, model, batch):
    path = tmp_path_factory.mktemp("report") / "report.html"
    scores = {"balance": 0.8125, "best": "pairwise", "per_head": [{"layer": 0, "head": 1, "pairwise": 0.625}]}
    return viz.save_report(path, model, batch, vocab=task, scores=scores, patching=PATCHING, title="tiny report")


def test_report_is_self_contained(report_path, task, batch):
    page = report_path.read_text(encoding="utf-8")
    assert not REMOTE.search(page) and "unpkg" not in page
    assert page.count("var CircuitsVis=") == 1
    assert "tiny report" in page and "0.8125" in page and "pairwise" in page and "logit_diff" in page
    # two query-row figures per head, one heatmap per patching array
    images = png_images(page)
    assert len(images) == 2 * 2 + 2 and all(im.size[0] > 100 for im in images)
    assert "resid_pre" not in re.sub(r"<img[^>]*>", "", page)  # tick labels went into the figure, not a table
    assert [p for p in os.listdir(report_path.parent) if p != report_path.name] == []  # no temp file left


def test_report_mean_row_table_matches_query_attention(report_path, model, batch):
    rows, labels = viz.query_attention(model, batch)
    page = report_path.read_text(encoding="utf-8")
    header = "".join(f"<th>{html.escape(s)}</th>" for s in labels)
    assert header in page
    for h, row in enumerate(rows.mean(0).tolist()):
        assert f"<th>L0H{h}</th>" + "".join(f"<td>{x:.3f}</td>" for x in row) in page


def test_report_writes_atomically_and_refuses_directories(tmp_path, monkeypatch, model, batch):
    with pytest.raises(IsADirectoryError):
        viz.save_report(tmp_path, model, batch)
    target = tmp_path / "r.html"
    target.write_text("old")
    assert viz.save_report(target, model, batch) == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    old = target.read_text(encoding="utf-8")
    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(OSError, match="disk full"):
        viz.save_report(target, model, batch, title="new")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == old and sorted(os.listdir(tmp_path)) == ["r.html"]


def test_report_renders_template_scores_as_a_table(tmp_path, task, model, batch, scores):
    path = viz.save_report(tmp_path / "s.html", model, batch, vocab=task, scores=scores)
    page = path.read_text(encoding="utf-8")
    assert "Template scores" in page and "per_head" not in page  # a table, not a dump of the dict
    table = re.search(r'<table class="scores">.*?</table>', page, re.DOTALL).group(0)
    assert f"scored on {len(batch)} prompts" in table
    rows = re.findall(r"<tr[^>]*>((?:<td>[^<]*</td>)+)</tr>", table)
    assert len(rows) == 2  # one per head
    for h, row in zip(scores["per_head"], rows):
        cells = re.findall(r"<td>([^<]*)</td>", row)
        marked = (h["layer"], h["head"]) == (scores["layer"], scores["head"])
        assert cells[:2] == [f"{h['layer']}{'*' if marked else ''}", str(h["head"])]
        p = h["p_value"]
        assert cells[2:8] == [f"{h['pairwise']:.3f}", f"{h['pairwise_null']:.3f}",
                              f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}", f"{h['balance']:.3f}",
                              f"{h['pair_mass']:.3f}", h["best"]]  # each score beside its null and p-value
        assert cells[8:8 + len(scores["templates"])] == [f"{h['tv'][t]:.3f}" for t in scores["templates"]]
        mean = h["mean_row"]
        assert cells[-5:] == [f"{mean['pairwise']:.3f}", f"{mean['pairwise_null']:.3f}", f"{mean['balance']:.3f}",
                              f"{mean['pair_mass']:.3f}", mean["best"]]


def test_full_report_computes_scores_and_patching(tmp_path, task, model, batch):
    templates = pytest.importorskip("icr_interp.analysis.scoring.templates")
    patching = pytest.importorskip("icr_interp.analysis.causal.patching")
    path = viz.full_report(tmp_path / "full.html", model, task, batch, seed=1)
    page = path.read_text(encoding="utf-8")
    corrupted = task.corrupt(batch, "relation", seed=1)
    by_role = patching.patch_by_role(model, batch, corrupted).to_dict()
    panels, _ = viz.patching_panels(by_role)
    assert [(t, r, c) for t, _, r, c in panels] == [("values", by_role["components"], by_role["roles"])]
    # 2 heads x 2 query-row figures, one heatmap per (corruption, patching kind)
    assert len(png_images(page)) == 4 + 2 * 2
    assert "relation swap: hook x role" in page and "query swap: query-row pattern x source role" in page
    assert f"<td>{templates.score_templates(model, batch).to_dict()['pair_mass']:.3f}</td>" in page
    assert not REMOTE.search(page)


def test_patching_panels_find_every_array_and_its_labels():
    panels, rest = viz.patching_panels({"a": torch.ones(2, 3), "b": {"values": np.zeros((1, 2)), "cols": ["x", "y"],
                                        "note": "n"}, "scalar": 1.5, "vec": [1.0, 2.0]})
    assert [(t, m.shape, r, c) for t, m, r, c in panels] == [("a", (2, 3), None, None),
                                                          ("b/values", (1, 2), None, ["x", "y"]),
                                                          ("vec", (1, 2), None, None)]
    assert rest == {"b": {"note": "n"}, "scalar": 1.5}


# --------------------------------------------------------- headless chromium
@pytest.fixture(scope="module")
def browser():
    yield from offline_chromium()


def test_report_renders_offline_in_headless_chromium(browser, report_path, task, batch, tmp_path):
    from selenium.webdriver.common.by import By

    open_offline(browser, report_path)
    view = browser.find_element(By.ID, "view-0")  # prompt 0 coloured by its prediction row, one colouring per head
    text = browser.execute_script("return document.body.innerText")
    for label in viz.role_labels(task, batch, 0):  # the token view shows them as DOM text
        assert label in view.text
    assert "L0H0" in view.text and "L0H1" in view.text and "tiny report" in text
    rows = browser.find_elements(By.CSS_SELECTOR, "table.rows")
    assert len(rows) == 2 and all("mean" in r.text for r in rows)  # one prediction-rows table per head

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1100, height + 50)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    page_img = Image.open(shot).convert("RGB")
    assert page_img.size[1] > 1000 and len(page_img.getcolors(1 << 24)) > 50
    view_shot = tmp_path / "view.png"
    view.screenshot(str(view_shot))
    view_img = Image.open(view_shot).convert("RGB")
    assert len(view_img.getcolors(1 << 24)) > 20  # the heatmap canvases were drawn
    if os.environ.get("ICR_VIZ_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["ICR_VIZ_SCREENSHOT"])


# ------------------------------------------------------------------ figures
def test_plot_query_attention_heatmap_and_mean_bars(model, batch):
    rows, labels = viz.query_attention(model, batch)
    fig = checked(viz.plot_query_attention)(rows[:, 0], labels)
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1  # heatmap + colour bar
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), rows[:, 0].numpy())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == labels

    mean = rows[:, 0].mean(0)
    fig = checked(viz.plot_query_attention)(mean.numpy(), labels)
    assert len(fig.axes) == 1 and not fig.axes[0].images
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], mean.numpy())
    colors = [b.get_facecolor() for b in bars]
    assert colors[1] == colors[3] != colors[2] == colors[4]  # subjects vs answers
    assert viz.figure_png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="slots"):
        viz.plot_query_attention(mean, labels[:-1])


def test_plot_patching_is_a_diverging_heatmap_centred_at_zero():
    matrix = torch.tensor([[0.5, -2.0, 0.0], [1.0, 0.25, -0.5]])
    fig = checked(viz.plot_patching)(matrix, ["r0", "r1"], ["c0", "c1", "c2"], "effect")
    ax = fig.axes[0]
    assert len(fig.axes) == 2 and len(ax.images) == 1 and ax.get_title() == "effect"
    im = ax.images[0]
    np.testing.assert_array_equal(im.get_array(), matrix.numpy())
    assert im.get_cmap().name == "RdBu_r"
    assert im.norm.vcenter == 0 and im.norm.vmin == -2.0 and im.norm.vmax == 2.0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r0", "r1"]
    assert [t.get_text() for t in ax.texts] == ["0.50", "-2.00", "0.00", "1.00", "0.25", "-0.50"]
    with pytest.raises(ValueError, match="col_labels"):
        viz.plot_patching(matrix, None, ["c0"])


def test_plot_training_curves_one_panel_per_series():
    from icr_interp.training.trainer import History

    hist = History(step=[0, 1, 2, 3], loss=[2.0, 1.5, 1.0, 0.5], accuracy=[0.1, 0.4, 0.7, 1.0])
    fig = viz.plot_training_curves(hist)
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    for ax, key in zip(fig.axes, ["loss", "accuracy"]):
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_xdata(), hist.step)
        np.testing.assert_array_equal(line.get_ydata(), getattr(hist, key))
    fig = viz.plot_training_curves({"step": [0, 5], "balance": [0.5, 0.9], "tag": "x"}, keys=["balance"])
    assert len(fig.axes) == 1 and list(fig.axes[0].get_lines()[0].get_xdata()) == [0, 5]
    with pytest.raises(KeyError, match="nope"):
        viz.plot_training_curves(hist, keys=["nope"])


def test_figures_do_not_touch_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz.plot_patching(np.eye(2))
    assert plt.get_fignums() == before


# ------------------------------------------------- colour scale, default layer, package layout
def test_heads_view_is_scaled_to_the_query_row(task, model, batch, patterns):
    """BOS's self-attention (1.0) no longer sets the scale: colours reach full strength at the query row's max."""
    q = int(batch.layout.query_end[2])
    props = view_props(viz.offline.fragment(viz.attention_view(model, batch, example=2, vocab=task)), "AttentionHeads")
    top = float(patterns[2, :, q].max())
    assert props["maxValue"] == pytest.approx(top) and top < 0.9  # the BOS row's 1.0 would wash the row out
    np.testing.assert_allclose(props["attention"], patterns[2].numpy(), rtol=1e-6)  # nothing hidden by default
    full = view_props(viz.offline.fragment(viz.attention_view(model, batch, example=2, scale="full")), "AttentionHeads")
    assert full.get("maxValue") is None  # circuitsvis's own 0..1
    only = view_props(viz.offline.fragment(viz.attention_view(model, batch, example=2, rows="query")), "AttentionHeads")
    attention = np.asarray(only["attention"])
    np.testing.assert_allclose(attention[:, q], patterns[2, :, q].numpy(), rtol=1e-6)
    assert np.count_nonzero(np.delete(attention, q, axis=1)) == 0  # every other destination row blanked
    with pytest.raises(ValueError, match="scale"):
        viz.attention_view(model, batch, scale="bogus")


def test_the_default_layer_is_the_last(task, batch):
    deep = build_model(task, n_layers=2, n_heads=2)
    _, cache = deep.run_with_cache(batch.tokens)
    rows, _ = viz.query_attention(deep, batch)
    last, _ = viz.query_attention(deep, batch, layer=1)
    first, _ = viz.query_attention(deep, batch, layer=0)
    torch.testing.assert_close(rows, last)
    assert not torch.allclose(rows, first)
    q = batch.layout.query_end
    torch.testing.assert_close(rows[:, :, -1], cache["blocks.1.attn.hook_pattern"][torch.arange(len(batch)), :, q, q])
    props = view_props(viz.offline.fragment(viz.attention_view(deep, batch)), "AttentionHeads")
    assert props["attentionHeadNames"] == ["L1H0", "L1H1"]
    np.testing.assert_allclose(props["attention"], cache["blocks.1.attn.hook_pattern"][0].numpy(), atol=1e-6)


def test_slot_roles_use_the_roles_vocabulary(batch):
    from icr_interp.task import roles

    names = viz.slot_roles(batch)
    assert names == ["bos", "subject_1", "answer_1", "subject_2", "answer_2", "query"]
    assert [roles.canonical(n) for n in names] == names
    assert [viz.short_label(n) for n in names] == viz.slot_labels(batch)


def test_report_module_renders_only(tmp_path):
    """The report module imports no analysis and builds a page from numbers it is given."""
    import ast
    import inspect

    from icr_interp.viz import report

    tree = ast.parse(inspect.getsource(report))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"icr_interp.analysis.scoring.templates", "icr_interp.analysis.causal.patching", "icr_interp.training.trainer", "icr_interp.analysis.causal.circuit",
                           "icr_interp.analysis.scoring.attention"}
    evaluation = {"accuracy": 0.96875, "loss": 0.125, "n_prompts": 64}
    path = report.write_report(tmp_path / "r.html", "given numbers", [report.accuracy_section(evaluation, seed=3)])
    page = path.read_text(encoding="utf-8")
    assert '<b id="accuracy">0.9688</b> (95% interval 0.893-0.991) on 64 fresh held-out prompts (evaluate seed 3)' \
        in page


def test_every_viz_module_is_small():
    from pathlib import Path

    for file in Path(viz.__file__).parent.glob("*.py"):
        assert len(file.read_text().splitlines()) < 400, file.name
