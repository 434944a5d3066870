"""The sponsor block: chosen per issue, labelled, tagged, rendered from its own template."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest

from newsletter import config
from newsletter.errors import ConfigError, ContentError
from newsletter.issue import publish, sponsor
from newsletter.issue.content import read_issue

ACME = """
[sponsors.acme]
name = "Acme Rides"
label = "Partner"
message = "Rides across town."
url = "https://acme.example/rides?ref=news"
phone = "+1 (555) 010-0199"
call_to_action = "Ride with Acme"
image = "https://acme.example/logo.png"
image_alt = "Acme logo"
image_width = 120
"""


@pytest.fixture
def with_acme(publication):
    with publication.open("a", encoding="utf-8") as fh:
        fh.write(ACME)
    return publication


def set_sponsor(edit_file, issue_path, value: str) -> None:
    edit_file(issue_path, "\nsource: ", f"\nsponsor: {value}\nsource: ")


def build(cfg_path, issue_path):
    cfg = config.load(cfg_path)
    built = publish.build_issue(cfg, read_issue(issue_path))
    filled = publish.sample(cfg, built)
    return cfg, built, filled


def sponsor_block(html: str):
    blocks = lxml.html.document_fromstring(html).xpath('//*[@data-block="sponsor"]')
    return blocks


def test_the_default_sponsor_is_appended(publication, sample_issue):
    cfg, built, filled = build(publication, sample_issue)
    assert built.sponsor is not None and built.sponsor.id == "helloshuttle"
    (block,) = sponsor_block(filled.html)
    assert "Hello Shuttle" in block.text_content()
    assert "---- SPONSORED (ADVERTISEMENT) ----\nHello Shuttle\n" in filled.text


def test_sponsor_none_leaves_the_block_out(publication, sample_issue, edit_file):
    set_sponsor(edit_file, sample_issue, "none")
    cfg, built, filled = build(publication, sample_issue)
    assert built.sponsor is None
    assert sponsor_block(filled.html) == []
    assert "Book a ride" not in filled.html
    assert "ADVERTISEMENT" not in filled.text and "Book a ride" not in filled.text
    assert publish.check_built(cfg, built, filled) == []


def test_sponsor_id_picks_another_configured_sponsor(with_acme, sample_issue, edit_file):
    set_sponsor(edit_file, sample_issue, "acme")
    cfg, built, filled = build(with_acme, sample_issue)
    assert built.sponsor.id == "acme"
    (block,) = sponsor_block(filled.html)
    text = " ".join(block.text_content().split())
    assert "Partner · Advertisement" in text and "Acme Rides" in text
    assert "Hello Shuttle" not in text
    # The tracked links readers get, resolved to where they lead.
    links = [filled.destinations.get(a.get("href"), a.get("href")) for a in block.iter("a")]
    assert "tel:+15550100199" in links
    web = [urlsplit(h) for h in links if h.startswith("https://")]
    assert len(web) == 2  # the image and the button
    for url in web:
        assert url.netloc == "acme.example" and url.path == "/rides"
        query = parse_qs(url.query)
        assert query["ref"] == ["news"]
        assert query["utm_campaign"] == [built.issue.slug]
    (img,) = block.iter("img")
    assert (img.get("alt"), img.get("width")) == ("Acme logo", "120")
    assert "---- PARTNER (ADVERTISEMENT) ----\nAcme Rides\n" in filled.text
    assert "Hello Shuttle" not in filled.text.split("---- PARTNER")[1].split("\n--\n")[0]
    assert publish.check_built(cfg, built, filled) == []


def test_an_unknown_sponsor_id_names_the_issue_file(publication, sample_issue, edit_file):
    set_sponsor(edit_file, sample_issue, "acme")
    cfg = config.load(publication)
    with pytest.raises(ContentError) as info:
        sponsor.choose(cfg, read_issue(sample_issue))
    message = str(info.value)
    assert message.startswith(f"{sample_issue}: front matter sponsor: unknown sponsor 'acme'")
    assert "helloshuttle" in message


def test_a_default_of_none_means_no_sponsor(publication, sample_issue, edit_file):
    edit_file(publication, 'default = "helloshuttle"', 'default = "none"')
    cfg = config.load(publication)
    assert sponsor.choose(cfg, read_issue(sample_issue)) is None


def test_block_tags_the_url_for_the_issue(publication, sample_issue):
    cfg = config.load(publication)
    issue = read_issue(sample_issue)
    blk = sponsor.block(cfg, issue, cfg.sponsor("helloshuttle"))
    assert blk.url == (
        "https://www.helloshuttle.com/?utm_source=hello-shuttle-briefing"
        f"&utm_medium=email&utm_campaign={issue.slug}"
    )
    assert blk.tel == "tel:+19498005678"  # the sample's phone_country_code is "1"


def test_utm_can_be_disabled(publication, sample_issue, edit_file):
    edit_file(publication, "enabled = true", "enabled = false")
    cfg = config.load(publication)
    blk = sponsor.block(cfg, read_issue(sample_issue), cfg.sponsor("helloshuttle"))
    assert blk.url == "https://www.helloshuttle.com"


def test_utm_source_falls_back_to_the_publication_name(publication, sample_issue):
    cfg = config.load(publication)
    cfg = dataclasses.replace(cfg, utm=dataclasses.replace(cfg.utm, source=""))
    blk = sponsor.block(cfg, read_issue(sample_issue), cfg.sponsor("helloshuttle"))
    assert parse_qs(urlsplit(blk.url).query)["utm_source"] == ["Hello Shuttle News Briefing"]


def test_tag_utm_keeps_what_the_url_already_has():
    url = sponsor.tag_utm(
        "https://x.example/p?a=1&utm_source=own#frag", source="s", medium="email", campaign="c"
    )
    parts = urlsplit(url)
    assert parse_qs(parts.query) == {
        "a": ["1"],
        "utm_source": ["own"],
        "utm_medium": ["email"],
        "utm_campaign": ["c"],
    }
    assert parts.fragment == "frag" and parts.path == "/p"


@pytest.mark.parametrize(
    ("phone", "country_code", "uri"),
    [
        ("(949) 800-5678", "1", "tel:+19498005678"),
        ("(949) 800-5678", "+1", "tel:+19498005678"),
        ("+1 (949) 800-5678", "", "tel:+19498005678"),
        ("+1 (949) 800-5678", "44", "tel:+19498005678"),  # written with +: as written
        ("020 7946 0000", "44", "tel:+442079460000"),  # the trunk 0 is for calls at home
        # No country code known: only the digits, which `check` warns about.
        ("(949) 800-5678", "", "tel:9498005678"),
        ("", "1", ""),
    ],
)
def test_tel_uri(phone, country_code, uri):
    assert sponsor.tel_uri(phone, country_code) == uri


@pytest.mark.parametrize("code", ["US", "0", "1234", "+", "1-1"])
def test_a_phone_country_code_that_is_not_one_is_a_config_error(publication, edit_file, code):
    edit_file(publication, 'phone_country_code = "1"', f"phone_country_code = {code!r}")
    with pytest.raises(ConfigError) as info:
        config.load(publication)
    assert str(info.value) == (
        f"{publication}: [sponsors.helloshuttle] phone_country_code: expected a calling code"
        f' such as "1" or "+44", got {code!r}'
    )
    assert info.value.exit_code == 2
