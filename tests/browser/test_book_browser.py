"""The built book (`_build/html`) in a real browser: headless Chromium driven by Playwright.

Every page of `_toc.yml`, at a desktop (1400 px) and a phone (390 px) width, served by
`python -m http.server` on 127.0.0.1 with every request to another host blocked (the book must
read well offline). On each page:

- no raw TeX in the visible text outside code (`$`, `\\frac`, `\\mathrm`, `\\(` ...): what MyST
  leaves behind when a `$$` block is glued to text, or what shows when MathJax does not run;
- MathJax is served by the book itself (`_static/mathjax/`), and on a page with math every
  math element was typeset, without a TeX error (`mjx-merror`);
- every `<img>` loaded (`naturalWidth > 0`); the only allowed external image is the Colab badge;
- every notebook figure is shown at >= MIN_FIGURE_SCALE CSS px per image pixel (legible labels;
  on a phone a wide figure scrolls sideways inside its output box);
- no request to the book's own server failed (CSS, JS, fonts, images);
- no element of the article is wider than the viewport unless it sits inside a box that scrolls
  horizontally, and the page itself does not scroll sideways (the same defect in the theme's own
  layout, e.g. a long next-chapter title in the footer at 390 px, is reported as a warning);
- every link into the book resolves: the file exists and its `#anchor` is an id of that page;
- a notebook page has a visible Colab launch link to its own notebook.

And on the explorer page (chapter 5), still offline: changing the dataset, the model and the class
in the pre-rendered explorer changes the picture shown (test_static_explorer_works_offline).

Screenshots (full page, both widths) go to $BATCHCAM_SHOTS when it is set (`make browser-test`
sets /tmp/shots).

Needs the pip package `playwright` (in requirements.txt; never run `playwright install`: the
test drives the system Chromium, e.g. `apt-get install -y chromium`, or $CHROMIUM) and a fresh
`make book`. Without them the tests are skipped with instructions, unless
BATCHCAM_BROWSER_TEST=required (`make browser-test`, `.ci/run`), which turns the skips into
failures. About half a minute for the whole book.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# $BATCHCAM_BOOK_HTML tests a book built elsewhere (then the freshness check is skipped).
HTML = Path(os.environ.get("BATCHCAM_BOOK_HTML") or ROOT / "_build" / "html")
WIDTHS = {"desktop": (1400, 900), "phone": (390, 844)}
REQUIRED = os.environ.get("BATCHCAM_BROWSER_TEST", "").lower() in ("1", "required", "yes", "true")
SHOTS = os.environ.get("BATCHCAM_SHOTS", "")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The only requests to other hosts the book may make (blocked here: the test runs offline).
# - the Colab badge image.
# No scripts: myst-nb's ipywidgets HTML manager (require.js and @jupyter-widgets/html-manager
# from CDNs; not in the ipywidgets, widgetsnbextension or jupyterlab_widgets wheels) is switched
# off (`nb_ipywidgets_js: {}` in _config.yml). The live explorer widget of chapter 5 hides its
# output in the book, which shows a pre-rendered explorer instead: <select> menus and inline
# JavaScript switching PNGs stored in the page.
# A notebook figure (150 dpi, 9-pt labels = 18.75 px of the image) is shown at >= this many CSS
# px per image pixel, so its labels stay >= 9 px: on a phone it scrolls sideways (_static/book.css).
MIN_FIGURE_SCALE = 0.5
ALLOWED_EXTERNAL_IMAGES = (re.compile(r"^https://colab\.research\.google\.com/assets/colab-badge\.svg$"),)
ALLOWED_EXTERNAL_SCRIPTS: tuple[re.Pattern, ...] = ()
SOURCES = ["_config.yml", "_toc.yml", "book/*.ipynb", "book/*.md", "book/*.bib"]
HOW_TO = ("to run it: `apt-get install -y chromium` (or set CHROMIUM=/path/to/chrome), "
          "`pip install -r requirements.txt` (playwright; do not run `playwright install`), then "
          "`make browser-test` (builds the book first)")


def _toc_pages() -> list[str]:
    """Source paths (no suffix) of every page in _toc.yml, in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                pages.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", p) for p in pages]


PAGES = _toc_pages()


