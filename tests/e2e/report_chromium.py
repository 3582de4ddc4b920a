#!/usr/bin/env python3
"""`moe report` as a person sees it: two tiny runs (MoE and dense, same tokenizer) trained for a
few steps, the report of the MoE run compared with the dense one (the evaluation part from the
fixture tests/fixtures/report_eval_tiny.json, in `moe eval --json`'s schema), opened in headless
Chromium. Checks: no console message, every chart's <svg> present with data marks, nothing fetched,
a PNG screenshot written (argument 3's folder, report_screenshot.png). Bad input: one line,
exit 2, nothing written. Exits 77 (ctest: skipped) only when chromium is not installed."""
import gzip
import hashlib
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile

moe, src, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    print("SKIP: chromium is not installed (scripts/setup.sh installs it)")
    sys.exit(77)

work = tempfile.mkdtemp(prefix="moe_report_")


def fail(message):
    print("FAIL:", message)
    sys.exit(1)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def train(out, config, *extra):
    r = run([moe, "train", "--out", out, "--config", config, "--corpus", corpus, "--steps", "12",
             "--batch-size", "2", "--seq-len", "16", "--eval-every", "3", "--monitor-every", "2",
             "--log-every", "1", "--eval-batches", "2", "--quiet", "--no-sample", *extra])
    if r.returncode != 0:
        fail(f"training {out} exited {r.returncode}: {r.stderr[-2000:]}")


