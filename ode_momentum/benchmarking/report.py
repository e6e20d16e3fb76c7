"""From the results dict of :func:`~ode_momentum.benchmarking.runner.run_bench` to the issue's target checks,
PNG figures (matplotlib ``Figure`` objects, no pyplot state) and a Markdown report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

REPORT_FILE = "benchmarks.md"
RESULTS_FILE = "bench.json"
FIGURES = {
    "memory": "memory_vs_depth.png",
    "time": "time_ratio_vs_depth.png",
    "grad": "grad_error_vs_depth.png",
    "work_precision": "work_precision.png",
}
EXACT_METHODS = ("exact", "exact_eager")
REFERENCE_FREE = "momentumnet_free"
# The targets: exact mode's time ratio to our backprop at the target depth, per stack.
TIME_TARGETS = {"mlp512": 1.5, "conv16": 1.5, "mlp64": 1.6}
TIME_VS_REFERENCE = 0.6  # exact time / momentumnet memory-free time
GRAD_ADVANTAGE = 1e4  # momentumnet memory-free error / exact error at the plan's grad_gamma_depth (128), float32
FIGSIZE = (5.2, 4.0)  # inches per panel
DPI = 110


# ------------------------------------------------------------------------------------------------ lookup


def _rows(results: dict, kind: str, **match) -> list[dict]:
    return [r for r in results["records"] if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def _one(results: dict, kind: str, **match) -> dict | None:
    rows = _rows(results, kind, **match)
    return rows[0] if rows else None


def _ok(row: dict | None) -> bool:
    return row is not None and row["status"] == "ok" and row["value"] is not None


def _why(row: dict | None) -> str:
    if row is None:
        return "not measured in this run"
    if row["status"] == "unavailable":
        return f"unavailable ({row['reason']})"
    return f"{row['status']}: {row['reason']}" if row["reason"] else row["status"]


def _methods_present(results: dict) -> list[str]:
    return list(results["methods"])


# ----------------------------------------------------------------------------------------------- targets


def _target(tid, text, stack, method, measured, threshold, comparison, detail="") -> dict:
    if measured is None:
        met = None
    elif comparison == "<=":
        met = bool(measured <= threshold)
    else:
        met = bool(measured >= threshold)
    return {"id": tid, "target": text, "stack": stack, "method": method, "measured": measured,
            "threshold": threshold, "comparison": comparison, "met": met, "detail": detail}


def evaluate_targets(results: dict) -> list[dict]:
    """The issue's targets, each with the measured figure, the threshold and whether it is met.

    ``met`` is ``None`` when a figure is missing (a method unavailable or failing, or a cell not in the
    plan); ``detail`` says why.
    """
    plan = results["plan"]
    gamma, depth32 = plan["gamma"], plan["target_depth"]
    stacks = [s["name"] for s in plan["stacks"]]
    exacts = [m for m in EXACT_METHODS if m in results["methods"]]
    depth_g = plan["grad_gamma_depth"]
    out = []
    for method in exacts:
        for stack in stacks:
            if stack not in TIME_TARGETS:
                continue
            row = _one(results, "time_ratio", stack=stack, depth=depth32, gamma=gamma, method=method, dtype="float32")
            out.append(_target(
                "time", f"{method} time / backprop, depth {depth32}", stack, method,
                row["value"] if _ok(row) else None, TIME_TARGETS[stack], "<=", "" if _ok(row) else _why(row)))
        for stack in stacks:
            a = _one(results, "time_ratio", stack=stack, depth=depth32, gamma=gamma, method=method, dtype="float32")
            b = _one(results, "time_ratio", stack=stack, depth=depth32, gamma=gamma, method=REFERENCE_FREE,
                     dtype="float32")
            measured = a["value"] / b["value"] if _ok(a) and _ok(b) else None
            detail = ("ratio of the two medians against backprop" if measured is not None
                      else _why(a) if not _ok(a) else _why(b))
            out.append(_target("time_vs_momentumnet", f"{method} time / momentumnet memory-free time, depth {depth32}",
                               stack, method, measured, TIME_VS_REFERENCE, "<=", detail))
    for method in exacts:
        for stack in stacks:
            pairs, missing = [], []
            for row in _rows(results, "saved_bytes", stack=stack, method=method):
                ref = _one(results, "saved_bytes", stack=stack, method=REFERENCE_FREE, depth=row["depth"],
                           gamma=row["gamma"])
                if _ok(row) and _ok(ref):
                    pairs.append((row["value"] / ref["value"], row["depth"], row["gamma"]))
                else:
                    missing.append(_why(row) if not _ok(row) else _why(ref))
            worst = max(pairs) if pairs else None
            detail = (f"worst at depth {worst[1]}, gamma {worst[2]}; {len(pairs)} cells" if worst
                      else (missing[0] if missing else "not measured"))
            out.append(_target("memory_vs_momentumnet", f"{method} saved bytes / momentumnet memory-free, every depth",
                               stack, method, worst[0] if worst else None, 1.0, "<=", detail))
            out.append(_flatness(results, stack, method))
    for method in exacts:
        for stack in stacks:
            a = _one(results, "grad_error", stack=stack, depth=depth_g, gamma=gamma, method=method, dtype="float32")
            b = _one(results, "grad_error", stack=stack, depth=depth_g, gamma=gamma, method=REFERENCE_FREE,
                     dtype="float32")
            if _ok(a) and _ok(b):
                measured = b["value"] / a["value"] if a["value"] > 0 else math.inf
                floor = _one(results, "grad_error", stack=stack, depth=depth_g, gamma=gamma, method="backprop",
                             dtype="float32")
                detail = (f"{method} {a['value']:.2e}, momentumnet memory-free {b['value']:.2e}"
                          + (f"; float32 backprop itself {floor['value']:.2e}" if _ok(floor) else ""))
            else:
                measured, detail = None, _why(a) if not _ok(a) else _why(b)
            out.append(_target("grad_vs_momentumnet",
                               f"momentumnet memory-free grad error / {method} grad error, depth {depth_g}, "
                               f"gamma {gamma}, float32", stack, method, measured, GRAD_ADVANTAGE, ">=", detail))
    return out


def _flatness(results: dict, stack: str, method: str) -> dict:
    """Saved bytes flat in depth apart from the bit buffer: every increment over the shallowest depth is whole
    per-element buffer words (one integer per state element: int64 when spilled, the current word int8 to
    int64 as its bound grows), so a multiple of the element count; the note gives it in bytes per element."""
    spec = next(s for s in results["plan"]["stacks"] if s["name"] == stack)
    elements = int(np.prod(spec["input_shape"]))
    worst_rest, notes = None, []
    for gamma in sorted({r["gamma"] for r in _rows(results, "saved_bytes", stack=stack, method=method)}):
        rows = sorted((r for r in _rows(results, "saved_bytes", stack=stack, method=method, gamma=gamma) if _ok(r)),
                      key=lambda r: r["depth"])
        if len(rows) < 2:
            continue
        base = rows[0]["value"]
        grown = []
        for r in rows[1:]:
            extra = r["value"] - base
            rest = extra % elements if extra >= 0 else abs(extra)
            worst_rest = rest if worst_rest is None else max(worst_rest, rest)
            grown.append(f"{extra // elements:+d} B/element at depth {r['depth']}" if extra >= 0 else f"{extra:+d} B")
        notes.append(f"gamma {gamma}: {', '.join(grown)} over depth {rows[0]['depth']}")
    return _target("memory_flat", f"{method} saved bytes flat in depth except bit-buffer words "
                   "(bytes of growth that are not whole per-element words)", stack, method, worst_rest, 0, "<=",
                   "; ".join(notes) if notes else "fewer than two depths measured")


# ----------------------------------------------------------------------------------------------- figures


def _style(results: dict) -> dict[str, dict]:
    markers = "os^vD<>pXh*"
    return {m: {"color": f"C{i % 10}", "marker": markers[i % len(markers)],
                "linestyle": "-" if results["methods"][m]["family"] == "ode_momentum" else "--"}
            for i, m in enumerate(_methods_present(results))}


def _series(results, kind, stack, method, x_key="depth", **match):
    rows = sorted((r for r in _rows(results, kind, stack=stack, method=method, **match) if _ok(r)),
                  key=lambda r: r[x_key])
    return [r[x_key] for r in rows], [r["value"] for r in rows]


def _finish_axes(ax, xlog: bool = True, ylog: bool = True) -> None:
    """Log scales where the panel has data; a note instead of empty log axes (which warn)."""
    if not ax.lines:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    if xlog:
        ax.set_xscale("log", base=2)
    if ylog:
        ax.set_yscale("log")


def _positive(xs, ys):
    """Points with ``y > 0`` (log axes; an error of exactly zero is listed in the tables, not drawn)."""
    keep = [(a, b) for a, b in zip(xs, ys) if b > 0]
    return [a for a, _ in keep], [b for _, b in keep]


def _panel_grid(n_rows: int, n_cols: int):
    fig = Figure(figsize=(FIGSIZE[0] * n_cols, FIGSIZE[1] * n_rows + 0.9), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False)


def _legend(fig, results, unavailable_note: bool = True):
    handles, labels = {}, {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    missing = [m for m, info in results["methods"].items() if not info["available"]]
    title = f"unavailable: {', '.join(missing)}" if missing and unavailable_note else None
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=5, fontsize="small",
                   title=title, title_fontsize="small")


def _stack_label(results, name) -> str:
    spec = next(s for s in results["plan"]["stacks"] if s["name"] == name)
    return f"{name}: {spec['label']}"


def figure_memory(results: dict) -> Figure:
    """Saved-activation bytes (top) and peak memory (bottom) against depth, one column per stack."""
    stacks = [s["name"] for s in results["plan"]["stacks"]]
    gamma = results["plan"]["gamma"]
    has_peak = any(_ok(r) for r in _rows(results, "peak_memory"))
    fig, axes = _panel_grid(2 if has_peak else 1, len(stacks))
    styles = _style(results)
    peak_label = "peak RSS above baseline" if results["machine"]["device"] == "cpu" else "max_memory_allocated"
    for j, stack in enumerate(stacks):
        panels = [("saved_bytes", "saved activations")] + ([("peak_memory", peak_label)] if has_peak else [])
        for i, (kind, what) in enumerate(panels):
            ax = axes[i][j]
            for method in _methods_present(results):
                xs, ys = _positive(*_series(results, kind, stack, method, gamma=gamma))
                if xs:
                    ax.plot(xs, np.asarray(ys) / 2**20, label=method, ms=4, **styles[method])
            _finish_axes(ax)
            ax.set_title(f"{_stack_label(results, stack)}\n{what}, gamma {gamma}", fontsize="small")
            ax.set_xlabel("depth N")
            ax.set_ylabel("MiB")
            ax.grid(True, which="major", alpha=0.3)
    _legend(fig, results)
    return fig


def figure_time(results: dict) -> Figure:
    """Forward+backward time over our backprop's against depth, one panel per stack (bars for one depth)."""
    stacks = [s["name"] for s in results["plan"]["stacks"]]
    fig, axes = _panel_grid(1, len(stacks))
    styles = _style(results)
    single = len(results["plan"]["time_depths"]) == 1
    for j, stack in enumerate(stacks):
        ax = axes[0][j]
        title = f"{_stack_label(results, stack)}\ntime / backprop (median of interleaved pairs)"
        if single:
            depth = results["plan"]["time_depths"][0]
            bars = [(m, r["value"]) for m in _methods_present(results)
                    for r in [_one(results, "time_ratio", stack=stack, depth=depth, method=m, dtype="float32")]
                    if _ok(r)]
            for k, (m, value) in enumerate(bars):
                ax.barh(k, value - 1.0, left=1.0, color=styles[m]["color"], label=m)  # from 1: as fast as backprop
                ax.text(value, k, f" {value:.2f}", va="center", fontsize="x-small")
            ax.set_yticks(range(len(bars)), [m for m, _ in bars], fontsize="small")
            ax.invert_yaxis()
            ax.axvline(1.0, color="black", lw=0.8)
            if stack in TIME_TARGETS:
                ax.axvline(TIME_TARGETS[stack], color="grey", lw=0.8, ls=":", label="exact target")
            ax.set_xscale("log")
            if bars:
                ax.set_xlim(min(0.9, *(v for _, v in bars)) * 0.95, max(v for _, v in bars) * 1.4)  # room for labels
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"ratio at depth {depth}")
            ax.set_title(title, fontsize="small")
            ax.grid(True, axis="x", which="both", alpha=0.3)
            continue
        for method in _methods_present(results):
            xs, ys = _series(results, "time_ratio", stack, method, dtype="float32")
            if xs:
                ax.plot(xs, ys, label=method, ms=4, **styles[method])
        _finish_axes(ax)
        ax.axhline(1.0, color="black", lw=0.8)
        if stack in TIME_TARGETS:
            ax.axhline(TIME_TARGETS[stack], color="grey", lw=0.8, ls=":", label="exact target")
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("depth N")
        ax.set_ylabel("ratio")
        ax.grid(True, which="both", alpha=0.3)
    if not single:
        _legend(fig, results)
    return fig