def _skip(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (BATCHCAM_BROWSER_TEST=required); {HOW_TO}", pytrace=False)
    pytest.skip(f"{reason}; {HOW_TO}")


def _chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _stale_reason() -> str | None:
    inv = HTML / "objects.inv"
    if not inv.is_file():
        return f"no built book in {HTML} (run `make book`)"
    if os.environ.get("BATCHCAM_BOOK_HTML"):
        return None
    built = inv.stat().st_mtime
    newer = [p for pattern in SOURCES for p in ROOT.glob(pattern) if p.stat().st_mtime > built + 1]
    if newer:
        return (f"{HTML} is older than {newer[0].relative_to(ROOT)} "
                f"(rebuild with `make book`)")
    return None


@pytest.fixture(scope="module")
def site():
    """Base URL of `python -m http.server` serving _build/html on 127.0.0.1."""
    reason = _stale_reason()
    if reason:
        _skip(reason)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(HTML)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "objects.inv", timeout=1).close()
                break
            time.sleep(0.1)
        else:
            pytest.fail("python -m http.server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the pip package playwright is not installed")
    exe = _chromium()
    if exe is None:
        _skip("no Chromium found (/usr/bin/chromium, chromium, chromium-browser, google-chrome, $CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# --- checks run inside the page -----------------------------------------------------------------

JS_WAIT = """async () => {
  const timeout = (ms) => new Promise(r => setTimeout(r, ms));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    await Promise.race([MathJax.startup.promise, timeout(20000)]);
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.race([Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }))), timeout(15000)]);
}"""

JS_COLLECT = r"""() => {
  const vw = document.documentElement.clientWidth;
  const visible = (el) => el.checkVisibility
    ? el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})
    : !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const describe = (el) => {
    let d = el.tagName.toLowerCase();
    if (el.id) d += '#' + el.id;
    if (typeof el.className === 'string' && el.className.trim())
      d += '.' + el.className.trim().split(/\s+/).slice(0, 3).join('.');
    const sec = el.closest('section[id]');
    const part = el.closest('footer, header, nav, aside, .bd-sidebar-primary, .bd-sidebar-secondary');
    if (sec) return `${d} in section #${sec.id}`;
    return part ? `${d} in ${part.tagName.toLowerCase()}.${part.className.split(' ')[0]}` : d;
  };
  // Raw TeX in visible prose (not code, not MathJax output).
  const SKIP = 'script, style, pre, code, kbd, samp, textarea, noscript, template, mjx-container, .highlight';
  const tex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texRe = /\$|\\[A-Za-z]{2,}|\\[()\[\]]/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(SKIP) || !visible(p)) continue;
    const m = n.textContent.match(texRe);
    if (m) {
      const i = m.index, t = n.textContent;
      tex.push(`${describe(p)}: "…${t.slice(Math.max(0, i - 40), i + 40).replace(/\s+/g, ' ')}…"`);
    }
  }
  // Math.
  const mathEls = Array.from(document.querySelectorAll('.math'));
  const untypeset = mathEls.filter(e => !e.querySelector('mjx-container'))
                           .map(e => `${describe(e)}: ${e.textContent.trim().slice(0, 60)}`);
  const merrors = Array.from(document.querySelectorAll('mjx-merror'))
                       .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
  const mjScripts = Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s));
  // Images.
  const images = Array.from(document.images).map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth,
                                                        complete: i.complete, alt: i.alt,
                                                        shown: i.getBoundingClientRect().width,
                                                        figure: !!i.closest('.cell_output')}));
  // Horizontal overflow outside a scrolling/clipping box.
  const boxes = new Set(['auto', 'scroll']);   // a box the reader can scroll sideways
  const overflow = [];
  const flagged = new Set();
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('mjx-assistive-mml')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right <= vw + 1 && r.left >= -1) continue;
    if (!visible(el)) continue;
    let a = el.parentElement, contained = false;
    while (a && a !== document.documentElement) {
      if (boxes.has(getComputedStyle(a).overflowX)) {
        const ar = a.getBoundingClientRect();
        if (ar.right <= vw + 1 && ar.left >= -1) { contained = true; break; }
      }
      a = a.parentElement;
    }
    if (contained) continue;
    flagged.add(el);
    if (el.parentElement && flagged.has(el.parentElement)) continue;   // report the outermost only
    overflow.push({content: !!el.closest('article, .bd-article'),
                   what: `${describe(el)}: x ${Math.round(r.left)}…${Math.round(r.right)} px `
                         + `(viewport ${vw})`});
  }
  const pageScroll = document.documentElement.scrollWidth - vw;
  // Links.
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
                   .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.name));
  const colab = Array.from(document.querySelectorAll('a[href^="https://colab.research.google.com/"]'))
                     .map(a => ({href: a.href, visible: visible(a) || Array.from(a.children).some(visible)}));
  return {tex, mathCount: mathEls.length, untypeset, merrors, mjScripts, images, overflow, pageScroll,
          links, ids, colab};
}"""


_IDS_CACHE: dict[Path, set[str]] = {}


def _ids_of(path: Path) -> set[str]:
    if path not in _IDS_CACHE:
        text = path.read_text(encoding="utf-8", errors="replace")
        _IDS_CACHE[path] = set(re.findall(r'\b(?:id|name)="([^"]+)"', text))
    return _IDS_CACHE[path]


def _link_problems(links, page_url: str, page_ids: set[str], base: str) -> tuple[list[str], int]:
    problems, checked = [], 0
    for href in dict.fromkeys(links):
        if not href.startswith(base):
            continue
        checked += 1
        parts = urllib.parse.urlsplit(href)
        rel = urllib.parse.unquote(parts.path[len(urllib.parse.urlsplit(base).path):])
        target = HTML / rel
        if rel == "" or rel.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{href}: no file {target.relative_to(HTML)}")
            continue
        frag = urllib.parse.unquote(parts.fragment)
        if not frag or target.suffix != ".html":
            continue
        same_page = href.split("#")[0] == page_url.split("#")[0]
        ids = page_ids if same_page else _ids_of(target)
        if frag not in ids:
            problems.append(f"{href}: no id {frag!r} in {target.relative_to(HTML)}")
    return problems, checked


@pytest.mark.parametrize("width", list(WIDTHS), ids=list(WIDTHS))
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well(site, browser, page, width):
    vw, vh = WIDTHS[width]
    url = site + page + ".html"
    blocked, failed = [], []
    context = browser.new_context(viewport={"width": vw, "height": vh}, device_scale_factor=1)

    def route(r):
        if r.request.url.startswith(site) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append((r.request.resource_type, r.request.url))
            r.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}")
           if resp.url.startswith(site) and resp.status >= 400 else None)
    try:
        tab.goto(url, wait_until="load", timeout=30000)
        tab.evaluate(JS_WAIT)
        info = tab.evaluate(JS_COLLECT)
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(Path(SHOTS) / f"{page.replace('/', '_')}-{vw}.png"), full_page=True)
    finally:
        context.close()

    def capped(items, n=8):
        return list(items[:n]) + ([f"… and {len(items) - n} more"] if len(items) > n else [])

    problems = []
    problems += [f"raw TeX visible: {t}" for t in capped(info["tex"])]
    if info["mathCount"]:
        local = [s for s in info["mjScripts"] if s.startswith(site + "_static/")]
        if not local:
            problems.append(f"MathJax is not served by the book (scripts: {info['mjScripts']}); "
                            f"expected _static/mathjax/ (sphinx-mathjax-offline)")
        problems += [f"math not typeset by MathJax: {m}" for m in capped(info["untypeset"])]
        problems += [f"MathJax TeX error: {m}" for m in info["merrors"]]
    for img in info["images"]:
        external = not img["src"].startswith(site) and not img["src"].startswith("data:")
        if external:
            if not any(p.match(img["src"]) for p in ALLOWED_EXTERNAL_IMAGES):
                problems.append(f"external image (does not load offline): {img['src']}")
        elif not img["complete"] or img["w"] == 0:
            problems.append(f"image did not load: {img['src']} (alt {img['alt']!r})")
        elif img["figure"] and img["shown"] < MIN_FIGURE_SCALE * img["w"]:
            problems.append(f"figure shown at {img['shown'] / img['w']:.2f} CSS px per pixel (9-pt labels "
                            f"at {18.75 * img['shown'] / img['w']:.1f} px; needs >= {MIN_FIGURE_SCALE}): "
                            f"{img['src'].rsplit('/', 1)[-1][:16]}")
    allowed = {"image": ALLOWED_EXTERNAL_IMAGES, "script": ALLOWED_EXTERNAL_SCRIPTS}
    problems += [f"request to another host (blocked: the book must work offline): {kind} {u}"
                 for kind, u in blocked if not any(p.match(u) for p in allowed.get(kind, ()))]
    problems += [f"failed request: {f}" for f in failed]
    problems += [f"wider than the viewport, outside a scrolling box: {o['what']}"
                 for o in info["overflow"] if o["content"]]
    for o in info["overflow"]:
        if not o["content"]:   # the theme's own layout (header, sidebars, prev/next footer)
            warnings.warn(f"{page}.html at {vw} px: theme element cut off at the viewport edge: {o['what']}",
                          stacklevel=2)
    if info["pageScroll"] > 1:
        problems.append(f"the page scrolls sideways by {info['pageScroll']} px")
    link_problems, _ = _link_problems(info["links"], url, set(info["ids"]), site)
    problems += [f"broken internal link: {p}" for p in link_problems]
    if (ROOT / (page + ".ipynb")).is_file():
        want = "https://colab.research.google.com/github/"
        own = [c for c in info["colab"]
               if c["href"].startswith(want) and c["href"].endswith(f"/{page}.ipynb")]
        if not own:
            problems.append(f"no Colab launch link to {page}.ipynb "
                            f"(found: {[c['href'] for c in info['colab']]})")
        elif not any(c["visible"] for c in own):
            problems.append("the Colab launch links to this notebook are all hidden")
    assert not problems, f"{page}.html at {vw} px:\n" + "\n".join(f"  - {p}" for p in problems)


