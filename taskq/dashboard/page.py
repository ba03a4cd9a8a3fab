"""The dashboard's one HTML page: a shell that ``static/app.js`` fills from the API.

No template engine and no inline script (the page's CSP allows scripts from the dashboard
only): the two settings the script needs travel as ``data-`` attributes of ``<body>``.
"""

from __future__ import annotations

from html import escape

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskq dashboard</title>
<link rel="stylesheet" href="{prefix}/static/app.css">
<script defer src="{prefix}/static/app.js"></script>
</head>
<body data-prefix="{prefix}" data-actions="{actions}">
<header>
  <a class="brand" href="#/">taskq</a>
  <nav>
    <a href="#/">Overview</a>
    <form id="lookup-form"><input id="lookup-id" name="id" placeholder="task or batch id" size="28">
      <button type="submit" data-kind="task">Find task</button>
      <button type="submit" data-kind="batch">Batch</button></form>
  </nav>
  <span id="status" class="status">connecting…</span>
</header>
<main id="view"><p class="muted">Loading…</p></main>
<footer>{mode} · updates every second without a reload · <a href="{prefix}/metrics">/metrics</a></footer>
</body>
</html>
"""


def render_page(prefix: str, allow_actions: bool) -> str:
    mode = "actions enabled" if allow_actions else "read-only (start with --allow-actions to retry or purge)"
    return _PAGE.format(prefix=escape(prefix), actions="1" if allow_actions else "0", mode=mode)
