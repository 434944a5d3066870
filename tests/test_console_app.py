"""The console's frame: the app answers, its assets, the token that guards every action."""

from __future__ import annotations

from pathlib import Path

import pytest
from console_support import make_console, running
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from newsletter.web.console.context import Console


@pytest.fixture
def console(publication: Path) -> Console:
    return make_console(publication)


def test_home_goes_to_the_calendar_and_assets_are_served(console: Console) -> None:
    with running(console) as web:
        home = web.get("/", follow_redirects=False)
        assert home.status_code == 303 and home.headers["location"] == "/calendar"
        css = web.get("/assets/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert web.get("/assets/..%2Fcontext.py").status_code == 404
        assert web.get("/assets/nothing.js").status_code == 404


def test_an_action_without_the_session_token_is_refused(console: Console) -> None:
    async def act(request: Request) -> Response:
        form = await console.form(request)
        return PlainTextResponse(f"done {form.get('what')}")

    with running(console, [Route("/act", act, methods=["POST"])]) as web:
        assert web.post("/act", {"what": "x", "token": ""}).status_code == 403
        assert web.post("/act", {"what": "x", "token": "wrong"}).status_code == 403
        done = web.post("/act", {"what": "x"})
        assert done.status_code == 200 and done.text == "done x"


def test_pages_render_in_the_frame(console: Console) -> None:
    async def page(request: Request) -> Response:
        return console.render(request, "base.html")

    with running(console, [Route("/calendar", page)]) as web:
        html = web.get("/calendar?notice=Scheduled").text
    assert console.config.publication.name in html
    assert console.config.publication.timezone in html
    assert 'aria-current="page"' in html and 'role="status">Scheduled<' in html
    assert f'content="{console.token}"' in html