# --- the pre-rendered explorer ------------------------------------------------------------------

EXPLORER_PAGE = "book/05_coherence_and_explorer"
JS_EXPLORER_IMAGE = """() => {
  const img = document.querySelector('#explorer-static img');
  if (!img) return null;
  const r = img.getBoundingClientRect();
  return {src: img.src, alt: img.alt, complete: img.complete, w: img.naturalWidth, shown: r.width,
          classes: Array.from(document.querySelectorAll('#explorer-static select'))
                        .map(s => s.options.length),
          firstClass: document.querySelectorAll('#explorer-static select')[2].options[0].text};
}"""


def test_static_explorer_works_offline(site, browser):
    """With every other host blocked, each menu of the pre-rendered explorer switches the picture."""
    if EXPLORER_PAGE not in PAGES:
        pytest.fail(f"{EXPLORER_PAGE} is not in _toc.yml")
    blocked = []
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)

    def route(r):
        if r.request.url.startswith(site) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    tab = context.new_page()
    try:
        tab.goto(site + EXPLORER_PAGE + ".html", wait_until="load", timeout=30000)
        loaded = "() => { const i = document.querySelector('#explorer-static img');" \
                 " return !!i && i.complete && i.naturalWidth > 0; }"
        tab.wait_for_function(loaded, timeout=10000)
        img = tab.locator("#explorer-static img")
        img.scroll_into_view_if_needed()
        state = tab.evaluate(JS_EXPLORER_IMAGE)
        assert state["classes"][2] == 10 and state["shown"] > 0, state
        seen = {state["src"]: img.screenshot()}
        for menu, value in (("dataset", "fashion-mnist"), ("model", "simplecnn (untrained)"),
                            ("class", "7")):
            tab.locator("#explorer-static label", has_text=menu).locator("select").select_option(value)
            tab.wait_for_function(loaded, timeout=10000)
            new = tab.evaluate(JS_EXPLORER_IMAGE)
            if new["src"] in seen:   # (pytest.fail: no dump of the data URIs)
                pytest.fail(f"choosing {menu} = {value} did not change the picture", pytrace=False)
            shot = img.screenshot()
            if shot in seen.values():
                pytest.fail(f"choosing {menu} = {value}: the picture on screen is the same", pytrace=False)
            assert new["w"] > 0 and new["shown"] > 0, new
            seen[new["src"]] = shot
        assert "fashion-mnist" in new["alt"] and "untrained" in new["alt"] and "class 7" in new["alt"], new
        assert new["firstClass"].startswith("0: T-shirt"), new["firstClass"]
    finally:
        context.close()
    others = [u for u in blocked if not any(p.match(u) for p in ALLOWED_EXTERNAL_IMAGES)]
    assert not others, f"requests to other hosts (blocked: the explorer must work offline): {others}"