def figure_grad(results: dict) -> Figure:
    """Max relative gradient error against float64 backprop: against depth (top), against gamma (bottom)."""
    stacks = [s["name"] for s in results["plan"]["stacks"]]
    gamma = results["plan"]["gamma"]
    has_gammas = bool(results["plan"]["grad_gammas"])
    fig, axes = _panel_grid(2 if has_gammas else 1, len(stacks))
    styles = _style(results)
    for j, stack in enumerate(stacks):
        ax = axes[0][j]
        for method in _methods_present(results):
            xs, ys = _positive(*_series(results, "grad_error", stack, method, gamma=gamma, dtype="float32"))
            if xs:
                ax.plot(xs, ys, label=method, ms=4, **styles[method])
        _finish_axes(ax)
        ax.set_title(f"{_stack_label(results, stack)}\nfloat32 gradient error, gamma {gamma}", fontsize="small")
        ax.set_xlabel("depth N")
        ax.set_ylabel("max relative error")
        ax.grid(True, which="major", alpha=0.3)
        if has_gammas:
            ax = axes[1][j]
            depth = results["plan"]["grad_gamma_depth"]
            for method in _methods_present(results):
                xs, ys = _positive(*_series(results, "grad_error", stack, method, x_key="gamma", depth=depth,
                                            dtype="float32"))
                if xs:
                    ax.plot(xs, ys, label=method, ms=4, **styles[method])
            _finish_axes(ax, xlog=False)
            ax.set_title(f"float32 gradient error, depth {depth}", fontsize="small")
            ax.set_xlabel("gamma")
            ax.set_ylabel("max relative error")
            ax.grid(True, which="major", alpha=0.3)
    _legend(fig, results)
    return fig


