#!/usr/bin/env python3
"""Turn the JSON reports of bench/quality/run.sh into results.md and PNG
plots (gnuplot): perplexity per window vs tokens and KV bytes vs tokens,
one plot per budget with a line per policy (log scale), and mean KL vs
budget with a line per policy.

    report.py OUT_DIR [--budgets 128,256,512]

Reads OUT_DIR/meta.json and OUT_DIR/json/*.json; writes OUT_DIR/results.md,
OUT_DIR/dat/*.dat, OUT_DIR/plots.gp and OUT_DIR/*.png. Standard library only.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys


def load(out):
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "json", "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            runs[name] = json.load(f)
    failed = sorted(os.path.basename(p)[:-7]
                    for p in glob.glob(os.path.join(out, "json", "*.failed")))
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    return meta, runs, failed


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def run_for(runs, policy, budget):
    return runs.get("full") if policy == "full" else runs.get("%s-%s" % (policy, budget))


def policies_in(runs):
    seen = []
    for name in runs:
        p = name.rsplit("-", 1)[0] if name != "full" else "full"
        if p not in seen:
            seen.append(p)
    return seen


def table(meta, runs, failed, budgets):
    lines = [
        "# sinkd quality sweep",
        "",
        "Model `%s`, text `%s`, %s tokens streamed one decode step at a time; "
        "reference: %s; host %s (%s%s), %s." % (
            meta["model"], meta["text"], meta["tokens"], meta["ref"], meta["host"],
            meta["cpu"], ", " + meta["gpu"] if meta.get("gpu") else "", meta["date"]),
        "",
        "| policy | budget | params | ppl | ppl last window | ref ppl | mean KL | top-1 "
        "| KV bytes max | KV bytes end | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in policies_in(runs):
        for b in ([None] if p == "full" else budgets):
            r = run_for(runs, p, b)
            if r is None:
                continue
            wins = [w for w in r["windows"] if w["n"] > 0]
            last = wins[-1]["ppl"] if wins else None
            lines.append("| %s | %s | `%s` | %s | %s | %s | %s | %s | %d | %d | %s |" % (
                p, "-" if b is None else b, r["params"], fmt(r["ppl"], ".4f"), fmt(last, ".4f"),
                fmt(r.get("ref_ppl"), ".4f"), fmt(r.get("kl_mean"), ".5f"),
                fmt(None if r.get("top1") is None else 100 * r["top1"], ".2f") + "%",
                r["kv_bytes_max"], r["kv_bytes_final"], fmt(r["tokens_per_s"], ".1f")))
            if r.get("fallback"):
                lines.append("| | | fell back to window: %s | | | | | | | | |" % r["fallback"])
    if failed:
        lines += ["", "Failed runs (see run.sh's output): " + ", ".join(failed)]
    lines += ["", "Plots: " + ", ".join(
        ["ppl-tokens-%s.png" % b for b in budgets] + ["kv-tokens-%s.png" % b for b in budgets] +
        ["kl-budget.png"])]
    return "\n".join(lines) + "\n"


def write_dat(out, runs, budgets):
    d = os.path.join(out, "dat")
    os.makedirs(d, exist_ok=True)
    for name, r in runs.items():
        with open(os.path.join(d, name + ".win"), "w") as f:
            f.write("# window_end ppl\n")
            for w in r["windows"]:
                if w["n"] > 0 and w["ppl"] is not None:
                    f.write("%d %.6g\n" % (min(w["end"], r["tokens"]), w["ppl"]))
        with open(os.path.join(d, name + ".kv"), "w") as f:
            f.write("# tokens kv_bytes\n")
            for s in r["samples"]:
                f.write("%d %d\n" % (s["tokens"], s["kv_bytes"]))
    for p in policies_in(runs):
        with open(os.path.join(d, p + ".kl"), "w") as f:
            f.write("# budget kl_mean top1\n")
            for b in budgets:
                r = run_for(runs, p, b)
                if r is not None and r.get("kl_mean") is not None:
                    f.write("%s %.6g %.6g\n" % (b, r["kl_mean"], r["top1"]))


def gnuplot(out, runs, budgets, meta):
    pols = policies_in(runs)
    gp = ["set terminal png size 1000,640 font ',10'", "set key outside right top",
          "set grid", "set xlabel 'tokens'"]
    for b in budgets:
        series = [(p, "full" if p == "full" else "%s-%s" % (p, b)) for p in pols]
        series = [(p, n) for p, n in series if n in runs]
        if not series:
            continue
        gp += ["set output '%s/ppl-tokens-%s.png'" % (out, b),
               "set title 'perplexity per %s-token window, budget %s (%s)'" % (
                   meta["window"], b, meta["model"]),
               "set logscale y", "set ylabel 'perplexity (log scale)'",
               "plot " + ", ".join("'%s/dat/%s.win' using 1:2 with linespoints title '%s'" % (
                   out, n, p) for p, n in series),
               "unset logscale y",
               "set output '%s/kv-tokens-%s.png'" % (out, b),
               "set title 'KV bytes held, budget %s (%s)'" % (b, meta["model"]),
               "set logscale y", "set ylabel 'KV bytes (log scale)'",
               "plot " + ", ".join("'%s/dat/%s.kv' using 1:2 with linespoints pointinterval 4 "
                                   "title '%s'" % (
                   out, n, p) for p, n in series),
               "unset logscale y"]
    kl = [p for p in pols if os.path.getsize(os.path.join(out, "dat", p + ".kl")) > 24]
    if kl:
        gp += ["set output '%s/kl-budget.png'" % out,
               "set title 'mean KL(%s || policy) vs budget (%s)'" % (meta["ref"], meta["model"]),
               "set xlabel 'budget (tokens per lane, log scale)'", "set logscale x 2",
               "set logscale y", "set ylabel 'mean KL, nats (log scale)'",
               "set xtics (%s)" % ", ".join(str(b) for b in budgets),
               "set xrange [%g:%g]" % (min(map(int, budgets)) / 1.3, max(map(int, budgets)) * 1.3),
               "plot " + ", ".join("'%s/dat/%s.kl' using 1:2 with linespoints title '%s'" % (
                   out, p, p) for p in kl)]
    path = os.path.join(out, "plots.gp")
    with open(path, "w") as f:
        f.write("\n".join(gp) + "\n")
    if shutil.which("gnuplot") is None:
        sys.exit("report.py: gnuplot not found (Debian: gnuplot-nox): %s is written, "
                 "run `gnuplot %s` where it is installed" % (os.path.join(out, "results.md"), path))
    subprocess.run(["gnuplot", path], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--budgets", default="128,256,512")
    a = ap.parse_args()
    budgets = [b for b in a.budgets.split(",") if b]
    meta, runs, failed = load(a.out)
    if not runs:
        sys.exit("report.py: no results in %s/json" % a.out)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(table(meta, runs, failed, budgets))
    write_dat(a.out, runs, budgets)
    gnuplot(a.out, runs, budgets, meta)
    sys.stdout.write(open(os.path.join(a.out, "results.md")).read())


if __name__ == "__main__":
    main()
