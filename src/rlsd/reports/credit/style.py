"""The credit page's stylesheet, inlined by `page.render_html` (a module rather than a data
file, so it ships with the code and is found without `importlib.resources`).

The view switch is CSS only: two hidden radio inputs before the header; when the second is
checked every token takes its `--raw` custom property as background (the unclipped view).
"""

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1a1a1a;
background:#fafafa}
header,.legends,main{max-width:1180px;margin:0 auto;padding:0 16px}
h1{font-size:1.35em;margin:16px 0 6px}
h2{font-size:1.05em;margin:0 0 8px}
.summary{border-collapse:collapse;font-size:.9em;margin:6px 0 10px}
.summary td{padding:2px 14px 2px 0}.summary td:first-child{color:#555}
.views{margin:6px 0}.views label{margin-right:10px;cursor:pointer;padding:2px 8px;
border:1px solid #bbb;border-radius:12px;color:#555}
#view-credit:checked ~ header label[for=view-credit],
#view-raw:checked ~ header label[for=view-raw]{background:#333;color:#fff;border-color:#333}
.legend{display:flex;align-items:center;gap:8px;font-size:.85em;margin:4px 0 12px}
.sw{display:inline-block;width:34px;height:18px;border:1px solid #bbb}
.legend-raw{display:none}
#view-raw:checked ~ .legends .legend-credit{display:none}
#view-raw:checked ~ .legends .legend-raw{display:flex}
#view-raw:checked ~ main .tok{background-color:var(--raw) !important;color:var(--raw-fg) !important}
.problem{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:14px 0}
.context{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:10px}
.box{border:1px solid #ccc;border-radius:4px;padding:6px 8px;font-size:.9em;flex:1 1 300px}
.box .label{font-size:.75em;text-transform:uppercase;letter-spacing:.05em;color:#555}
.teacher-only{border:2px dashed #8a5a00;background:#fff8e6}
.teacher-only .label{color:#8a5a00;font-weight:bold}
.mono,.tokens{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.col h3{font-size:.9em;margin:0 0 6px}
.sample{border-left:4px solid #999;padding:4px 8px;margin:0 0 8px;background:#fcfcfc}
.sample.ok{border-left-color:#1a9850}.sample.bad{border-left-color:#d73027}
.meta{font-size:.8em;color:#444;margin-bottom:3px}
.tokens{white-space:pre-wrap;word-break:break-all;line-height:1.7;font-size:.95em}
.tok{padding:1px 0;border-radius:2px}
.special{font-size:.7em;vertical-align:middle;opacity:.85}
.empty{color:#888;font-size:.85em;font-style:italic}
details{font-size:.85em;margin-top:4px}
.with-images{display:flex;gap:14px;align-items:flex-start}
.with-images>div{flex:1 1 0;min-width:0}
.images{flex:none;margin:0;display:flex;flex-direction:column;gap:6px;max-width:200px}
.problem-image{border:1px solid #bbb;background:#fff;max-width:192px;height:auto}
.problem-image.pixelated{image-rendering:pixelated}
.images figcaption{font-size:.75em;color:#555}
.group{font-size:.95em;color:#444;margin:22px 0 0;padding-bottom:4px;border-bottom:1px solid #ccc}
"""