def figure_work_precision(results: dict) -> Figure | None:
    from ..analysis.tidy import Table
    from ..studies import figure_work_precision as draw

    rows = results["work_precision"]
    if not rows:
        return None
    panels = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        sub = [{k: (math.nan if v is None else v) for k, v in r.items() if k != "problem"}
               for r in rows if r["problem"] == problem]
        eps = sub[0]["eps"]
        panels.append((f"{problem}, eps = {eps:g}", Table(sub)))
    return draw(panels)


# ---------------------------------------------------------------------------------------------- markdown


def _mib(b) -> str:
    if b is None:
        return "-"
    if b >= 2**20:
        return f"{b / 2**20:,.2f} MiB"
    return f"{b / 2**10:,.1f} KiB"


def _cell(row: dict | None, fmt) -> str:
    if row is None:
        return ""
    if row["status"] == "ok":
        return fmt(row["value"])
    return {"unavailable": "n/a", "error": "error", "nonfinite": "nan/inf", "skipped": "skipped"}.get(
        row["status"], row["status"])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _fmt_ratio(v) -> str:
    return f"{v:.2f}"


def _fmt_err(v) -> str:
    return "0" if v == 0 else f"{v:.1e}"


def _fmt_measured(t: dict) -> str:
    v = t["measured"]
    if v is None:
        return "-"
    if t["id"] == "memory_flat":
        return f"{int(v)} B"
    if t["id"] == "grad_vs_momentumnet":
        return "inf (exact error 0)" if math.isinf(v) else f"{v:.2e}"
    return f"{v:.2f}"