try:
    # The first 60 documents of the shipped corpus: enough for a 400-piece tokenizer.
    corpus = os.path.join(work, "corpus.jsonl.gz")
    with gzip.open(os.path.join(src, "data", "corpus.jsonl.gz"), "rt") as f:
        lines = [next(f) for _ in range(60)]
    with gzip.open(corpus, "wt") as f:
        f.writelines(lines)
    tiny = os.path.join(src, "tests", "cases", "tiny_model.json")
    with open(tiny) as f:
        dense_config = json.load(f)
    del dense_config["moe"]
    dense_json = os.path.join(work, "dense.json")
    with open(dense_json, "w") as f:
        json.dump(dense_config, f)
    moe_run, dense_run, other_vocab = (os.path.join(work, n) for n in ("moe", "dense", "vocab"))
    train(moe_run, tiny)
    train(dense_run, dense_json)
    train(other_vocab, tiny, "--vocab-size", "380")
    # A hand-made evaluation with every section filled, marked as the evaluation of moe_run's
    # checkpoint (its step and model digest, as `moe eval --json` records them).
    with open(os.path.join(src, "tests", "fixtures", "report_eval_tiny.json")) as f:
        fixture = json.load(f)

    def evaluation_of(run_dir, name, **changes):
        with open(os.path.join(run_dir, "model.safetensors"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(run_dir, "trainer_state.json")) as f:
            step = json.load(f)["step"]
        data = dict(fixture, checkpoint={"step": step, "model_sha256": digest}, **changes)
        path = os.path.join(work, name)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    eval_json = evaluation_of(moe_run, "eval.json")
    eval_of_dense = evaluation_of(dense_run, "eval_dense.json")
    empty_eval = os.path.join(work, "empty.json")
    with open(empty_eval, "w") as f:
        f.write("{}")
    no_loss = evaluation_of(moe_run, "no_loss.json")
    with open(no_loss) as f:
        data = json.load(f)
    del data["loss"]
    with open(no_loss, "w") as f:
        json.dump(data, f)

    # Refusals: one line, exit 2, no file.
    no_metrics = os.path.join(work, "no_metrics")
    os.makedirs(no_metrics)
    shutil.copy(os.path.join(moe_run, "config.json"), no_metrics)
    not_object = os.path.join(work, "list.json")
    with open(not_object, "w") as f:
        f.write("[1, 2]")
    refused = os.path.join(work, "refused.html")
    for words, args in [
        ("is not a folder", ["--model", os.path.join(work, "absent"), "--eval", eval_json]),
        ("no metrics.jsonl", ["--model", no_metrics, "--eval", eval_json]),
        ("vocab_size", ["--model", moe_run, "--compare", other_vocab, "--eval", eval_json]),
        ("not a JSON object", ["--model", moe_run, "--eval", not_object]),
        # An evaluation of another run, an empty one and one cut short are refused, never shown
        # as this run's.
        ("another checkpoint", ["--model", moe_run, "--eval", eval_of_dense]),
        ("lacks 'model'", ["--model", moe_run, "--eval", empty_eval]),
        ("lacks 'loss'", ["--model", moe_run, "--eval", no_loss]),
    ]:
        r = run([moe, "report", *args, "--out", refused])
        err = r.stderr.strip().splitlines()
        if r.returncode != 2 or len(err) != 1 or words not in err[0]:
            fail(f"report {args}: expected exit 2 and one line naming '{words}', got "
                 f"{r.returncode}: {r.stderr}")
        if os.path.exists(refused):
            fail(f"report {args} was refused but wrote {refused}")
        print("refused as expected:", err[0])

    page = os.path.join(work, "report.html")
    r = run([moe, "report", "--model", moe_run, "--compare", dense_run, "--eval", eval_json,
             "--out", page])
    if r.returncode != 0 or page not in r.stdout:
        fail(f"report exited {r.returncode}: {r.stdout} {r.stderr}")

    # `moe eval A B` and the report quote the same "tokens to reach" figure for each pair.
    r = run([moe, "eval", "-m", moe_run, "-m", dense_run, "--json"])
    if r.returncode != 0:
        fail(f"eval of two runs exited {r.returncode}: {r.stderr}")
    compared = json.loads(r.stdout)["runs"]
    with open(page) as f:
        page_html = f.read()

    def si(v):  # the report's number format (svg::format_number, 3 digits)
        for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return "%.3g%s" % (v / scale, suffix)
        return "%.3g" % v

    for a in compared:
        for b_model, tokens in a["tokens_to_reach"].items():
            a_name, b_name = os.path.basename(a["model"]), os.path.basename(b_model)
            shown = "not reached" if tokens is None else si(tokens)
            cells = f"<td>{a_name}</td><td>{b_name} ("
            row = page_html[page_html.find(cells):]
            if cells not in page_html or not row.split("</td><td>")[2].startswith(shown):
                fail(f"the report's tokens for {a_name} to reach {b_name} differ from eval's "
                     f"{shown}: {row[:200]}")
    print("eval and the report agree on tokens to reach:",
          [(a["model"], a["tokens_to_reach"]) for a in compared])

    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--user-data-dir=" + os.path.join(work, "profile"), "--enable-logging=stderr",
               "--v=0"]
    url = "file://" + page
    dom = run([*browser, "--dump-dom", url], timeout=120)
    if dom.returncode != 0:
        fail(f"chromium --dump-dom exited {dom.returncode}: {dom.stderr[-2000:]}")
    console = [l for l in dom.stderr.splitlines() if ":CONSOLE" in l]
    if console:
        fail("console messages: " + " | ".join(console))

    class Page(html.parser.HTMLParser):
        """The sections, and per <svg> its data marks and title text."""

        def __init__(self):
            super().__init__()
            self.sections, self.svgs, self.fetches, self.scripts = [], [], [], 0
            self.depth = 0  # inside an <svg>
            self.in_title = False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section":
                self.sections.append(a.get("id"))
            if tag == "script":
                self.scripts += 1
            for key in ("src", "href"):
                if key in a and not a[key].startswith("#"):
                    self.fetches.append(a[key])
            if tag == "svg":
                self.svgs.append({"marks": 0, "title": ""})
                self.depth = 1
            elif self.depth:
                self.depth += 1
                if "mark" in a.get("class", "").split():
                    self.svgs[-1]["marks"] += 1
                self.in_title = "title" in a.get("class", "").split()

        def handle_endtag(self, tag):
            if self.depth:
                self.depth -= 1
            self.in_title = False

        def handle_data(self, data):
            if self.depth and self.in_title:
                self.svgs[-1]["title"] += data

    p = Page()
    p.feed(dom.stdout)
    expected = ["loss", "training-load", "eval-load", "specialization", "passages",
                "consistency", "compute"]
    if p.sections != expected:
        fail(f"sections {p.sections}, expected {expected}")
    # loss 1; training load 3 (one MoE layer); evaluation load 2; specialization 1;
    # consistency 3; compute 3.
    if len(p.svgs) != 13:
        fail(f"{len(p.svgs)} charts, expected 13")
    for s in p.svgs:
        if not s["title"] or s["marks"] == 0:
            fail(f"chart '{s['title']}' has {s['marks']} data marks")
    if p.scripts or p.fetches:
        fail(f"the page has {p.scripts} scripts and fetches {p.fetches}")
    for token in ("> &lt;</span>", "> &amp;&amp;</span>"):  # the passage's "▁<", "▁&&"
        if token not in dom.stdout:
            fail(f"'{token}' missing from the page")

    shot = os.path.join(out_dir, "report_screenshot.png")
    if os.path.exists(shot):
        os.remove(shot)
    r = run([*browser, "--screenshot=" + shot, "--window-size=1280,6400", url], timeout=120)
    png = b""
    if os.path.exists(shot):
        with open(shot, "rb") as f:
            png = f.read()
    # A blank page compresses to a few kilobytes; charts and text make it far larger.
    if r.returncode != 0 or not png.startswith(b"\x89PNG") or len(png) < 50_000:
        fail(f"screenshot: exit {r.returncode}, {len(png)} bytes")
    print(f"screenshot: {shot} ({len(png)} bytes); {len(p.svgs)} charts, "
          f"{sum(s['marks'] for s in p.svgs)} data marks")
    print("PASS")
finally:
    shutil.rmtree(work, ignore_errors=True)
