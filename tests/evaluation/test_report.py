"""The report renderers: markdown tables, escaped HTML, embedded figures."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd

from tasks.evaluation import report


def test_markdown_renders_headings_tables_and_figure_links_and_escapes_pipes():
    blocks = [("h1", "Title"), ("p", "text"), ("table", pd.DataFrame({"a": ["x|y"], "b": [0.123456]})),
              ("img", ("c.png", b"png", "a caption"))]
    md = report.render_markdown(blocks)
    assert md.startswith("# Title\n\ntext\n\n| a | b |\n|---|---|\n| x\\|y |")
    assert "![a caption](figures/c.png)" in md


def test_html_escapes_user_text_and_embeds_figures():
    png = report.confusion_png(np.array([0, 1, 1]), np.array([0, 1, 0]), ["<b>small</b>", "big"], "t")
    assert png.startswith(b"\x89PNG")
    page = report.render_html([("p", "<script>x</script>"), ("img", ("c.png", png, "<i>cap</i>"))], "r & d")
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page and "<title>r &amp; d</title>" in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page and "figures/" not in page
