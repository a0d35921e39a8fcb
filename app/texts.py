"""The page's own words and style (the shell, :mod:`craftlab_app.ui`): its title, CSS and the one script."""

from __future__ import annotations

__all__ = ["CSS", "HEAD", "TITLE"]

TITLE = ("# CraftLab — compression-aware fine-tuning, live\n"
         "A plain fine-tuned model (**AdamW**, blue) and its **CrAFT** twin (same schedule + SAM, red), "
         "side by side: move a control and every panel below follows, titled with the model and setting "
         "it shows.")

CSS = """
.arm-card {border-radius: 10px; padding: 10px 14px !important;}
#card-plain {border-left: 6px solid #636EFA;}
#card-craft {border-left: 6px solid #EF553B;}
.big {font-size: 1.5em; font-weight: 700;}
.view-tag {color: #777; font-size: 0.8em; font-weight: 400; white-space: nowrap;}
#verdict {border-left: 4px solid #999; padding-left: 10px;}
.seed0 {color: #555; font-size: 0.9em;}
/* info text under the labels: Gradio's default (rgb(187,187,194) on white, 1.91:1) fails WCAG AA; #4b5563 is 7.6:1 */
:root, .gradio-container {--block-info-text-color: #4b5563 !important;}
.info-text {color: #4b5563 !important;}
.view-tag {color: #555 !important;}
#adapt-table th, #adapt-table th * {word-break: normal !important; overflow-wrap: normal !important; hyphens: none;}
"""

HEAD = r"""
<script>
// Bit-width boxes: on Enter Gradio's dropdown selects the first choice *containing* the typed text, so "6" would
// pick "16" and "1" too. Take the typed text literally instead: leaving the box maps an exact label to its choice
// and keeps anything else as a custom value, which the server refuses by name ("w_bits must be one of ...").
// After ArrowUp/ArrowDown the user picked an option from the list: then Enter is left to Gradio.
(() => {
  const navigated = new WeakSet();
  const box = (e) => e.target instanceof HTMLInputElement && e.target.closest("#w_bits, #a_bits");
  document.addEventListener("input", (e) => { if (box(e)) navigated.delete(e.target); }, true);
  document.addEventListener("keydown", (e) => {
    if (!box(e)) return;
    if (e.key === "ArrowUp" || e.key === "ArrowDown") { navigated.add(e.target); return; }
    if (e.key !== "Enter" || navigated.has(e.target) || e.target.value.trim() === "") return;
    e.preventDefault();
    e.stopImmediatePropagation();
    e.target.blur();
  }, true);
})();
// Plots have no text of their own for a screen reader: each gets role="img" and a short summary (its title,
// its legend entries — which carry the numbers, e.g. "AdamW: loss 1.29 → 1.41" — its marked points and notes).
setInterval(() => {
  const clean = (t) => String(t || "").replace(/<br>/g, " ").replace(/<[^>]+>/g, "").replace(/\s+/g, " ").trim();
  for (const el of document.querySelectorAll(".js-plotly-plot")) {
    if (!el._fullLayout || !el._fullData) continue;
    const parts = [clean(el._fullLayout.title && el._fullLayout.title.text)];
    for (const d of el._fullData) {
      if (d.showlegend !== false && d.name && !/^trace \d+$/.test(d.name)) parts.push(clean(d.name));
      if (d.marker && d.marker.symbol === "star" && d.x && d.y && d.x.length === 1)
        parts.push(`★ ${clean(d.name)} at ${(+d.x[0]).toPrecision(3)}, ${(+d.y[0]).toPrecision(3)}`);
    }
    for (const a of el._fullLayout.annotations || []) parts.push(clean(a.text));
    const label = parts.filter(Boolean).join(". ");
    if (el.getAttribute("aria-label") !== label) {
      el.setAttribute("role", "img");
      el.setAttribute("aria-label", label);
    }
  }
}, 500);
</script>
"""
