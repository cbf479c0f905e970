"""A sweep's tables, from its summary.json: a row per cell (mean ± std of val_bpb over the seeds,
vocabulary, bytes per token, tokens, tokens/s, parameters), or val_bpb per scored domain; as a
rich table for the terminal or in Markdown for a page; and the notes on skipped and failed
cells."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def domains(summary: dict[str, Any]) -> list[str]:
    """The domains the cells were scored on, in the order of the first cell that has them."""
    return next((list(r["by_domain"]) for r in summary["cells"] if r.get("by_domain")), [])


def kilobytes(n: int) -> str:
    """Bytes as kilobytes, with a decimal below 10 kB: '326 kB', '0.4 kB'."""
    return f"{n / 1e3:,.0f} kB" if n >= 10_000 else f"{n / 1e3:.1f} kB"


def title(summary: dict[str, Any]) -> str:
    n = len(summary["seeds"])
    machine = summary["machine"] or "no run finished"
    return f"{summary['name']} · {summary['budget_text']} · {n} seed{'s' * (n > 1)} · {machine}"


def rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The sweep's table as text: the columns, and a row per cell (mean ± std of val_bpb over
    its seeds, 'skipped' or 'failed' in its place)."""
    keys = list(summary["grid"])
    n = len(summary["seeds"])
    columns = [*keys, "vocab", "val_bpb", "bytes/token", "tokens", "tok/s", "params", "seeds"]
    out = []
    for row in summary["cells"]:
        cell = [row["texts"][k] for k in keys]
        if row["status"] == "skipped":
            out.append([*cell, "", "skipped", "", "", "", "", f"0/{n}"])
            continue
        values = row["values"]
        bpb = "failed"
        if values:
            bpb = f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if len(values) > 1 else "")
        out.append(
            [
                *cell,
                f"{row['vocab_size']:,}",
                bpb,
                f"{row['bytes_per_token']:.3f}",
                f"{row['tokens_seen']:,}" if values else "",
                f"{row['tokens_per_s']:,.0f}" if values else "",
                f"{row['params']:,}" if values else "",
                f"{row['seeds_done']}/{n}",
            ]
        )
    return columns, out


def domain_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """val_bpb per scored domain as text: a row per cell, a column per domain (with the
    domain's kilobytes in the scored slice), mean ± std over the cell's seeds."""
    keys, names = list(summary["grid"]), domains(summary)
    scored = summary.get("domain_bytes", {})
    heads = [f"{d} ({kilobytes(scored[d])})" if d in scored else d for d in names]
    out = []
    for row in summary["cells"]:
        got = row.get("by_domain") or {}
        sd = row["seeds_done"] > 1
        texts = [
            (f"{got[d][0]:.3f}" + (f" ± {got[d][1]:.3f}" if sd else "")) if d in got else ""
            for d in names
        ]
        out.append([*(row["texts"][k] for k in keys), *texts])
    return [*keys, *heads], out


def table(summary: dict[str, Any], by_domain: bool = False):
    """The sweep as a rich table (``by_domain``: val_bpb per scored domain instead)."""
    columns, body = (domain_rows if by_domain else rows)(summary)
    name = f"{summary['name']} · val_bpb per domain" if by_domain else title(summary)
    out = Table(*columns, title=name)
    for col in out.columns[len(summary["grid"]) :]:
        col.justify = "right"
    style = {"skipped": "[dim]skipped[/]", "failed": "[red]failed[/]"}
    for row in body:
        out.add_row(*(style.get(text, text) for text in row))
    return out


def markdown(summary: dict[str, Any], by_domain: bool = False) -> str:
    """The sweep's table (or its per-domain table) in Markdown, for a report or a page."""
    columns, body = (domain_rows if by_domain else rows)(summary)
    keys = len(summary["grid"])
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join("---" if i < keys else "---:" for i in range(len(columns))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def notes(summary: dict[str, Any]) -> list[str]:
    """Why cells were skipped and which seeds failed, one line each."""
    lines = []
    for row in summary["cells"]:
        if row["status"] == "skipped":
            lines.append(f"skipped {row['label']}: {row['reason']}")
        for seed, why in (row.get("failures") or {}).items():
            lines.append(f"failed {row['label']} seed {seed}: {why}")
    return lines