def _fmt_threshold(t: dict) -> str:
    if t["id"] == "grad_vs_momentumnet":
        return f">= {t['threshold']:.0e}"
    if t["id"] == "memory_flat":
        return "0 B"
    return f"<= {t['threshold']:g}"


def _met(v) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[v]


SUMMARY_METHODS = ("backprop", "reversible", "checkpoint", "exact", "exact_eager", "momentumnet_backprop",
                   "momentumnet_free", "torchdiffeq_odeint", "torchdiffeq_adjoint", "torch_checkpoint")


def summary_table(results: dict) -> list[str]:
    """A short table for the README: memory, time and gradient error of each method on one cell each."""
    plan = results["plan"]
    stacks = [s["name"] for s in plan["stacks"]]
    gamma, d_time, d_grad = plan["gamma"], plan["target_depth"], plan["grad_gamma_depth"]
    d_mem = max(plan["memory_depths"])
    mem_stack = "mlp64" if "mlp64" in stacks else stacks[0]
    grad_stack = mem_stack
    time_stacks = [s for s in ("mlp64", "mlp512", "conv16") if s in stacks]
    header = ["method", f"saved activations, {mem_stack}, depth {d_mem}"]
    header += [f"time / backprop, {s}, depth {d_time}" for s in time_stacks]
    header += [f"gradient error, {grad_stack}, depth {d_grad}, float32"]
    rows = []
    for m in SUMMARY_METHODS:
        if m not in results["methods"]:
            continue
        row = [f"`{m}`", _cell(_one(results, "saved_bytes", stack=mem_stack, depth=d_mem, gamma=gamma, method=m),
                               _mib)]
        for s in time_stacks:
            row.append("1" if m == "backprop" else _cell(_one(results, "time_ratio", stack=s, depth=d_time, gamma=gamma,
                                                             method=m, dtype="float32"), _fmt_ratio))
        row.append(_cell(_one(results, "grad_error", stack=grad_stack, depth=d_grad, gamma=gamma, method=m,
                              dtype="float32"), _fmt_err))
        rows.append(row)
    return _table(header, rows)


