"""The marketer's console: the schedule, campaigns, issues, sponsors and subscribers in a
browser (`newsletter console`).

Server-rendered pages (Starlette, Jinja2), a little vanilla JS and server-sent events,
no front-end build step: the preview's stack. Every action is a POST carrying the
session's token and calls the same library function as its CLI command.

    context.py      Console: the config, the ledger, the token, page rendering
    app.py          the Starlette app: every page module's routes, assets, the server
    calendar.py     /calendar         campaigns by week and month; schedule, move, cancel
    campaigns.py    /campaigns/ID     live progress (SSE), recent errors, resume, close;
                    /send             send now, behind a confirmation stating the count
    auth.py         /login, /logout   the [console] password (a non-loopback --host)
    issues.py       /issues           every issue file, its check result, send test
    sponsors.py     /sponsors         bookings, the rotation plan, each sponsor's report
    subscribers.py  /subscribers      counts by status, growth, import with a dry run
    charts.py       the pages' SVG charts, drawn on the server (their numbers in a table too)
    pages/          the templates (base.html is every page's frame), console.css, console.js

A page module exposes `routes(console) -> list[BaseRoute]`; app.py mounts them all.
"""
