"""`idiolect report`: a static HTML page of stored evaluations, for a person to read.

Nothing is generated or scored here: the page is built from what `idiolect eval` stored, the
``eval`` metrics of each adapter (DB row and manifest) and, when ``save_result`` wrote it, the
full result (``HOME/reports/eval-<adapter id>.json``: samples, novelty detail,
generation settings). The page is self-contained (inline CSS, no script, no external URL); its
plots are PNG files beside it. Messages are personal text: everything shown is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import sqlite3
from pathlib import Path

from .. import adapters
from ..errors import IdiolectError, InputError
from ..home import Home, atomic_write_bytes, atomic_write_json, utcnow
from ..vault import store

METRICS = (("fingerprint_distance", "fingerprint distance", "lower is better"),
           ("authorship_probability", "authorship probability", "higher is better"))
NEEDED = {"adapter_scores", "base_scores", "calibration", "placement"}
ADAPTER_C, BASE_C = "#1f6feb", "#b35900"


# ------------------------------------------------------------------------------ results on disk
def save_result(home: Home, result: dict) -> Path:
    """Write an ``evaluate()`` result as ``reports/eval-<adapter id>.json`` (atomic); its path."""
    if not result.get("adapter"):
        raise InputError("an evaluation result names its adapter (key 'adapter')")
    data = json.loads(json.dumps(result, default=str))
    data.setdefault("saved_at", utcnow())
    path = home.reports_dir / f"eval-{data['adapter']}.json"
    atomic_write_json(path, data)
    return path


def load_result(home: Home, adapter_id: str) -> dict | None:
    """The saved full result of an adapter's last evaluation, or None when none was saved."""
    path = home.reports_dir / f"eval-{adapter_id}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable evaluation result ({e}): delete it or re-run"
                         f" `idiolect eval`") from None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------ what to show
def _entry(home: Home, row: sqlite3.Row) -> dict | None:
    stored = json.loads(row["metrics"] or "{}").get("eval")
    if not stored or not NEEDED <= set(stored):
        return None
    full = load_result(home, row["id"])
    if full and (full.get("eval_digest") != stored.get("eval_digest")
                 or full.get("adapter_scores") != stored.get("adapter_scores")):
        full = None  # saved by an older evaluation than the stored metrics: do not mix them
    e = dict(full or stored)
    e.update(user=row["user"], adapter=row["id"], base=row["base"],
             compiled_at=row["created_at"], full=full is not None)
    e.setdefault("chance", 1 / len(e["cohort"]) if e.get("cohort") else None)
    return e


def collect(home: Home, users: list[str] | None = None,
            base: str | None = None) -> list[dict]:
    """One entry per active adapter with stored eval metrics (of ``users``, on ``base``)."""
    conn = home.conn
    entry = lambda row: _entry(home, row)  # noqa: E731
    rows = [adapters.get(conn, a["id"]) for a in sorted(
        adapters.list_adapters(conn), key=lambda a: (a["user"], a["base"]))
        if a["state"] == "active" and (not base or a["base"] == base)]
    on, on_base = (f" --base {base}", f" on base {base!r}") if base else ("", "")
    if not users:
        if not (entries := [e for e in map(entry, rows) if e]):
            raise IdiolectError(f"no user has an evaluated active adapter{on_base}: run"
                                f" `idiolect eval USER{on}` first")
        return entries
    entries = []
    for user in dict.fromkeys(users):
        store.require_user(conn, user)
        if not (mine := [r for r in rows if r["user"] == user]):
            raise IdiolectError(f"user {user!r} has no active adapter{on_base}: run `idiolect"
                                f" compile {user}{on}`, then `idiolect eval {user}{on}`")
        found = [e for e in map(entry, mine) if e]
        if not found:
            raise IdiolectError(f"user {user!r}: active adapter {mine[0]['id']} on base"
                                f" {mine[0]['base']!r} has no stored eval metrics: run"
                                f" `idiolect eval {user} --base {mine[0]['base']}` first")
        entries += found
    return entries