def markdown(results: dict, figure_dir: str) -> str:
    """The report: targets, what ran, then one section per measurement with tables and figures."""
    plan, machine = results["plan"], results["machine"]
    methods = _methods_present(results)
    stacks = [s["name"] for s in plan["stacks"]]
    gamma = plan["gamma"]
    fig = {k: f"{figure_dir}/{v}" if figure_dir else v for k, v in FIGURES.items()}
    L: list[str] = []
    minutes = results["seconds"] / 60
    L += ["# Benchmarks", "",
          f"Generated by `{results['command']}` on {results['date_utc']} in {minutes:.1f} min "
          f"({plan['name']} plan). Do not edit by hand: rerun the command. Raw data: "
          f"`{RESULTS_FILE}` next to the figures.", ""]

    L += ["## Summary", "", f"gamma {gamma}; what every cell means is below.", ""] + summary_table(results)
    L += ["## The issue's targets", ""]
    rows = [[t["target"], t["stack"], _fmt_measured(t), _fmt_threshold(t), _met(t["met"]), t["detail"]]
            for t in results["targets"]]
    L += _table(["target", "stack", "measured", "threshold", "met", "detail"], rows)

    L += ["## What was run", ""]
    L += _table(["", ""], [
        ["command", f"`{results['command']}`"],
        ["date", results["date_utc"]],
        ["wall time", f"{results['seconds']:.0f} s"],
        ["machine", f"{machine['cpu']}, {machine['cpus_available']} of {machine['cpu_count']} CPUs available, "
                    f"{machine['memory_gib']} GiB; {machine['platform']}" + (f"; GPU {machine.get('gpu')}"
                                                                             if machine.get("gpu") else "")],
        ["load average (1, 5, 15 min) at start / end",
         f"{_loadavg(machine.get('load_average'))} / {_loadavg(machine.get('load_average_end'))}"],
        ["versions", f"python {machine['python']}, torch {machine['torch']}, torchdiffeq {machine['torchdiffeq']}, "
                     f"numpy {machine['numpy']}, ode-momentum {machine['ode_momentum']} (git {machine['git']})"],
        ["torch threads", str(results["threads"])],
    ])
    L += ["Stacks (every method wraps the same untied residual functions, PyTorch's default initialisation, "
          "seed 0; input standard normal, seed 1; loss `mean(x_N ** 2)`):", ""]
    L += [f"- `{s['name']}`: {s['label']}; "
          + ("`f_n = Linear(w, w) -> Tanh -> Linear(w, w)`" if s["kind"] == "mlp" else
             "`f_n = Conv2d(c, c, 3, padding 1, no bias) -> BatchNorm2d(c) (training mode) -> ReLU`")
          for s in plan["stacks"]]
    L += ["", "Measurements:", ""]
    L += [f"- saved-activation bytes: depths {list(plan['memory_depths'])} x gammas {list(plan['memory_gammas'])}, "
          "every stack and method (one forward each);",
          f"- peak memory: depths {list(plan['rss_depths'])}, gamma {gamma}, stacks {list(plan['rss_stacks'])}, every "
          "method, " + ("peak RSS in a fresh process per cell;" if machine["device"] == "cpu" else
                        "`torch.cuda.max_memory_allocated`;"),
          f"- time: depths {list(plan['time_depths'])}, gamma {gamma}, {plan['time_repeats']} interleaved pairs at "
          f"depth "
          f"{plan['target_depth']} and {plan['time_repeats_other']} elsewhere, after {plan['time_warmup']} warm-up "
          f"pair(s), dtypes {list(plan['dtypes'])};",
          f"- gradient error: depths {list(plan['grad_depths'])} at gamma {gamma}"
          + (f", and gammas {list(plan['grad_gammas'])} at depth {plan['grad_gamma_depth']}" if plan["grad_gammas"]
             else "") + f", dtypes {list(plan['dtypes'])};",
          "- work-precision: " + (f"step counts {list(plan['wp_step_counts'])}, dopri5 rtols {list(plan['wp_rtols'])}."
                                  if plan["wp_step_counts"] else "not run."), ""]
    L += ["Methods:", ""]
    L += _table(["method", "what runs", "activation memory", "status"], [
        [f"`{m}`", info["description"], info["memory"],
         "available" if info["available"] else f"**unavailable**: {info['reason']}"]
        for m, info in results["methods"].items()])
    L += ["Compared packages:", ""]
    L += _table(["package", "available", "version", "how", "reason"], [
        [name, "yes" if p["available"] else "**no**", p["version"] or "-", p["how"], p["reason"] or ""]
        for name, p in results["packages"].items()])

    L += ["## Forward+backward time", "",
          f"Median over interleaved pairs (A B, B A, ...) of `time(method) / time(backprop)`, CPU time of the process "
          f"(`time.process_time`) with {results['threads']} torch thread(s) on CPU; gamma {gamma}, float32. "
          f"Quartiles of the per-pair ratios are in the JSON. A method whose warm-up pair is slow gets fewer pairs "
          f"(at least 3) so that one cell takes at most about {plan['time_cell_budget_s']:g} s; the JSON has the "
          "pairs each cell used. `skipped` cells: see the end of the report.", ""]
    depths_t = plan["time_depths"]
    header = ["method"] + [f"{s} N={d}" for s in stacks for d in depths_t]
    rows = [[f"`{m}`"] + [_cell(_one(results, "time_ratio", stack=s, depth=d, method=m, dtype="float32"), _fmt_ratio)
                          for s in stacks for d in depths_t] for m in methods if m != "backprop"]
    L += _table(header, rows)
    if "bfloat16" in plan["dtypes"]:
        rows = [[f"`{m}`"] + [_cell(_one(results, "time_ratio", stack=s, depth=d, method=m, dtype="bfloat16"),
                                    _fmt_ratio) for s in stacks for d in depths_t] for m in methods if m != "backprop"]
        L += ["bfloat16:", ""] + _table(header, rows)
    L += [f"![time ratio against depth]({fig['time']})", ""]

    L += ["## Activation memory", "",
          "Saved-activation bytes: tensors packed by autograd's saved-tensor hooks during the forward, once per "
          "storage, parameters excluded (`ode_momentum.analysis.saved_tensor_bytes`).", ""]
    for s in stacks:
        depths_m = plan["memory_depths"]
        L += [f"### {_stack_label(results, s)}", "", f"Saved bytes, gamma {gamma}:", ""]
        rows = [[str(d)] + [_cell(_one(results, "saved_bytes", stack=s, depth=d, gamma=gamma, method=m), _mib)
                            for m in methods] for d in depths_m]
        L += _table(["depth"] + [f"`{m}`" for m in methods], rows)
        dmin = min(depths_m)
        kinds = [(m, _one(results, "saved_bytes", stack=s, depth=dmin, gamma=gamma, method=m)) for m in methods]
        kinds = [(m, r["saved"]) for m, r in kinds if r is not None and r.get("saved")]
        if kinds:
            L += [f"What the saved bytes are at depth {dmin} (unique storages as dtype[shape] x count):", ""]
            L += _table(["method", "saved tensors"], [
                [f"`{m}`", ", ".join(f"{k} x{n}" for k, n in summary.items())] for m, summary in kinds])
        other = [g for g in plan["memory_gammas"] if g != gamma]
        if other:
            gm = [m for m in methods if m in (*EXACT_METHODS, "checkpoint", REFERENCE_FREE)]
            rows = [[str(d), str(g)] + [_cell(_one(results, "saved_bytes", stack=s, depth=d, gamma=g, method=m), _mib)
                                        for m in gm] for g in plan["memory_gammas"] for d in depths_m]
            L += ["Methods whose saved bytes depend on gamma:", ""]
            L += _table(["depth", "gamma"] + [f"`{m}`" for m in gm], rows)
        if s in plan["rss_stacks"]:
            what = ("Peak RSS above the pre-forward baseline in a fresh process (activations, saved states and "
                    "the backward's transients; parameter gradients preallocated, so they are not counted, but "
                    "a method whose autograd Function returns the gradients of every layer's parameters at once "
                    "(ours, momentumnet's memory-free mode) holds a second set of them until it returns)"
                    if machine["device"] == "cpu" else
                    "`max_memory_allocated` above the memory allocated before the pass")
            L += [f"{what}, gamma {gamma}:", ""]
            rows = [[str(d)] + [_cell(_one(results, "peak_memory", stack=s, depth=d, method=m), _mib) for m in methods]
                    for d in plan["rss_depths"]]
            L += _table(["depth"] + [f"`{m}`" for m in methods], rows)
    L += [f"![memory against depth]({fig['memory']})", ""]

    L += ["## Gradient error", "",
          "Max relative error `max|g - g_ref| / max|g_ref|` over the input gradient and every parameter gradient "
          "(the larger of the two is shown; both are in the JSON), against float64 backprop through the same "
          "forward with the same weights: the layer rule for every method but torchdiffeq's, whose reference is "
          "float64 `odeint` (Euler on the first-order form). `odeint_adjoint` solves the continuous adjoint "
          "backwards on the same grid, so its error also contains the gap between the continuous adjoint and the "
          "gradient of the discrete forward.", ""]
    for s in stacks:
        L += [f"### {_stack_label(results, s)}", ""]
        for dtype in plan["dtypes"]:
            rows = [[str(d)] + [_cell(_one(results, "grad_error", stack=s, depth=d, gamma=gamma, method=m, dtype=dtype),
                                      _fmt_err) for m in methods] for d in plan["grad_depths"]]
            L += [f"{dtype}, gamma {gamma}:", ""] + _table(["depth"] + [f"`{m}`" for m in methods], rows)
        if plan["grad_gammas"]:
            d = plan["grad_gamma_depth"]
            gammas = sorted({gamma, *plan["grad_gammas"]})
            rows = [[str(g)] + [_cell(_one(results, "grad_error", stack=s, depth=d, gamma=g, method=m, dtype="float32"),
                                      _fmt_err) for m in methods] for g in gammas]
            L += [f"float32, depth {d}:", ""] + _table(["gamma"] + [f"`{m}`" for m in methods], rows)
    L += [f"![gradient error against depth]({fig['grad']})", ""]

    if results["work_precision"]:
        L += ["## Work-precision", "",
              "Error of `x(T)` (max norm) against evaluations of `F`, our fixed-step integrators (through "
              "`ode_momentum.odeint`) against torchdiffeq's `rk4` (fixed grid) and `dopri5` (adaptive, atol = rtol "
              "/ 100) on the first-order form, from `ode_momentum.analysis.work_precision`. Per method: the fewest "
              "evaluations that reached each error level.", ""]
        levels = (1e-3, 1e-6, 1e-9)
        for problem in dict.fromkeys(r["problem"] for r in results["work_precision"]):
            sub = [r for r in results["work_precision"] if r["problem"] == problem]
            rows = []
            for m in dict.fromkeys(r["method"] for r in sub):
                runs = [r for r in sub if r["method"] == m and r["error_x"] is not None]
                cells = []
                for level in levels:
                    hit = [r["nfev"] for r in runs if r["error_x"] <= level]
                    cells.append(str(min(hit)) if hit else "-")
                best = min((r["error_x"] for r in runs), default=None)
                family = "torchdiffeq " if sub and runs and runs[0]["family"] == "torchdiffeq" else ""
                rows.append([f"{family}`{m}`", *cells, _fmt_err(best) if best is not None else "-"])
            L += [f"{problem}, eps = {sub[0]['eps']:g}:", ""]
            L += _table(["method"] + [f"F evals to error <= {lv:g}" for lv in levels] + ["smallest error"], rows)
        L += [f"![work-precision]({fig['work_precision']})", ""]

    skipped = [r for r in results["records"] if r["status"] == "skipped"]
    L += ["## Skipped cells", ""]
    if skipped:
        L += [f"Cells not run because of their predicted cost (rule: `depth^2 x params per layer > "
              f"{plan['max_all_params_work']:.2g}` for methods whose backward touches every parameter at every "
              "step):", ""]
        L += _table(["measurement", "stack", "depth", "gamma", "method", "reason"], [
            [r["kind"], r["stack"], str(r["depth"]), str(r["gamma"]), f"`{r['method']}`", r["reason"]]
            for r in skipped])
    else:
        L += ["None.", ""]

    failures = [r for r in results["records"] if r["status"] in ("error", "nonfinite")]
    L += ["## Failures and warnings", ""]
    if failures:
        L += _table(["measurement", "stack", "depth", "gamma", "dtype", "method", "status", "reason"], [
            [r["kind"], r["stack"], str(r["depth"]), str(r["gamma"]), r["dtype"], f"`{r['method']}`", r["status"],
             (r["reason"] or "").replace("|", "/").replace("\n", " ")[:300]] for r in failures])
    else:
        L += ["No measurement failed.", ""]
    warned: dict[tuple[str, str], list] = {}  # (method, category) -> [cells, an example message]
    for r in results["records"]:
        for w in r["warnings"]:
            category, _, message = w.partition(": ")
            entry = warned.setdefault((r["method"], category), [0, message])
            entry[0] += 1
    if warned:
        L += ["Warnings raised during measurements (one example message per method and category):", ""]
        L += _table(["method", "warning", "cells", "example"], [
            [f"`{m}`", category, str(n), example.replace("|", "/")[:200]]
            for (m, category), (n, example) in warned.items()])
    return "\n".join(L).rstrip() + "\n"



def _loadavg(v) -> str:
    return ", ".join(f"{x:.1f}" for x in v) if v else "-"


def write_report(results: dict, out: Path, *, docs: Path | None = None) -> dict[str, Path]:
    """Write the figures and ``benchmarks.md`` into ``out`` (and the report to ``docs`` if given)."""
    out = Path(out)
    paths = {}
    figures = {"memory": figure_memory(results), "time": figure_time(results), "grad": figure_grad(results),
               "work_precision": figure_work_precision(results)}
    for key, figure in figures.items():
        if figure is not None:
            paths[key] = out / FIGURES[key]
            figure.savefig(paths[key], dpi=DPI)
    paths["report"] = out / REPORT_FILE
    paths["report"].write_text(markdown(results, ""))
    if docs is not None:
        docs = Path(docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(out.resolve(), docs.parent.resolve())
        docs.write_text(markdown(results, rel.replace(os.sep, "/")))
        paths["docs"] = docs
    return paths
