#!/usr/bin/python3
"""bench/chart.py: draws the table of a bench/side-by-side (or services-side-by-side) result
as an SVG chart, one bar group per workload (a panel each, in the workload's own unit), one
bar per setup, podswitch's bars in one colour and the kernel's and others' in greys.

Usage: bench/chart.py RESULT.md [OUT.svg]   (default OUT: RESULT with .svg)

It reads the first Markdown table of RESULT.md: the first column names the workload (its
unit in brackets), the other columns are setups. Columns whose header holds a "/" (ratios)
and cells that are not numbers ("n/a", "-", "blocked: ...") are left out; a cell such as
"**16535** (17187 / 12761)" counts as its bold median; "268 k" as 268000. Needs matplotlib
(Debian's python3-matplotlib, for /usr/bin/python3; bench/side-by-side installs it).
"""

import re
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable

PODSWITCH = "#1f6fb4"
OTHERS = ["#9a9a9a", "#c4c4c4", "#6d6d6d", "#dedede", "#505050"]


def number(cell):
    """The value of a table cell, or None."""
    cell = cell.strip()
    bold = re.match(r"\*\*([^*]+)\*\*", cell)
    if bold:
        cell = bold.group(1)
    m = re.fullmatch(r"(-?[0-9]+(?:\.[0-9]+)?)\s*([kM]?)", cell)
    if not m:
        return None
    scale = {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]
    return float(m.group(1)) * scale


def first_table(lines):
    """Header cells and body rows (lists of cells) of the first Markdown table."""
    rows = []
    for line in lines:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    if len(rows) < 3:
        raise SystemExit("chart: no Markdown table in the input")
    return rows[0], [r for r in rows[2:] if len(r) == len(rows[0])]


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.split("\n\n")[1])
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else re.sub(r"\.md$", "", src) + ".svg"
    with open(src, encoding="utf-8") as f:
        lines = f.read().splitlines()
    title = next((l.lstrip("# ").strip() for l in lines if l.startswith("# ")), src)
    header, body = first_table(lines)
    setups = [(i, h.split(" (")[0]) for i, h in enumerate(header) if i > 0 and "/" not in h]
    panels = []
    for row in body:
        values = [(name, number(row[i])) for i, name in setups]
        values = [(n, v) for n, v in values if v is not None]
        if values:
            panels.append((row[0].strip().replace("**", ""), values))
    if not panels:
        raise SystemExit("chart: no numbers in the table")

    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (label, values) in zip(axes.flat, panels):
        names = [n for n, _ in values]
        heights = [v for _, v in values]
        greys = iter(OTHERS * 2)
        colours = [PODSWITCH if n.startswith("podswitch") else next(greys) for n in names]
        bars = ax.bar(range(len(values)), heights, color=colours)
        for bar, v in zip(bars, heights):
            text = f"{v / 1e3:.0f} k" if v >= 1e4 else (f"{v:.0f}" if v >= 100 else f"{v:.2f}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(values)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9, wrap=True)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