# ------------------------------------------------------------------------------ plots
def _plt():
    try:
        import matplotlib
    except ImportError:
        raise IdiolectError("the report draws its plots with matplotlib: pip install"
                            " 'idiolect[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.spines.left": False})
    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    _plt().close(fig)


def plot_user(e: dict, path: Path) -> None:
    """Per metric: the band from floor (others' text) to ceiling (own text), adapter and base."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 2.5), layout="constrained")
    for ax, (m, label, better) in zip(axes, METRICS):
        c = e["calibration"][m]
        a, b, lo, hi = e["adapter_scores"][m], e["base_scores"][m], c["floor"], c["ceiling"]
        pts = [v for v in (a, b, lo, hi, c.get("floor_best")) if v is not None]
        pad = 0.08 * ((max(pts) - min(pts)) or 1)
        if m == "authorship_probability":
            ax.set_xlim(0, 1)
            if e.get("chance"):
                ax.axvline(e["chance"], color="#999", ls=":", lw=1)
                ax.text(e["chance"], 0.95, " chance", color="#777", va="top", fontsize=7,
                        transform=ax.get_xaxis_transform())
        else:
            ax.set_xlim(max(pts) + pad, min(pts) - pad)  # reversed: better is to the right
        if lo is not None and hi is not None:
            ax.axvspan(min(lo, hi), max(lo, hi), color="#e8e8e8", zorder=0)
            ax.axvline(lo, color="#888", lw=1.2)
            ax.axvline(hi, color="#2a7d3f", lw=1.2)
            for v, t in ((lo, "floor"), (hi, "ceiling")):
                ax.text(v, 1.0, t, ha="center", va="bottom", fontsize=7, color="#555",
                        transform=ax.get_xaxis_transform())
        if c.get("floor_best") is not None:
            ax.axvline(c["floor_best"], color="#888", lw=0.8, ls="--")
        ax.plot([b], [-0.4], "s", ms=8, mfc="white", mec=BASE_C, mew=2)
        ax.plot([a], [0.4], "o", ms=9, color=ADAPTER_C)
        ax.set_yticks([0.4, -0.4], ["adapter", "bare base"])
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(-1, 1)
        ax.set_xlabel(f"{label} ({better}; better →)", fontsize=8, labelpad=1)
    _save(fig, path)


def plot_cohort(entries: list[dict], path: Path) -> None:
    """Per user: placement of bare base -> adapter (0 = others' text, 1 = own text)."""
    fig, axes = _plt().subplots(1, 3, figsize=(10.5, 1.1 + 0.32 * len(entries)), sharey=True,
                                layout="constrained", width_ratios=[1, 1, 0.8])
    ys = list(range(len(entries)))[::-1]
    titles = ["fingerprint distance: placement", "authorship probability: placement",
              "perplexity: adapter vs bare base"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", color="#eee")
        ax.tick_params(axis="y", length=0)
    for ax, (m, _, _) in zip(axes, METRICS):
        ax.axvspan(0, 1, color="#f0f0f0", zorder=0)
        ax.axvline(0, color="#888", lw=1)
        ax.axvline(1, color="#2a7d3f", lw=1)
        xs = [0.0, 1.0]
        for y, e in zip(ys, entries):
            pa, pb = e["placement"]["adapter"].get(m), e["placement"]["base"].get(m)
            if pa is None or pb is None:
                continue
            xs += [pa, pb]
            ax.annotate("", (pa, y), (pb, y), arrowprops={"arrowstyle": "->", "color": "#999"})
            ax.plot([pb], [y], "s", mfc="white", mec=BASE_C, mew=1.5, ms=6, label="bare base")
            ax.plot([pa], [y], "o", color=ADAPTER_C, ms=7, label="adapter")
        pad = 0.1 * (max(xs) - min(xs))
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_xlabel("0 = other users' text, 1 = the user's own", fontsize=8)
    ax = axes[2]
    change = [100 * (_ppl_ratio(e) - 1) if _ppl_ratio(e) else 0.0 for e in entries]
    ax.barh(ys, change, color=[ADAPTER_C if c < 0 else BASE_C for c in change], height=0.5)
    ax.axvline(0, color="#555", lw=1)
    lo, hi = min(0.0, *change), max(0.0, *change)
    pad = 0.12 * max(hi - lo, 2.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_formatter("{x:+g}%")
    ax.set_xlabel("change vs bare base (< 0: adapter better)", fontsize=8)
    axes[0].set_yticks(ys, [_label(e, entries) for e in entries])
    handles = dict(zip(*axes[1].get_legend_handles_labels()[::-1]))  # label -> last handle
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=2,
               frameon=False, fontsize=8)
    _save(fig, path)


def _ppl_ratio(e: dict) -> float | None:
    a, b = e["adapter_scores"].get("perplexity"), e["base_scores"].get("perplexity")
    return a / b if a and b else None


def _label(e: dict, entries: list[dict]) -> str:
    multi = sum(x["user"] == e["user"] for x in entries) > 1
    return f"{e['user']} ({e['base']})" if multi else e["user"]


# ------------------------------------------------------------------------------ HTML
def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else _e(f"{x:.{digits}f}")


def _pct(x) -> str:
    return "–" if x is None else _e(f"{x:.0%}" if abs(x) >= 0.1 or x == 0 else f"{x:.1%}")


def _where(p: float) -> str:
    """A placement as a percentage: 0% = other users' text (floor), 100% = the user's own."""
    return _pct(p) + (" (below the floor)" if p < 0 else " (above the ceiling)" if p > 1 else "")


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;
background:#fafafa}main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}h1{font-size:26px;
margin:0 0 4px}h2{font-size:20px;margin:0 0 6px}h3{font-size:15px;margin:18px 0 6px}
.muted{color:#666;font-size:13px}.note{background:#fff8e1;border-left:3px solid #e0a800;
padding:6px 10px;font-size:13px;margin:10px 0}section{background:#fff;border:1px solid #e3e3e3;
border-radius:8px;padding:18px 22px;margin:22px 0}table{border-collapse:collapse;
font-variant-numeric:tabular-nums;font-size:14px;margin:6px 0}th,td{padding:4px 12px;
text-align:right;border-bottom:1px solid #eee}th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #ccc;font-weight:600;font-size:13px;color:#444}td.a{color:#1f6feb;
font-weight:600}td.b{color:#b35900}.facts{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px;
color:#444;margin:4px 0 10px}.facts b{color:#1d1d1f;font-weight:600}code{font-size:12px;
background:#f3f3f3;padding:1px 4px;border-radius:3px}ul.read{margin:6px 0;padding-left:20px;
font-size:14px}.good{color:#2a7d3f}.bad{color:#b3261e}img{max-width:100%;height:auto}
.sample{margin:12px 0 16px}.sample .subj{font-size:13px;color:#444;margin-bottom:4px}
.cols{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}.cols div{border:1px solid #e3e3e3;
border-radius:6px;padding:6px 9px;font-size:13px;white-space:pre-wrap;overflow-wrap:anywhere;
max-height:18em;overflow:auto;background:#fcfcfc}.cols div.real{background:#f3f9f4}
.cols h4{margin:0 0 4px;font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:#777;
white-space:normal}
"""

GUIDE = ("Every score sits beside two references from real text on the same frozen eval set: the"
         " <b>ceiling</b> (the user's own other messages) and the <b>floor</b> (other users'"
         " messages, mean over users). <b>Placement</b> is 0 at the floor, 1 at the ceiling; a"
         " personalized adapter sits near 1, above the bare base. Novelty counts generations that"
         " copy a 20-word span or more of training messages. Definitions: docs/metrics.md.")

CAPTION = ("Grey band: from the floor (other users' text, grey line) to the ceiling (the user's"
           " own text, green line); dashed: the closest other user.")


def _reading(e: dict) -> str:
    items = []
    for m, label, _ in METRICS:
        pa, pb = e["placement"]["adapter"].get(m), e["placement"]["base"].get(m)
        if pa is None or pb is None:
            items.append(f"{label}: floor and ceiling coincide, it does not separate this user")
        else:
            chance = (e.get("chance") or 0) if m == "authorship_probability" else -1
            cls = "good" if pa > pb and pa >= 0 and e["adapter_scores"][m] > chance else "bad"
            items.append(f'{label}: adapter at <b class="{cls}">{_where(pa)}</b>, bare base at'
                         f" {_where(pb)} of the way from other users' text (0%) to the user's"
                         f" own (100%)")
    if r := _ppl_ratio(e):
        cls, word = ("good", "lower") if r < 1 else ("bad", "higher")
        items.append(f'perplexity of held-out messages <b class="{cls}">{_pct(abs(r - 1))}'
                     f" {word}</b> with the adapter than with the bare base")
    s = e["adapter_scores"]
    flagged, verbatim = s.get("novelty_flagged"), s.get("novelty_verbatim")
    if flagged is not None:
        cls = "bad" if flagged or verbatim else "good"
        items.append(f'copying: <b class="{cls}">{_e(flagged)} of {_e(e.get("n"))}</b> generations'
                     f" contain a long span from training, {_e(verbatim)} are verbatim copies")
    return '<ul class="read">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _scores_table(e: dict) -> str:
    rows, pl = [], e["placement"]
    for m, label, better in METRICS:
        c = e["calibration"][m]
        rows.append(f"<tr><td>{_e(label)} <span class=muted>({_e(better)})</span></td>"
                    f"<td class=a>{_f(e['adapter_scores'][m])}</td>"
                    f"<td class=b>{_f(e['base_scores'][m])}</td><td>{_f(c['ceiling'])}</td>"
                    f"<td>{_f(c['floor'])}</td><td class=a>{_f(pl['adapter'].get(m), 2)}</td>"
                    f"<td class=b>{_f(pl['base'].get(m), 2)}</td></tr>")
    rows.append(f"<tr><td>perplexity <span class=muted>(lower is better)</span></td>"
                f"<td class=a>{_f(e['adapter_scores'].get('perplexity'), 2)}</td>"
                f"<td class=b>{_f(e['base_scores'].get('perplexity'), 2)}</td>"
                + "<td>–</td>" * 4 + "</tr>")
    s, nov = e["adapter_scores"], e.get("novelty") or {}
    n = nov.get("n", 8)
    rows.append(f"<tr><td>novelty: copied {_e(n)}-grams <span class=muted>(lower is better)"
                f"</span></td><td class=a>{_pct(s.get('novelty_copied_share'))}</td>"
                f"<td colspan=5 class=muted>longest copied span {_e(nov.get('max_span', '–'))}"
                f" words · {_e(s.get('novelty_flagged'))} flagged · "
                f"{_e(s.get('novelty_verbatim'))} verbatim</td></tr>")
    return ("<table><thead><tr><th>metric</th><th>adapter</th><th>bare base</th>"
            "<th>ceiling<br>(own text)</th><th>floor<br>(others)</th><th>placement<br>adapter"
            "</th><th>placement<br>base</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _facts(e: dict) -> str:
    g = e.get("generation") or {}
    gen = (", ".join(f"{k} {g[k]}" for k in ("max_new_tokens", "temperature", "top_p",
                                             "repetition_penalty", "seed") if k in g)
           or "not saved")
    facts = [("adapter", f"<code>{_e(e['adapter'])}</code>"), ("base", _e(e["base"])),
             ("eval set", f"<code>{_e((e.get('eval_digest') or '')[:12])}</code>"),
             ("n", _e(e.get("n"))), ("cohort", f"{len(e.get('cohort') or [])} users"),
             ("chance", _f(e.get("chance"))), ("generation", _e(gen)),
             ("evaluated", _e(e.get("saved_at") or "date not saved")),
             ("compiled", _e(e.get("compiled_at")))]
    return f'<div class="facts">{"".join(f"<span>{k}: <b>{v}</b></span>" for k, v in facts)}</div>'


def _samples(e: dict) -> str:
    if not e.get("samples"):
        return ('<p class="note">Sample generations were not saved for this evaluation: re-run'
                f" <code>idiolect eval {_e(e['user'])} --base {_e(e['base'])}</code> to add them."
                "</p>")
    out = ["<h3>Samples: the real held-out message beside the generations for its prompt</h3>"]
    for s in e["samples"]:
        out.append(f'<div class="sample"><div class="subj">Subject: <b>{_e(s.get("subject"))}</b>'
                   f'</div><div class="cols"><div class="real"><h4>real message</h4>'
                   f'{_e(s.get("real"))}</div><div><h4>adapter</h4>{_e(s.get("adapter"))}</div>'
                   f'<div><h4>bare base</h4>{_e(s.get("base"))}</div></div></div>')
    return "".join(out)


def _cohort_table(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        a, b, c, pl = e["adapter_scores"], e["base_scores"], e["calibration"], e["placement"]
        cells = [(k, _f(v)) for m, _, _ in METRICS for k, v in (
            ("a", a[m]), ("b", b[m]), ("x", c[m]["ceiling"]), ("x", c[m]["floor"]))]
        cells += [("a", _f(a.get("perplexity"), 1)), ("b", _f(b.get("perplexity"), 1))]
        rows.append(f'<tr><td><a href="#u-{_e(e["adapter"])}">{_e(_label(e, entries))}</a></td>'
                    f"<td>{_e(e.get('n'))}</td>"
                    + "".join(f"<td class={k}>{v}</td>" for k, v in cells)
                    + f"<td>{_f(pl['adapter'].get('fingerprint_distance'), 2)}"
                    f" / {_f(pl['adapter'].get('authorship_probability'), 2)}</td></tr>")
    head = ("<tr><th rowspan=2>user</th><th rowspan=2>n</th><th colspan=4>fingerprint distance ↓"
            "</th><th colspan=4>authorship probability ↑</th><th colspan=2>perplexity ↓</th>"
            "<th rowspan=2>adapter placement<br>(fp / auth)</th></tr><tr>"
            + "<th>adapter</th><th>base</th><th>ceiling</th><th>floor</th>" * 2
            + "<th>adapter</th><th>base</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def render_report(home: Home, users: list[str] | None, out_dir: Path | None = None,
                  base: str | None = None) -> dict:
    """Write ``out_dir/index.html`` (default: the home's ``reports/html``) and its PNGs; returns
    their paths and who is shown."""
    entries = collect(home, users, base)
    out_dir = out_dir or home.reports_dir / "html"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [out_dir / "cohort.png"]
    plot_cohort(entries, plots[0])
    sections = []
    for e in entries:
        png = out_dir / f"user-{e['adapter']}.png"
        plot_user(e, png)
        plots.append(png)
        sections.append(
            f'<section id="u-{_e(e["adapter"])}"><h2>{_e(_label(e, entries))}</h2>{_facts(e)}'
            f"{_reading(e)}{_scores_table(e)}<img src=\"{_e(png.name)}\" alt=\"where adapter and"
            f' bare base sit between floor and ceiling for {_e(e["user"])}" width="704">'
            f"<p class=muted>{CAPTION}</p>{_samples(e)}</section>")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport"'
            f' content="width=device-width,initial-scale=1"><title>idiolect report'
            f"</title><style>{CSS}</style></head><body><main><h1>idiolect evaluation report</h1>"
            f'<p class="muted">{len(entries)} adapter(s) · built {_e(utcnow())} from stored'
            f" evaluations (nothing regenerated)</p><p class=\"note\">This page contains personal"
            f" messages. It was built on this device and links to nothing outside it.</p>"
            f"<p>{GUIDE}</p><section><h2>Cohort</h2>{_cohort_table(entries)}"
            f'<img src="cohort.png" alt="placement of adapter and bare base per user"></section>'
            + "".join(sections) + "</main></body></html>\n")
    index = out_dir / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return {"index": str(index), "plots": [str(p) for p in plots],
            "adapters": [{"user": e["user"], "adapter": e["adapter"], "base": e["base"],
                          "full_result": e["full"]} for e in entries]}


def build_report(home: Home, users: list[str] | None, out_dir: Path | None = None,
                 base: str | None = None) -> Path:
    """Write the report page for ``users`` (default: every evaluated active adapter)."""
    return Path(render_report(home, users, out_dir, base)["index"])
